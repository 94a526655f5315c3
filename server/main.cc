// idem-server: the Idem gRPC server on its embedded RocksDB store, or a
// stateless replica over a Redis Cluster (--store=redis-cluster://...).
//
// Start-up: flags and environment (config.h), then the store opens (RocksDB
// may replay its log; Redis: the slot map and scripts load), then the gRPC
// server starts listening, SERVING. Until then the port is closed, so probes
// fail as they would on NOT_SERVING. SIGTERM or SIGINT: NOT_SERVING,
// --drain-delay, parked waits are answered, in-flight calls get
// --shutdown-grace to finish, and the database is closed cleanly.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/admin_service.h"
#include "server/auth_policy.h"
#include "server/authorizer.h"
#include "server/blocking_executor.h"
#include "server/config.h"
#include "server/file_limit.h"
#include "server/idempotency_service.h"
#include "server/invalid_request_interceptor.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/read_file.h"
#include "server/rpc_observer.h"
#include "server/store_health_watcher.h"
#include "server/tls.h"
#include "server/wait_queue.h"
#include "storage/redis_cluster_store.h"
#include "storage/rocksdb_store.h"

namespace idem::server {
namespace {

// Written atomically, so a reader never sees a partial file. Line 1: the
// gRPC port; line 2, if metrics are on: metrics=PORT.
bool WritePortFile(const std::string& path, int port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (metrics_port > 0) out << "metrics=" << metrics_port << "\n";
    if (!out.good()) return false;
  }
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  return !error;
}

absl::StatusOr<std::unique_ptr<storage::Store>> OpenStore(
    const ServerConfig& config) {
  const std::vector<std::string> seeds = RedisSeeds(config);
  if (!seeds.empty()) {
    Log(LogLevel::kInfo, "store",
        {{"kind", "redis-cluster"},
         {"nodes", absl::StrJoin(seeds, ",")},
         {"wait_replicas", absl::StrCat(config.redis_wait_replicas)},
         {"ignored",
          "--data-dir, --sync-writes, --periodic-compaction, "
          "--block-cache-bytes, --min-free-disk-bytes, "
          "--max-pending-write-bytes (RocksDB settings)"}});
    if (config.redis_wait_replicas == 0) {
      Log(LogLevel::kWarning, "store",
          {{"durability",
            "--redis-wait-replicas=0: a change is answered once the Redis "
            "master has it; a failover before it reaches a replica loses it "
            "(docs/cluster.md)"}});
    }
    storage::RedisClusterStoreOptions options;
    options.cluster.seeds = seeds;
    options.cluster.user = config.redis_user;
    if (!config.redis_password_file.empty()) {
      absl::StatusOr<std::string> password =
          ReadFile(config.redis_password_file, "Redis password");
      if (!password.ok()) return password.status();
      // One line; the newline an editor or `echo` leaves is not part of it.
      options.cluster.password =
          std::string(absl::StripTrailingAsciiWhitespace(*password));
      if (options.cluster.password.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the Redis password file ", config.redis_password_file,
                         " is empty"));
      }
    }
    options.cluster.retry_deadline = config.redis_timeout;
    options.wait_replicas = static_cast<int>(config.redis_wait_replicas);
    options.wait_timeout = config.redis_wait_timeout;
    options.threads = static_cast<int>(config.redis_threads);
    options.max_pending = config.max_pending_writes;
    options.accept_loss_on_restart = config.redis_accept_loss_on_restart;
    options.migration_stuck_after = config.redis_migration_warn_after;
    options.on_slot_migration = [](const storage::SlotMigrationReport& report) {
      const std::string open_seconds =
          absl::StrCat(absl::ToInt64Seconds(report.open_for));
      const storage::SlotMigration& m = report.migration;
      if (report.closed) {
        Log(LogLevel::kInfo, "redis_slot_migration_closed",
            {{"slot", absl::StrCat(m.slot)},
             {"from", m.from},
             {"to", m.to},
             {"open_seconds", open_seconds}});
        return;
      }
      Log(LogLevel::kWarning, "redis_slot_migration_stuck",
          {{"slot", absl::StrCat(m.slot)},
           {"from", m.from},
           {"to", m.to},
           {"open_seconds", open_seconds},
           {"effect",
            "keys of the slot keep working, with extra round trips; finish "
            "the migration with redis-cli --cluster fix (docs/cluster.md)"}});
    };
    absl::StatusOr<std::unique_ptr<storage::RedisClusterStore>> opened =
        storage::RedisClusterStore::Open(std::move(options));
    if (!opened.ok()) return opened.status();
    for (const std::string& note : (*opened)->durability_notes()) {
      Log(LogLevel::kWarning, "store", {{"durability", note}});
    }
    return std::unique_ptr<storage::Store>(*std::move(opened));
  }
  Log(LogLevel::kInfo, "store",
      {{"kind", "rocksdb"}, {"data_dir", config.data_dir}});
  storage::RocksDbStoreOptions options;
  options.path = config.data_dir;
  options.sync_writes = config.sync_writes;
  options.periodic_compaction = config.periodic_compaction;
  options.block_cache_bytes = config.block_cache_bytes;
  options.max_pending_writes = config.max_pending_writes;
  options.max_pending_write_bytes = config.max_pending_write_bytes;
  options.min_free_disk_bytes = config.min_free_disk_bytes;
  absl::StatusOr<std::unique_ptr<storage::RocksDbStore>> opened =
      storage::RocksDbStore::Open(options);
  if (!opened.ok()) return opened.status();
  return std::unique_ptr<storage::Store>(*std::move(opened));
}

