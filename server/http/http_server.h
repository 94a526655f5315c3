// An HTTP/1.1 server on one epoll thread whose requests are answered
// later, from any thread: the handler gets the request and a Responder and
// returns at once, so a request waiting for its answer (a Begin parked
// until its key is completed) holds no thread, and 1,000 of them cost
// 1,000 small buffers.
//
//   HttpServer::Options options;
//   options.listen = "127.0.0.1:8080";
//   auto server = HttpServer::Start(options, [](HttpRequest request,
//                                               Responder responder) {
//     responder.Send({.status = 200, .body = "hi"});   // now or later
//   });
//   ...
//   (*server)->Drain(absl::Seconds(10));   // then destroy it
//
// Built to stay up whatever peers send: a request's head must arrive whole
// within `request_timeout` and fit `max_head_bytes`; a body larger than
// `max_body_bytes` is refused (413) from its Content-Length, before it is
// read; at most `max_connections` are open (a new one beyond that is
// refused), and together they hold at most `max_buffered_bytes` of unread
// input. A refusal is followed by a short linger, so that the peer reads
// it rather than a connection reset. Bodies come with Content-Length or
// chunked. One request per
// connection at a time (a pipelined next one waits its turn); a
// connection that closes while its request waits cancels it
// (Responder::OnCancel). With TLS, every connection gets the context
// `tls()` returns at accept time (so rotated certificates take effect for
// new connections) and the verified client certificate, if any, comes with
// each request; Start then ignores SIGPIPE if it has its default action
// (OpenSSL writes to sockets with write(2)).
#ifndef IDEM_SERVER_HTTP_HTTP_SERVER_H_
#define IDEM_SERVER_HTTP_HTTP_SERVER_H_

#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace idem::server {

struct HttpRequest {
  std::string method;  // As sent: "GET", "POST", ...
  std::string path;    // The target before '?', still percent-encoded.
  std::string query;   // After '?', still percent-encoded; may be empty.
  // Names lower-cased, in arrival order.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool tls = false;
  // The client certificate (PEM) when TLS verified one; else empty.
  std::string peer_certificate;
  std::string peer;  // "IP:PORT", for logs.

  // The first header named `name` (lower case), or nullptr.
  const std::string* Header(absl::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Close the connection after this response.
  bool close = false;
};

// The answer to one request: Send exactly once, from any thread. Copies
// share the request. Once the connection is gone, Send does nothing.
class Responder {
 public:
  struct Pending;
  explicit Responder(std::shared_ptr<Pending> pending)
      : pending_(std::move(pending)) {}

  void Send(HttpResponse response) const;
  // `cancel` runs (on the server's thread) if the connection closes before
  // Send, or at once if it has closed already. Set it at most once.
  void OnCancel(std::function<void()> cancel) const;

 private:
  std::shared_ptr<Pending> pending_;
};

class HttpServer {
 public:
  struct Options {
    std::string listen;  // HOST:PORT; port 0 picks a free one.
    size_t max_body_bytes = size_t{4} << 20;
    size_t max_head_bytes = size_t{64} << 10;
    size_t max_connections = 10'000;
    // Bytes read and not yet handed over, all connections together: past
    // this, reading pauses until requests are answered.
    size_t max_buffered_bytes = size_t{256} << 20;
    absl::Duration request_timeout = absl::Seconds(30);
    absl::Duration idle_timeout = absl::Seconds(120);
    // Null: plaintext. Else called on the server's thread for each new
    // connection; a null context refuses the connection.
    std::function<std::shared_ptr<SSL_CTX>()> tls;
    // The body of the server's own refusals (413, 408, ...): status and a
    // message in, response out. Null: plain text.
    std::function<HttpResponse(int status, std::string message)> refusal;
  };
  using Handler = std::function<void(HttpRequest request, Responder responder)>;

  // UNAVAILABLE when the address is in use or cannot be bound;
  // INVALID_ARGUMENT for a malformed one. `handler` runs on the server's
  // thread and must not block.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(Options options,
                                                           Handler handler);
  // Drain(0) unless drained: closes everything and joins the thread.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

  // Stops accepting connections and requests, lets the requests already
  // handed to the handler be answered and written for up to `grace`, then
  // closes every connection. Idle keep-alive connections close at once.
  void Drain(absl::Duration grace);

  // Connections refused or closed for being too slow, too big or too many.
  uint64_t dropped() const { return dropped_.load(); }
  uint64_t open_connections() const { return open_.load(); }

 private:
  class Loop;
  HttpServer(int port, std::unique_ptr<Loop> loop);

  const int port_;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> open_{0};
  bool drained_ = false;
};

// An SSL_CTX for a server from PEM text: the certificate chain (first the
// leaf), its key, and (non-empty) the CA bundle client certificates must
// chain to — then a client certificate is required. TLS 1.2 and later;
// ALPN "http/1.1". INVALID_ARGUMENT saying what does not parse or match.
absl::StatusOr<std::shared_ptr<SSL_CTX>> MakeServerTlsContext(
    absl::string_view cert_chain_pem, absl::string_view key_pem,
    absl::string_view client_ca_pem);

}  // namespace idem::server

#endif  // IDEM_SERVER_HTTP_HTTP_SERVER_H_
