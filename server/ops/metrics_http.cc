#include "server/ops/metrics_http.h"

#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/ops/address.h"

namespace idem::server {
namespace {

std::string Response(int status, absl::string_view reason,
                     absl::string_view content_type, const std::string& body,
                     bool head) {
  return absl::StrCat("HTTP/1.1 ", status, " ", reason,
                      "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n", head ? "" : body);
}

}  // namespace

struct MetricsHttpServer::Connection {
  int fd;
  absl::Time deadline;
  std::string request;
  std::string reply;  // Once set: being written.
  size_t written = 0;
};

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, std::function<std::string()> render,
    std::function<bool()> serving) {
  absl::StatusOr<HostPort> address = ParseHostPort(listen, PortZero::kAllowed);
  if (!address.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address \"", listen, "\": ", address.status().message()));
  }
  int port = 0;
  const int fd = ListenTcp(address->host, address->port, &port);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for metrics on ", listen, ": ",
        -fd == EADDRINUSE ? "address in use (is another server running?)"
                          : std::strerror(-fd)));
  }
  const int wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake < 0) {
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer(
      fd, wake, port, std::move(render), std::move(serving)));
  server->thread_ = std::thread([s = server.get()] { s->Loop(); });
  return server;
}

MetricsHttpServer::MetricsHttpServer(int listen_fd, int wake_fd, int port,
                                     std::function<std::string()> render,
                                     std::function<bool()> serving)
    : listen_fd_(listen_fd),
      wake_fd_(wake_fd),
      port_(port),
      render_(std::move(render)),
      serving_(std::move(serving)) {}

MetricsHttpServer::~MetricsHttpServer() {
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
    // Cannot happen for an eventfd below its maximum; the join would hang.
  }
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_fd_);
}

std::string MetricsHttpServer::Answer(const std::string& request) {
  const size_t end = request.find("\r\n\r\n");
  if (end == std::string::npos) return "";
  // "GET /metrics HTTP/1.1": the method and the path, without a query.
  const size_t space = request.find(' ');
  const size_t space2 = request.find(' ', space + 1);
  if (space == std::string::npos || space2 == std::string::npos ||
      space2 > end) {
    return Response(400, "Bad Request", "text/plain", "bad request line\n",
                    false);
  }
  const std::string method = request.substr(0, space);
  std::string path = request.substr(space + 1, space2 - space - 1);
  path = path.substr(0, path.find('?'));
  const bool head = method == "HEAD";
  if (method != "GET" && !head) {
    return Response(405, "Method Not Allowed", "text/plain",
                    "GET or HEAD only\n", false);
  }
  if (path == "/metrics") {
    return Response(
        200, "OK", "text/plain; version=0.0.4; charset=utf-8",
        absl::StrCat(render_(),
                     "# HELP idem_http_connections_dropped_total Connections "
                     "to this port closed for being too slow or too many.\n"
                     "# TYPE idem_http_connections_dropped_total counter\n"
                     "idem_http_connections_dropped_total ",
                     dropped_.load(), "\n"),
        head);
  }
  if (path == "/healthz") {
    const bool ok = serving_();
    return Response(ok ? 200 : 503, ok ? "OK" : "Service Unavailable",
                    "text/plain", ok ? "SERVING\n" : "NOT_SERVING\n", head);
  }
  return Response(404, "Not Found", "text/plain",
                  "not found: /metrics and /healthz are served here\n", head);
}

void MetricsHttpServer::Loop() {
  pthread_setname_np(pthread_self(), "idem-http");
  std::deque<Connection> connections;  // Oldest first.
  std::vector<pollfd> polled;
  while (true) {
    const absl::Time now = absl::Now();
    // Too slow: the request did not arrive, or the reply was not taken, in
    // time.
    for (auto it = connections.begin(); it != connections.end();) {
      if (now < it->deadline) {
        ++it;
        continue;
      }
      close(it->fd);
      ++dropped_;
      it = connections.erase(it);
    }
    absl::Time next_deadline = now + kRequestTimeout;
    polled.clear();
    polled.push_back({wake_fd_, POLLIN, 0});
    polled.push_back({listen_fd_, POLLIN, 0});
    for (const Connection& c : connections) {
      polled.push_back(
          {c.fd, static_cast<short>(c.reply.empty() ? POLLIN : POLLOUT), 0});
      next_deadline = std::min(next_deadline, c.deadline);
    }
    const int timeout_ms =
        static_cast<int>(absl::ToInt64Milliseconds(next_deadline - now) + 1);
    if (poll(polled.data(), polled.size(), timeout_ms) < 0 && errno != EINTR) {
      absl::SleepFor(absl::Milliseconds(10));  // EINVAL/ENOMEM: try again.
      continue;
    }
    if (polled[0].revents != 0) break;  // Stopping.
    // Connections first (their pollfds follow the two fixed ones), then
    // new ones, so that indexes still match.
    for (size_t i = connections.size(); i-- > 0;) {
      Connection& c = connections[i];
      const short events = polled[i + 2].revents;
      if (events == 0) continue;
      bool done = false;
      if (c.reply.empty()) {
        char buffer[2048];
        const ssize_t n = recv(c.fd, buffer, sizeof(buffer), 0);
        if (n > 0) {
          c.request.append(buffer, static_cast<size_t>(n));
          c.reply = c.request.size() > kMaxRequestBytes
                        ? Response(431, "Request Header Fields Too Large",
                                   "text/plain", "request too large\n", false)
                        : Answer(c.request);
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          done = true;  // The client went away.
        }
      }
      if (!done && !c.reply.empty()) {
        const ssize_t n = send(c.fd, c.reply.data() + c.written,
                               c.reply.size() - c.written, MSG_NOSIGNAL);
        if (n > 0) c.written += static_cast<size_t>(n);
        done = (n < 0 && errno != EAGAIN && errno != EINTR) ||
               c.written == c.reply.size();
      }
      if (done) {
        close(c.fd);
        connections.erase(connections.begin() + static_cast<ptrdiff_t>(i));
      }
    }
    if (polled[1].revents != 0) {
      while (true) {
        const int fd =
            accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          // Out of descriptors: the pending connection stays queued; pause
          // rather than spin on a listening socket that stays readable.
          if (errno == EMFILE || errno == ENFILE) {
            absl::SleepFor(absl::Milliseconds(50));
          }
          break;
        }
        if (connections.size() >= kMaxConnections) {
          // Full: the oldest connection makes room, so that slow clients
          // cannot keep probes out.
          close(connections.front().fd);
          connections.pop_front();
          ++dropped_;
        }
        connections.push_back({fd, absl::Now() + kRequestTimeout, "", "", 0});
      }
    }
  }
  for (const Connection& c : connections) close(c.fd);
}

}  // namespace idem::server
