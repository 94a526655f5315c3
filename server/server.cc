#include "server/server.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/open_store.h"
#include "server/ops/log.h"
#include "server/rpc/invalid_request_interceptor.h"

namespace idem::server {
namespace {

// Written atomically, so a reader never sees a partial file. Line 1: the
// gRPC port; then, for those that are on, metrics=PORT and http=PORT.
bool WritePortFile(const std::string& path, int port, int metrics_port,
                   int http_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (metrics_port > 0) out << "metrics=" << metrics_port << "\n";
    if (http_port > 0) out << "http=" << http_port << "\n";
    if (!out.good()) return false;
  }
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  return !error;
}

// Room for the largest valid Complete: its result and the rest of the
// request.
size_t MaxRequestBytes(const ServerConfig& config) {
  return std::max<size_t>(size_t{4} << 20,
                          config.limits.MaxResultBytes() + (size_t{64} << 10));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerConfig& config) {
  std::unique_ptr<Server> server(new Server(config));
  if (absl::Status s = server->LoadSecurity(); !s.ok()) return s;
  if (absl::Status s = server->OpenStore(); !s.ok()) return s;
  if (absl::Status s = server->StartGrpc(); !s.ok()) return s;
  server->WatchStoreHealth();
  // HTTP before metrics: /metrics reads http_, which is then set for the
  // metrics thread's whole life.
  if (absl::Status s = server->StartHttp(); !s.ok()) return s;
  if (absl::Status s = server->StartMetrics(); !s.ok()) return s;
  const int metrics_port = server->metrics_port();
  if (!config.port_file.empty() &&
      !WritePortFile(config.port_file, server->port_, metrics_port,
                     server->http_port())) {
    Log(LogLevel::kError, "port_file_failed", {{"path", config.port_file}});
    return absl::UnavailableError(
        absl::StrCat("cannot write --port-file ", config.port_file));
  }
  Log(LogLevel::kInfo, "serving",
      {{"port", absl::StrCat(server->port_)},
       {"metrics_port", absl::StrCat(metrics_port)},
       {"http_port", absl::StrCat(server->http_port())},
       {"store_open", absl::FormatDuration(server->store_open_time_)}});
  server->started_ = true;
  // Rotated TLS files are checked before gRPC sees them: a bad set is
  // refused and the last good one keeps serving.
  if (server->tls_ != nullptr) {
    Server* self = server.get();
    server->tls_->Watch(config.tls_refresh,
                        [self](const TlsReloader::Outcome& outcome) {
                          self->ReportTls(outcome);
                        });
  }
  return server;
}

int Server::ExitCode(const absl::Status& start_failure) {
  return start_failure.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

Server::Server(const ServerConfig& config) : config_(config) {}

Server::~Server() {
  if (started_ && !shut_down_) {
    Shutdown("destroyed");
  } else if (grpc_ != nullptr && !shut_down_) {
    // A start that failed after gRPC listened: stop without draining.
    metrics_http_.reset();
    http_.reset();
    grpc_->Shutdown();
    grpc_->Wait();
  }
}

int Server::metrics_port() const {
  return metrics_http_ != nullptr ? metrics_http_->port() : 0;
}

std::shared_ptr<grpc::Channel> Server::InProcessChannel() {
  return grpc_->InProcessChannel(grpc::ChannelArguments());
}

absl::Status Server::LoadSecurity() {
  // Checked before anything is opened, so that a bad file stops the server
  // at once with one clear line.
  const TlsFiles tls_files{config_.tls_cert, config_.tls_key,
                           config_.tls_client_ca};
  if (!tls_files.cert.empty()) {
    absl::StatusOr<std::unique_ptr<TlsReloader>> created =
        TlsReloader::Create(tls_files);
    if (!created.ok()) {
      Log(LogLevel::kError, "tls_invalid",
          {{"error", std::string(created.status().message())}});
      return absl::InvalidArgumentError(created.status().message());
    }
    tls_ = *std::move(created);
    Log(LogLevel::kInfo, "tls",
        {{"certificate", tls_->current()},
         {"client_certificates",
          tls_files.client_ca.empty() ? "not requested" : "required"}});
  } else {
    Log(LogLevel::kWarning, "tls",
        {{"mode", "plaintext"},
         {"effect", "traffic is not encrypted; set --tls-cert/--tls-key"}});
  }
  if (!config_.policy.empty()) {
    absl::StatusOr<AuthPolicy> loaded = AuthPolicy::Load(config_.policy);
    if (!loaded.ok()) {
      Log(LogLevel::kError, "policy_invalid",
          {{"error", std::string(loaded.status().message())}});
      return absl::InvalidArgumentError(loaded.status().message());
    }
    policy_ = *std::move(loaded);
    if (policy_->uses_certificates() && tls_files.client_ca.empty()) {
      Log(LogLevel::kWarning, "policy",
          {{"note",
            "the policy matches certificate names but --tls-client-ca is "
            "not set, so no client certificate is ever presented"}});
    }
    Log(LogLevel::kInfo, "policy",
        {{"file", config_.policy},
         {"principals", absl::StrCat(policy_->size())}});
  } else {
    Log(LogLevel::kWarning, "policy",
        {{"mode", "open"},
         {"effect",
          "no --policy: every caller may use every namespace and the Admin "
          "service"}});
  }
  authorizer_ = std::make_unique<Authorizer>(
      policy_.has_value() ? &*policy_ : nullptr, &metrics_);
  return absl::OkStatus();
}

absl::Status Server::OpenStore() {
  const absl::Time open_start = absl::Now();
  absl::StatusOr<std::unique_ptr<storage::Store>> store =
      server::OpenStore(config_);
  if (!store.ok()) {
    Log(LogLevel::kError, "store_open_failed",
        {{"store", StoreForLog(config_)},
         {"data_dir", config_.data_dir},
         {"error", std::string(store.status().message())}});
    return absl::UnavailableError(store.status().message());
  }
  store_ = *std::move(store);
  store_open_time_ = absl::Now() - open_start;
  // Other replicas' Completes and Releases wake the calls parked here; an
  // empty id (announcements may have been missed) wakes them all.
  store_->WatchChanges([this](const storage::KeyId& id) {
    if (id.name_space.empty() && id.key.empty()) {
      waits_.NotifyAll();
    } else {
      waits_.Notify(WaitKey(id));
    }
  });
  Limits limits = config_.limits;
  if (!RedisSeeds(config_).empty()) limits.wait_recheck = config_.redis_poll;
  if (IsPostgres(config_)) limits.wait_recheck = config_.postgres_poll;
  idempotency_ = std::make_unique<IdempotencyService>(
      store_.get(), &waits_, &observer_, authorizer_.get(), limits);
  admin_ = std::make_unique<AdminService>(store_.get(), &waits_, &admin_scans_,
                                          &observer_, authorizer_.get());
  return absl::OkStatus();
}

absl::Status Server::StartGrpc() {
  // Touching a health message keeps its descriptor in the binary, so that
  // reflection describes grpc.health.v1.Health too (grpcurl describe).
  grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config_.listen,
                           tls_ != nullptr
                               ? tls_->Credentials(config_.tls_refresh)
                               : InsecureCredentials(),
                           &port_);
  // gRPC sets SO_REUSEPORT by default: a second server started on the same
  // port would silently share the traffic with its own, separate store and
  // run the same key's work twice. Refuse instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Bounds gRPC's own buffers, so that a flood of connections or large
  // messages in flight cannot take the process's memory.
  quota_.Resize(config_.max_grpc_memory_bytes);
  builder.SetResourceQuota(quota_);
  builder.RegisterService(idempotency_.get());
  builder.RegisterService(admin_.get());
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(MakeInvalidRequestInterceptorFactory(&observer_));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  // Replies are bounded by --max-reply-bytes (a BeginBatch stops adding
  // results there); the send limit is a backstop far below protobuf's
  // 2 GiB, where serializing would abort the process.
  builder.SetMaxReceiveMessageSize(static_cast<int>(MaxRequestBytes(config_)));
  builder.SetMaxSendMessageSize(
      static_cast<int>(config_.limits.max_reply_bytes + (size_t{64} << 20)));
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr || port_ == 0) {
    port_ = 0;
    Log(LogLevel::kError, "listen_failed",
        {{"listen", config_.listen},
         {"error",
          "cannot bind the gRPC address: in use by another process, or not "
          "an address of this host (gRPC's own line above says which)"}});
    return absl::UnavailableError(
        absl::StrCat("cannot bind the gRPC address ", config_.listen));
  }
  grpc::HealthCheckServiceInterface* health = grpc_->GetHealthCheckService();
  // Clients ask for "" (the server) or for the service they call; every
  // later SetServingStatus(bool) updates all three.
  health->SetServingStatus(v1::Idempotency::service_full_name(), true);
  health->SetServingStatus(v1::Admin::service_full_name(), true);
  health->SetServingStatus(true);  // The store is open: ready.
  serving_ = true;
  return absl::OkStatus();
}

