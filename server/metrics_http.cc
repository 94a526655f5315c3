#include "server/metrics_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/address.h"

namespace idem::server {

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, std::function<std::string()> render,
    std::function<bool()> serving) {
  absl::StatusOr<HostPort> address = ParseHostPort(listen, PortZero::kAllowed);
  if (!address.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address \"", listen, "\": ", address.status().message()));
  }
  const std::string& host = address->host;
  int port = address->port;
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->http_ = std::make_unique<httplib::Server>();
  server->http_->Get("/metrics", [render = std::move(render)](
                                     const httplib::Request&,
                                     httplib::Response& response) {
    response.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server->http_->Get(
      "/healthz", [serving = std::move(serving)](const httplib::Request&,
                                                 httplib::Response& response) {
        const bool ok = serving();
        response.status = ok ? 200 : 503;
        response.set_content(ok ? "SERVING\n" : "NOT_SERVING\n", "text/plain");
      });
  // cpp-httplib sets SO_REUSEPORT by default: a second server on the same
  // port would start and share the scrapes and probes with the first one,
  // each answering for its own process. Only SO_REUSEADDR, as gRPC's port.
  server->http_->set_socket_options([](socket_t socket) {
    const int yes = 1;
    setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  errno = 0;
  if (port == 0) {
    port = server->http_->bind_to_any_port(host);
  } else if (!server->http_->bind_to_port(host, port)) {
    port = -1;
  }
  if (port <= 0) {
    const int error = errno;
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for metrics on ", listen, ": ",
        error == EADDRINUSE ? "address in use (is another server running?)"
        : error != 0        ? std::strerror(error)
                            : "bind failed"));
  }
  server->port_ = port;
  httplib::Server* http = server->http_.get();
  server->thread_ = std::thread([http] { http->listen_after_bind(); });
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace idem::server
