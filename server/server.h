// One Idem server put together from its configuration: the store, TLS, the
// authorization policy, the gRPC services, health and metrics. This is the
// composition root: main.cc parses flags into a ServerConfig, handles
// signals and runs one of these; tests start the very same object
// in-process.
//
// Usage:
//   absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(config);
//   if (!server.ok()) return ExitCode(server.status());
//   ...                          // (*server)->port() serves; SIGHUP:
//   (*server)->ReloadTls();      // re-checks the TLS files now
//   (*server)->Shutdown("SIGTERM");
//
// Start-up order: the TLS and policy files are checked (a bad one stops the
// start before anything opens), the store opens (RocksDB may replay its
// log; Redis loads the slot map and probes every master), then gRPC listens
// and reports SERVING, then the metrics and HTTP ports open. Until Start
// returns the
// gRPC port is closed, so probes fail as they would on NOT_SERVING.
//
// Thread safety: Start, ReloadTls and Shutdown are called from one thread
// (main's); the object serves from gRPC's and its own threads.
#ifndef IDEM_SERVER_SERVER_H_
#define IDEM_SERVER_SERVER_H_

#include <atomic>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/server.h"
#include "server/auth/auth_policy.h"
#include "server/auth/authorizer.h"
#include "server/auth/tls.h"
#include "server/config.h"
#include "server/http/connect_gateway.h"
#include "server/http/http_server.h"
#include "server/ops/metrics.h"
#include "server/ops/metrics_http.h"
#include "server/ops/store_health_watcher.h"
#include "server/rpc/admin_service.h"
#include "server/rpc/blocking_executor.h"
#include "server/rpc/idempotency_service.h"
#include "server/rpc/rpc_observer.h"
#include "server/rpc/wait_queue.h"
#include "storage/store.h"

namespace idem::server {

class Server {
 public:
  // Starts a server that is SERVING when this returns. A failure is logged
  // (one event naming the cause: tls_invalid, policy_invalid,
  // store_open_failed, listen_failed, metrics_listen_failed,
  // port_file_failed) and returned: INVALID_ARGUMENT for a bad TLS or
  // policy file, UNAVAILABLE for everything else. Nothing is left running.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerConfig& config);
  // The process's exit code for a failed Start: 2 for INVALID_ARGUMENT
  // (fix the files), 1 otherwise.
  static int ExitCode(const absl::Status& start_failure);

  // Shutdown("destroyed") unless it was called.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound ports (the configured ones, or those picked for port 0);
  // metrics_port() and http_port() are 0 when those are off.
  int port() const { return port_; }
  int metrics_port() const;
  int http_port() const { return http_ != nullptr ? http_->port() : 0; }
  // A channel to this server without a socket (fuzzers, benchmarks of the
  // handlers); calls pass the same interceptors and limits as over TCP.
  std::shared_ptr<grpc::Channel> InProcessChannel();

  // Re-checks the TLS files at once (SIGHUP), installing a good set and
  // refusing a bad one (logged either way); with TLS off, logs that there
  // is nothing to do.
  void ReloadTls();

  // Drains and stops, once: NOT_SERVING, --drain-delay for load balancers
  // to notice, parked Begins answered with the state as it is, in-flight
  // calls given --shutdown-grace, then the store closed. `reason` is
  // logged (e.g. the signal's name).
  void Shutdown(absl::string_view reason);

 private:
  explicit Server(const ServerConfig& config);
  // Start's steps; each logs its own failure.
  absl::Status LoadSecurity();
  absl::Status OpenStore();
  absl::Status StartGrpc();
  absl::Status StartMetrics();
  absl::Status StartHttp();
  // The HTTP port's TLS context for a new connection: rebuilt when the
  // reloader installed a new set. Called on the HTTP server's thread only.
  std::shared_ptr<SSL_CTX> HttpTlsContext();
  void WatchStoreHealth();
  void ReportTls(const TlsReloader::Outcome& outcome);

  // Members are destroyed in reverse order: whatever reports to or calls
  // into another member is declared after it.
  const ServerConfig config_;
  Metrics metrics_;
  RpcObserver observer_{&metrics_};
  std::optional<AuthPolicy> policy_;
  std::unique_ptr<Authorizer> authorizer_;
  // Before the store: its change announcements notify the queue until the
  // store is closed.
  WaitQueue waits_;
  std::unique_ptr<storage::Store> store_;
  absl::Duration store_open_time_;
  // Operator scans (Admin List and Stats) run here, off gRPC's threads.
  BlockingExecutor admin_scans_{2};
  std::unique_ptr<IdempotencyService> idempotency_;
  std::unique_ptr<AdminService> admin_;
  // Bounds gRPC's own buffers (connections, messages in flight).
  grpc::ResourceQuota quota_{"idem-server"};
  std::unique_ptr<grpc::Server> grpc_;
  int port_ = 0;
  // The health status for HTTP probes (/healthz), as gRPC's health has it.
  std::atomic<bool> serving_{false};
  std::unique_ptr<StoreHealthWatcher> health_watcher_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  // The Connect door: calls the services through an in-process channel.
  std::unique_ptr<ConnectGateway> gateway_;
  std::unique_ptr<HttpServer> http_;
  int http_tls_generation_ = -1;  // HTTP thread only.
  std::shared_ptr<SSL_CTX> http_tls_context_;
  // Its watcher reports to metrics_.
  std::unique_ptr<TlsReloader> tls_;
  bool started_ = false;  // Start succeeded: destruction drains.
  bool shut_down_ = false;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_SERVER_H_