void Server::WatchStoreHealth() {
  // While the store cannot write (disk full, failing disk), probes see
  // NOT_SERVING, so that traffic goes elsewhere; replays still work.
  grpc::HealthCheckServiceInterface* health = grpc_->GetHealthCheckService();
  health_watcher_ = std::make_unique<StoreHealthWatcher>(
      store_.get(), absl::Milliseconds(250),
      [this, health](const absl::Status& store_health) {
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
        serving_ = store_health.ok();
      });
}

absl::Status Server::StartMetrics() {
  if (config_.metrics_listen.empty()) return absl::OkStatus();
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
      MetricsHttpServer::Start(
          config_.metrics_listen,
          [this] {
            Metrics::Gauges gauges{waits_.parked(), store_->Stats(),
                                   store_->Health().ok(), std::nullopt};
            if (HttpServer* http = http_.get(); http != nullptr) {
              gauges.http = {http->open_connections(), http->dropped()};
            }
            return metrics_.Render(gauges);
          },
          [this] { return serving_.load(); });
  if (!started.ok()) {
    Log(LogLevel::kError, "metrics_listen_failed",
        {{"listen", config_.metrics_listen},
         {"error", std::string(started.status().message())}});
    return absl::UnavailableError(started.status().message());
  }
  metrics_http_ = *std::move(started);
  return absl::OkStatus();
}