int Run(int argc, char** argv) {
  // Signals are taken by sigwait below, never by an arbitrary thread; block
  // them before any thread starts so that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);  // Re-check the TLS files.
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<ServerConfig> config = ParseConfig(
      std::vector<std::string>(argv + 1, argv + argc), &std::getenv);
  if (config.status().code() == absl::StatusCode::kNotFound) {
    std::fputs(std::string(config.status().message()).c_str(), stdout);
    return 0;
  }
  if (!config.ok()) {
    std::fprintf(stderr, "idem-server: %s\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  // Abseil checks every Mutex acquisition for lock-order cycles, which costs
  // a few percent of a busy server's CPU; the tests run with the check on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  LogLevel level = LogLevel::kInfo;
  ParseLogLevel(config->log_level, &level);
  SetLogLevel(level);
  Log(LogLevel::kInfo, "starting", {{"config", Describe(*config)}});
  const FileLimit files = RaiseFileLimit();
  Log(files.now < 4096 ? LogLevel::kWarning : LogLevel::kInfo, "file_limit",
      {{"open_files", absl::StrCat(files.now)},
       {"raised_from", absl::StrCat(files.before)},
       {"note",
        "each gRPC connection takes a descriptor, and so does the store; "
        "raise the hard limit (LimitNOFILE=, ulimit -Hn) if it is low"}});

  // Security: checked before anything is opened, so that a bad file stops
  // the server at once with one clear line.
  const TlsFiles tls_files{config->tls_cert, config->tls_key,
                           config->tls_client_ca};
  std::unique_ptr<TlsReloader> tls;
  if (!tls_files.cert.empty()) {
    absl::StatusOr<std::unique_ptr<TlsReloader>> created =
        TlsReloader::Create(tls_files);
    if (!created.ok()) {
      Log(LogLevel::kError, "tls_invalid",
          {{"error", std::string(created.status().message())}});
      return 2;
    }
    tls = *std::move(created);
    Log(LogLevel::kInfo, "tls",
        {{"certificate", tls->current()},
         {"client_certificates",
          tls_files.client_ca.empty() ? "not requested" : "required"}});
  } else {
    Log(LogLevel::kWarning, "tls",
        {{"mode", "plaintext"},
         {"effect", "traffic is not encrypted; set --tls-cert/--tls-key"}});
  }
  std::optional<AuthPolicy> policy;
  if (!config->policy.empty()) {
    absl::StatusOr<AuthPolicy> loaded = AuthPolicy::Load(config->policy);
    if (!loaded.ok()) {
      Log(LogLevel::kError, "policy_invalid",
          {{"error", std::string(loaded.status().message())}});
      return 2;
    }
    policy = *std::move(loaded);
    if (policy->uses_certificates() && tls_files.client_ca.empty()) {
      Log(LogLevel::kWarning, "policy",
          {{"note",
            "the policy matches certificate names but --tls-client-ca is "
            "not set, so no client certificate is ever presented"}});
    }
    Log(LogLevel::kInfo, "policy",
        {{"file", config->policy},
         {"principals", absl::StrCat(policy->size())}});
  } else {
    Log(LogLevel::kWarning, "policy",
        {{"mode", "open"},
         {"effect",
          "no --policy: every caller may use every namespace and the Admin "
          "service"}});
  }

  // Declared before the store: the store's change announcements notify it
  // until the store is closed.
  WaitQueue waits;
  const absl::Time open_start = absl::Now();
  absl::StatusOr<std::unique_ptr<storage::Store>> store = OpenStore(*config);
  if (!store.ok()) {
    Log(LogLevel::kError, "store_open_failed",
        {{"store", config->store},
         {"data_dir", config->data_dir},
         {"error", std::string(store.status().message())}});
    return 1;
  }
  const absl::Duration open_time = absl::Now() - open_start;
  // Other replicas' Completes and Releases wake the calls parked here.
  (*store)->WatchChanges(
      [&waits](const storage::KeyId& id) { waits.Notify(WaitKey(id)); });

  // Operator scans (Admin List and Stats) run here, off gRPC's threads.
  BlockingExecutor admin_scans(2);
  Metrics metrics;
  RpcObserver observer(&metrics);
  const Authorizer authorizer(policy.has_value() ? &*policy : nullptr,
                              &metrics);
  Limits limits = config->limits;
  if (!RedisSeeds(*config).empty()) limits.wait_recheck = config->redis_poll;
  IdempotencyService idempotency(store->get(), &waits, &observer, &authorizer,
                                 limits);
  AdminService admin(store->get(), &waits, &admin_scans, &observer,
                     &authorizer);

  // Touching a health message keeps its descriptor in the binary, so that
  // reflection describes grpc.health.v1.Health too (grpcurl describe).
  grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config->listen,
                           tls != nullptr
                               ? tls->Credentials(config->tls_refresh)
                               : InsecureCredentials(),
                           &port);
  // gRPC sets SO_REUSEPORT by default: a second server started on the same
  // port would silently share the traffic with its own, separate store and
  // run the same key's work twice. Refuse instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Bounds gRPC's own buffers, so that a flood of connections or large
  // messages in flight cannot take the process's memory.
  grpc::ResourceQuota quota("idem-server");
  quota.Resize(config->max_grpc_memory_bytes);
  builder.SetResourceQuota(quota);
  builder.RegisterService(&idempotency);
  builder.RegisterService(&admin);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(MakeInvalidRequestInterceptorFactory(&observer));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  // Room for the largest valid Complete: its result and the rest of the
  // request. Replies are bounded by --max-reply-bytes (a BeginBatch stops
  // adding results there); the send limit is a backstop far below
  // protobuf's 2 GiB, where serializing would abort the process.
  const size_t max_message = std::max<size_t>(
      size_t{4} << 20, config->limits.MaxResultBytes() + (size_t{64} << 10));
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message));
  builder.SetMaxSendMessageSize(
      static_cast<int>(config->limits.max_reply_bytes + (size_t{64} << 20)));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    Log(LogLevel::kError, "listen_failed",
        {{"listen", config->listen},
         {"error",
          "cannot bind the gRPC address: in use by another process, or not "
          "an address of this host (gRPC's own line above says which)"}});
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  // Clients ask for "" (the server) or for the service they call; every
  // later SetServingStatus(bool) updates all three.
  health->SetServingStatus(v1::Idempotency::service_full_name(), true);
  health->SetServingStatus(v1::Admin::service_full_name(), true);
  health->SetServingStatus(true);  // The store is open: ready.
  // The same status for HTTP probes (/healthz on the metrics port).
  std::atomic<bool> serving{true};
  // While the store cannot write (disk full, failing disk), probes see
  // NOT_SERVING, so that traffic goes elsewhere; replays still work.
  auto health_watcher = std::make_unique<StoreHealthWatcher>(
      store->get(), absl::Milliseconds(250),
      [health, &serving](const absl::Status& store_health) {
        if (store_health.ok()) {
          Log(LogLevel::kInfo, "storage_recovered",
              {{"effect", "writes succeed again; health is SERVING"}});
        } else {
          Log(LogLevel::kError, "storage_unhealthy",
              {{"error", std::string(store_health.message())},
               {"effect",
                "health is NOT_SERVING until the store recovers (checked "
                "every second: a probe write on RocksDB, every master "
                "answering on Redis Cluster); meanwhile changes may fail with "
                "UNAVAILABLE"}});
        }
        health->SetServingStatus(store_health.ok());
        serving = store_health.ok();
      });

  std::unique_ptr<MetricsHttpServer> metrics_http;
  if (!config->metrics_listen.empty()) {
    storage::Store* opened = store->get();
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
        MetricsHttpServer::Start(
            config->metrics_listen,
            [&, opened] {
              return metrics.Render(
                  {waits.parked(), opened->Stats(), opened->Health().ok()});
            },
            [&serving] { return serving.load(); });
    if (!started.ok()) {
      Log(LogLevel::kError, "metrics_listen_failed",
          {{"listen", config->metrics_listen},
           {"error", std::string(started.status().message())}});
      server->Shutdown();
      return 1;
    }
    metrics_http = *std::move(started);
  }
  const int metrics_port = metrics_http != nullptr ? metrics_http->port() : 0;
  if (!config->port_file.empty() &&
      !WritePortFile(config->port_file, port, metrics_port)) {
    Log(LogLevel::kError, "port_file_failed", {{"path", config->port_file}});
    server->Shutdown();
    return 1;
  }
  Log(LogLevel::kInfo, "serving",
      {{"port", absl::StrCat(port)},
       {"metrics_port", absl::StrCat(metrics_port)},
       {"store_open", absl::FormatDuration(open_time)}});

  // Rotated TLS files are checked before gRPC sees them: a bad set is
  // refused and the last good one keeps serving.
  auto report_tls = [&metrics](const TlsReloader::Outcome& outcome) {
    const bool installed = outcome.kind != TlsReloader::Outcome::Kind::kRefused;
    metrics.RecordTlsReload(installed);
    if (installed) {
      Log(LogLevel::kInfo, "tls_reload",
          {{"certificate", outcome.detail},
           {"effect", "in use for new connections within --tls-refresh"}});
    } else {
      Log(LogLevel::kError, "tls_reload_failed",
          {{"error", outcome.detail},
           {"effect",
            "refused: the last good certificate stays in use; fix the files "
            "(they are re-checked every --tls-refresh and on SIGHUP)"}});
    }
  };
  if (tls != nullptr) tls->Watch(config->tls_refresh, report_tls);

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) == 0 &&
         signal_number == SIGHUP) {
    if (tls == nullptr) {
      Log(LogLevel::kInfo, "sighup", {{"note", "TLS is off: nothing to do"}});
      continue;
    }
    report_tls(tls->Reload(/*force=*/true));
  }
  Log(LogLevel::kInfo, "shutdown_started",
      {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"},
       {"drain_delay", absl::FormatDuration(config->drain_delay)}});
  // Stopped first: no store-health change may turn the server SERVING again.
  health_watcher.reset();
  health->SetServingStatus(false);
  serving = false;
  absl::SleepFor(config->drain_delay);  // Let load balancers notice.
  health->Shutdown();
  waits.Shutdown();  // Parked Begins answer with the state as it is.
  server->Shutdown(absl::ToChronoTime(absl::Now() + config->shutdown_grace));
  server->Wait();
  tls.reset();  // Its watcher reports to `metrics`, destroyed before it.
  metrics_http.reset();
  store->reset();  // Closes the store after the last call.
  Log(LogLevel::kInfo, "shutdown_complete");
  return 0;
}

}  // namespace
}  // namespace idem::server

int main(int argc, char** argv) { return idem::server::Run(argc, argv); }
