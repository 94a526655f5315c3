// Serves GET /metrics (Prometheus text format) and GET /healthz (200
// SERVING or 503 NOT_SERVING, for HTTP probes, e.g. when the gRPC port needs
// TLS that Kubernetes' gRPC probes cannot speak) on its own thread, with
// cpp-httplib.
#ifndef IDEM_SERVER_METRICS_HTTP_H_
#define IDEM_SERVER_METRICS_HTTP_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace idem::server {

class MetricsHttpServer {
 public:
  // Listens on HOST:PORT (port 0 picks a free one) and serves `render()`
  // and `serving()`.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, std::function<std::string()> render,
      std::function<bool()> serving);
  // Stops serving and joins the thread.
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;

  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_METRICS_HTTP_H_