absl::Status Server::StartHttp() {
  if (config_.http_listen.empty()) return absl::OkStatus();
  ConnectGateway::Options gateway;
  const google::protobuf::DescriptorPool* pool =
      google::protobuf::DescriptorPool::generated_pool();
  gateway.services = {
      pool->FindServiceByName(v1::Idempotency::service_full_name()),
      pool->FindServiceByName(v1::Admin::service_full_name())};
  gateway.forwarding_secret = authorizer_->forwarding_secret();
  gateway.serving = [this] { return serving_.load(); };
  gateway.loopback_hosts_only = IsLoopbackHost(config_.http_listen);
  // The services enforce their own limits on requests and replies; the
  // channel's defaults (4 MiB received) would cut large replies short.
  grpc::ChannelArguments channel;
  channel.SetMaxReceiveMessageSize(-1);
  channel.SetMaxSendMessageSize(-1);
  gateway_ = std::make_unique<ConnectGateway>(grpc_->InProcessChannel(channel),
                                              std::move(gateway));
  HttpServer::Options options;
  options.listen = config_.http_listen;
  // The largest gRPC request in JSON: bytes grow by a third in base64.
  options.max_body_bytes = MaxRequestBytes(config_) * 2;
  // Unread HTTP input shares the bound on gRPC's buffers.
  options.max_buffered_bytes = config_.max_grpc_memory_bytes / 4;
  if (tls_ != nullptr) {
    if (HttpTlsContext() == nullptr) {
      Log(LogLevel::kError, "http_listen_failed",
          {{"listen", config_.http_listen},
           {"error", "the TLS files could not be loaded for HTTP"}});
      return absl::UnavailableError(
          "the TLS files could not be loaded for HTTP");
    }
    options.tls = [this] { return HttpTlsContext(); };
  }
  options.refusal = [](int status, const std::string& message) {
    grpc::StatusCode code = grpc::StatusCode::INVALID_ARGUMENT;
    if (status == 413 || status == 431) {
      code = grpc::StatusCode::RESOURCE_EXHAUSTED;
    } else if (status == 408) {
      code = grpc::StatusCode::DEADLINE_EXCEEDED;
    } else if (status == 501 || status == 505) {
      code = grpc::StatusCode::UNIMPLEMENTED;
    }
    return ConnectError(code, message, status);
  };
  absl::StatusOr<std::unique_ptr<HttpServer>> started = HttpServer::Start(
      std::move(options), [gateway = gateway_.get()](
                              HttpRequest request, const Responder& responder) {
        gateway->Handle(std::move(request), responder);
      });
  if (!started.ok()) {
    Log(LogLevel::kError, "http_listen_failed",
        {{"listen", config_.http_listen},
         {"error", std::string(started.status().message())}});
    return absl::UnavailableError(started.status().message());
  }
  http_ = *std::move(started);
  return absl::OkStatus();
}

