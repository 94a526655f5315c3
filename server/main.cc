// idem-server: the Idem gRPC server on its embedded RocksDB store, or a
// stateless replica over a Redis Cluster (--store=redis-cluster://...).
//
// This file is the process around the server (server.h puts the server
// together): flags and environment (config.h), the log level, the open-file
// limit, and signals. SIGHUP re-checks the TLS files; SIGTERM or SIGINT
// drains and stops (Server::Shutdown). Exit codes: 0 after a clean stop or
// --help, 2 for a bad flag, TLS or policy file, 1 when the store or a port
// cannot be opened.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/config.h"
#include "server/ops/file_limit.h"
#include "server/ops/log.h"
#include "server/server.h"

namespace idem::server {
namespace {

int Run(int argc, char** argv) {
  // Signals are taken by sigwait below, never by an arbitrary thread; block
  // them before any thread starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);  // Re-check the TLS files.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<ServerConfig> config = ParseConfig(
      std::vector<std::string>(argv + 1, argv + argc), &std::getenv);
  if (config.status().code() == absl::StatusCode::kNotFound) {
    std::fputs(std::string(config.status().message()).c_str(), stdout);
    return 0;  // --help.
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

  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(*config);
  if (!server.ok()) return Server::ExitCode(server.status());
  int signal_number = 0;
  while (sigwait(&signals, &signal_number) == 0 && signal_number == SIGHUP) {
    (*server)->ReloadTls();
  }
  (*server)->Shutdown(signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  return 0;
}

}  // namespace
}  // namespace idem::server

int main(int argc, char** argv) { return idem::server::Run(argc, argv); }
