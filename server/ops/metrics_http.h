// Serves GET /metrics (Prometheus text format) and GET /healthz (200
// SERVING or 503 NOT_SERVING, for HTTP probes, e.g. when the gRPC port needs
// TLS that Kubernetes' gRPC probes cannot speak) on one thread of its own.
//
// Built to stay answerable whatever peers do, since /healthz is a readiness
// probe and may listen on 0.0.0.0: one poll() loop serves every connection
// (a slow client never holds a thread), a request must arrive whole within
// kRequestTimeout and fit kMaxRequestBytes, and at most kMaxConnections are
// open; a new connection beyond that closes the oldest one, so that a crowd
// of slow clients cannot lock probes out. Every answer closes its
// connection (probes and scrapes open one per request).
#ifndef IDEM_SERVER_OPS_METRICS_HTTP_H_
#define IDEM_SERVER_OPS_METRICS_HTTP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace idem::server {

class MetricsHttpServer {
 public:
  static constexpr absl::Duration kRequestTimeout = absl::Seconds(5);
  static constexpr size_t kMaxRequestBytes = 8192;
  static constexpr size_t kMaxConnections = 64;

  // Listens on HOST:PORT (port 0 picks a free one) and serves `render()`
  // and `serving()`, both called on the server's thread. UNAVAILABLE when
  // the address is in use or cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, std::function<std::string()> render,
      std::function<bool()> serving);
  // Stops serving, closes every connection and joins the thread.
  ~MetricsHttpServer();

  int port() const { return port_; }
  // Connections closed because they were too slow or too many (also
  // exported as idem_http_connections_dropped_total).
  uint64_t dropped() const { return dropped_.load(); }

 private:
  struct Connection;

  MetricsHttpServer(int listen_fd, int wake_fd, int port,
                    std::function<std::string()> render,
                    std::function<bool()> serving);
  void Loop();
  // The answer to one request (status line to body), or empty while the
  // request is incomplete.
  std::string Answer(const std::string& request);

  const int listen_fd_;
  const int wake_fd_;  // An eventfd that ends the loop.
  const int port_;
  const std::function<std::string()> render_;
  const std::function<bool()> serving_;
  std::atomic<uint64_t> dropped_{0};
  std::thread thread_;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_OPS_METRICS_HTTP_H_