std::shared_ptr<SSL_CTX> Server::HttpTlsContext() {
  if (tls_->generation() != http_tls_generation_) {
    const TlsReloader::Installed installed = tls_->installed();
    absl::StatusOr<std::shared_ptr<SSL_CTX>> made = MakeServerTlsContext(
        installed.cert, installed.key, installed.client_ca);
    if (made.ok()) {
      http_tls_context_ = *std::move(made);
    } else {
      // The reloader checked this set; OpenSSL disagreeing keeps the last.
      Log(LogLevel::kError, "http_tls_failed",
          {{"error", std::string(made.status().message())}});
    }
    http_tls_generation_ = installed.generation;
  }
  return http_tls_context_;
}

void Server::ReportTls(const TlsReloader::Outcome& outcome) {
  const bool installed = outcome.kind != TlsReloader::Outcome::Kind::kRefused;
  metrics_.RecordTlsReload(installed);
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
}

void Server::ReloadTls() {
  if (tls_ == nullptr) {
    Log(LogLevel::kInfo, "sighup", {{"note", "TLS is off: nothing to do"}});
    return;
  }
  ReportTls(tls_->Reload(/*force=*/true));
}

void Server::Shutdown(absl::string_view reason) {
  if (shut_down_) return;
  shut_down_ = true;
  Log(LogLevel::kInfo, "shutdown_started",
      {{"signal", std::string(reason)},
       {"drain_delay", absl::FormatDuration(config_.drain_delay)}});
  // Stopped first: no store-health change may turn the server SERVING again.
  health_watcher_.reset();
  grpc::HealthCheckServiceInterface* health = grpc_->GetHealthCheckService();
  health->SetServingStatus(false);
  serving_ = false;
  absl::SleepFor(config_.drain_delay);  // Let load balancers notice.
  health->Shutdown();
  waits_.Shutdown();  // Parked Begins answer with the state as it is.
  // HTTP first: it stops taking requests and writes the answers of those
  // in flight, which are gRPC calls over the in-process channel and need
  // gRPC running (its shutdown closes that channel at once). One grace
  // period for both.
  // (Drained, http_ stays readable for /metrics until that stops below.)
  const absl::Time grace_ends = absl::Now() + config_.shutdown_grace;
  if (http_ != nullptr) http_->Drain(grace_ends - absl::Now());
  grpc_->Shutdown(absl::ToChronoTime(grace_ends));
  grpc_->Wait();
  tls_.reset();
  metrics_http_.reset();
  http_.reset();
  gateway_.reset();
  store_.reset();  // Closes the store after the last call.
  Log(LogLevel::kInfo, "shutdown_complete");
}

}  // namespace idem::server
