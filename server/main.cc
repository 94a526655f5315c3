// idem-server: the Idem gRPC server on its embedded RocksDB store.
// Reads flags and environment (config.h), opens the store, serves until
// SIGTERM or SIGINT, then drains: parked waits are answered, in-flight calls
// get --shutdown-grace to finish, and the database is closed cleanly.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/config.h"
#include "server/idempotency_service.h"
#include "server/wait_queue.h"
#include "storage/rocksdb_store.h"

namespace idem::server {
namespace {

// One key=value line per notable event on stderr.
void Log(absl::string_view event, absl::string_view fields = "") {
  std::string line = absl::StrCat(
      "ts=",
      absl::FormatTime(absl::RFC3339_full, absl::Now(), absl::UTCTimeZone()),
      " event=", event);
  if (!fields.empty()) absl::StrAppend(&line, " ", fields);
  line.push_back('\n');
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

std::string Quote(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

// Writes atomically, so a reader never sees a partial port number.
bool WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (!out.good()) return false;
  }
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  return !error;
}

int Run(int argc, char** argv) {
  // Signals are taken by sigwait below, never by an arbitrary thread; block
  // them before any thread starts so that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
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

  storage::RocksDbStoreOptions store_options;
  store_options.path = config->data_dir;
  store_options.sync_writes = config->sync_writes;
  store_options.periodic_compaction = config->periodic_compaction;
  store_options.block_cache_bytes = config->block_cache_bytes;
  absl::StatusOr<std::unique_ptr<storage::RocksDbStore>> store =
      storage::RocksDbStore::Open(store_options);
  if (!store.ok()) {
    Log("store_open_failed",
        absl::StrCat("data_dir=", Quote(config->data_dir),
                     " error=", Quote(store.status().message())));
    return 1;
  }

  WaitQueue waits;
  IdempotencyService service(store->get(), &waits, config->limits);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config->listen, grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  // Room for the largest valid Complete: body, metadata and framing.
  const size_t max_message = std::max<size_t>(
      size_t{4} << 20, config->limits.max_body_bytes +
                           config->limits.max_metadata_entries *
                               (config->limits.max_metadata_key_bytes +
                                config->limits.max_metadata_value_bytes) +
                           (size_t{64} << 10));
  builder.SetMaxReceiveMessageSize(static_cast<int>(
      std::min<size_t>(max_message, std::numeric_limits<int>::max())));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    Log("listen_failed", absl::StrCat("listen=", Quote(config->listen)));
    return 1;
  }
  if (!config->port_file.empty() && !WritePortFile(config->port_file, port)) {
    Log("port_file_failed", absl::StrCat("path=", Quote(config->port_file)));
    return 1;
  }
  Log("serving", absl::StrCat("port=", port, " ", Describe(*config)));

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  Log("shutdown_started",
      absl::StrCat("signal=", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"));
  server->GetHealthCheckService()->Shutdown();  // NOT_SERVING from now on.
  waits.Shutdown();  // Parked Begins answer with the state as it is.
  server->Shutdown(absl::ToChronoTime(absl::Now() + config->shutdown_grace));
  server->Wait();
  store->reset();  // Closes RocksDB after the last call.
  Log("shutdown_complete");
  return 0;
}

}  // namespace
}  // namespace idem::server

int main(int argc, char** argv) { return idem::server::Run(argc, argv); }
