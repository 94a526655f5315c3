#include "server/http/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_pki.h"

namespace idem::server {
namespace {

// A blocking loopback connection with a receive timeout.
class Client {
 public:
  explicit Client(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address),
                         sizeof(address)) == 0;
    timeval timeout{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  }
  ~Client() { Close(); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  bool connected() const { return connected_; }
  void SendIgnoringErrors(const std::string& data) const {
    [[maybe_unused]] const ssize_t n =
        send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
  }
  void Send(const std::string& data) const {
    ASSERT_EQ(send(fd_, data.data(), data.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(data.size()));
  }
  // One whole response (head and Content-Length body), or what arrived
  // before the connection closed or 5 s passed.
  std::string Receive() {
    while (true) {
      const size_t head = buffer_.find("\r\n\r\n");
      if (head != std::string::npos) {
        const size_t at = buffer_.find("Content-Length: ");
        size_t length = 0;
        if (at != std::string::npos && at < head) {
          length = std::stoul(buffer_.substr(at + 16));
        }
        if (buffer_.size() >= head + 4 + length) {
          std::string response = buffer_.substr(0, head + 4 + length);
          buffer_.erase(0, head + 4 + length);
          return response;
        }
      }
      char chunk[4096];
      const ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) return std::exchange(buffer_, "");
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }
  // Whether the server closed the connection (within 5 s).
  bool ClosedByServer() {
    char byte;
    return recv(fd_, &byte, 1, 0) == 0;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string buffer_;
};

std::string Post(absl::string_view path, absl::string_view body) {
  return absl::StrCat("POST ", path,
                      " HTTP/1.1\r\nHost: x\r\nContent-Length: ", body.size(),
                      "\r\n\r\n", body);
}

HttpResponse Text(std::string body) {
  HttpResponse response;
  response.body = std::move(body);
  return response;
}

// Echoes method, path and body.
HttpServer::Handler Echo() {
  return [](const HttpRequest& request, const Responder& responder) {
    HttpResponse response;
    response.body =
        absl::StrCat(request.method, " ", request.path, " ", request.body);
    responder.Send(std::move(response));
  };
}

std::unique_ptr<HttpServer> StartOrDie(HttpServer::Options options,
                                       HttpServer::Handler handler) {
  options.listen = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(std::move(options), std::move(handler));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TEST(HttpServerTest, AnswersKeepAliveAndPipelinedRequestsInOrder) {
  auto server = StartOrDie({}, Echo());
  Client client(server->port());
  client.Send(Post("/a", "one") + Post("/b", "two"));
  const std::string first = client.Receive();
  EXPECT_TRUE(absl::StartsWith(first, "HTTP/1.1 200 OK\r\n")) << first;
  EXPECT_TRUE(absl::EndsWith(first, "POST /a one")) << first;
  EXPECT_TRUE(absl::EndsWith(client.Receive(), "POST /b two"));
  client.Send("GET /c?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n");
  const std::string last = client.Receive();
  EXPECT_TRUE(absl::StrContains(last, "Connection: close")) << last;
  EXPECT_TRUE(absl::EndsWith(last, "GET /c ")) << last;
  EXPECT_TRUE(client.ClosedByServer());
}

TEST(HttpServerTest, AnAnswerMayComeLaterFromAnotherThread) {
  absl::Mutex mu;
  std::vector<Responder> waiting;
  auto server =
      StartOrDie({}, [&](const HttpRequest&, const Responder& responder) {
        absl::MutexLock lock(&mu);
        waiting.push_back(responder);
      });
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 200; ++i) {
    clients.push_back(std::make_unique<Client>(server->port()));
    clients.back()->Send(Post("/wait", ""));
  }
  // 200 requests wait at once on the server's one thread.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline) {
    absl::MutexLock lock(&mu);
    if (waiting.size() == 200) break;
    mu.Unlock();
    absl::SleepFor(absl::Milliseconds(10));
    mu.Lock();
  }
  std::thread answerer([&] {
    absl::MutexLock lock(&mu);
    for (Responder& r : waiting) r.Send(Text("late"));
  });
  answerer.join();
  for (auto& client : clients) {
    EXPECT_TRUE(absl::EndsWith(client->Receive(), "late"));
  }
}

TEST(HttpServerTest, ThousandsOfPipelinedRequestsAreAllAnswered) {
  auto server = StartOrDie({}, Echo());
  Client client(server->port());
  std::string burst;
  constexpr int kRequests = 5000;
  for (int i = 0; i < kRequests; ++i) {
    absl::StrAppend(&burst, "GET /p", i, " HTTP/1.1\r\n\r\n");
  }
  std::thread sender([&] { client.Send(burst); });
  int answered = 0;
  for (int i = 0; i < kRequests; ++i) {
    if (absl::EndsWith(client.Receive(), absl::StrCat("GET /p", i, " "))) {
      ++answered;
    }
  }
  sender.join();
  EXPECT_EQ(answered, kRequests);
}

TEST(HttpServerTest, ReadingPausesAtTheByteBudgetAndResumes) {
  HttpServer::Options options;
  options.max_buffered_bytes = 100'000;
  auto server = StartOrDie(
      options, [](const HttpRequest& request, const Responder& responder) {
        responder.Send(Text(absl::StrCat(request.body.size())));
      });
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::thread> senders;
  for (int i = 0; i < 4; ++i) {
    clients.push_back(std::make_unique<Client>(server->port()));
    senders.emplace_back([client = clients.back().get()] {
      client->Send(Post("/b", std::string(60'000, 'b')));
    });
  }
  for (auto& client : clients) {
    EXPECT_TRUE(absl::EndsWith(client->Receive(), "60000"));
  }
  for (std::thread& sender : senders) sender.join();
}

TEST(HttpServerTest, ReadsChunkedBodies) {
  auto server = StartOrDie({}, Echo());
  Client client(server->port());
  client.Send(
      "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3;ext=1\r\nabc\r\n0A\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n");
  EXPECT_TRUE(absl::EndsWith(client.Receive(), "POST /c abc0123456789"));
}

TEST(HttpServerTest, RefusesAnOversizeBodyBeforeReadingIt) {
  HttpServer::Options options;
  options.max_body_bytes = 1000;
  std::atomic<int> handled{0};
  auto server =
      StartOrDie(options, [&](const HttpRequest&, const Responder& responder) {
        ++handled;
        responder.Send({});
      });
  Client client(server->port());
  // Only the head is sent: the refusal cannot have waited for the body.
  client.Send("POST /big HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n");
  const std::string response = client.Receive();
  EXPECT_TRUE(absl::StartsWith(response, "HTTP/1.1 413 ")) << response;
  EXPECT_TRUE(client.ClosedByServer());

  // A client that goes on sending its body still reads the refusal (the
  // server lingers instead of resetting the connection).
  Client sending(server->port());
  sending.Send("POST /big HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n");
  const std::string megabyte(1 << 20, 'x');
  for (int i = 0; i < 4; ++i) sending.SendIgnoringErrors(megabyte);
  EXPECT_TRUE(absl::StartsWith(sending.Receive(), "HTTP/1.1 413 "));

  Client chunked(server->port());
  chunked.Send("POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
               std::string("7D0\r\n") + std::string(2000, 'x') + "\r\n");
  EXPECT_TRUE(absl::StartsWith(chunked.Receive(), "HTTP/1.1 413 "));
  EXPECT_EQ(handled.load(), 0);
  EXPECT_GE(server->dropped(), 2u);
}

TEST(HttpServerTest, RefusesMalformedAndAmbiguousRequests) {
  auto server = StartOrDie({}, Echo());
  for (const std::string& bad : {
           std::string("GARBAGE\r\n\r\n"),
           std::string("GET /x HTTP/2.0\r\n\r\n"),
           std::string("POST /x HTTP/1.1\r\nContent-Length: 1\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n"),
           std::string("POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
           std::string("POST /x HTTP/1.1\r\nContent-Length: 1\r\n"
                       "Content-Length: 2\r\n\r\n"),
           std::string("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
           std::string("GET /x HTTP/1.1\r\n folded: x\r\n\r\n"),
           std::string("GET /x HTTP/1.1\r\nTab\t: x\r\n\r\n"),
           std::string("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "+5\r\nhello\r\n0\r\n\r\n"),
       }) {
    Client client(server->port());
    client.Send(bad);
    const std::string response = client.Receive();
    EXPECT_TRUE(absl::StartsWith(response, "HTTP/1.1 4") ||
                absl::StartsWith(response, "HTTP/1.1 50"))
        << bad << " -> " << response;
    EXPECT_TRUE(client.ClosedByServer()) << bad;
  }
  Client huge(server->port());
  huge.Send("GET /x HTTP/1.1\r\nX: " + std::string(100'000, 'a') + "\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(huge.Receive(), "HTTP/1.1 431 "));
}

TEST(HttpServerTest, ASlowRequestTimesOutAndAnIdleConnectionCloses) {
  HttpServer::Options options;
  options.request_timeout = absl::Milliseconds(300);
  options.idle_timeout = absl::Milliseconds(300);
  auto server = StartOrDie(options, Echo());
  Client slow(server->port());
  slow.Send("POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
  EXPECT_TRUE(absl::StartsWith(slow.Receive(), "HTTP/1.1 408 "));
  Client idle(server->port());
  EXPECT_TRUE(idle.ClosedByServer());
  // Meanwhile the server answers others.
  Client fine(server->port());
  fine.Send(Post("/ok", ""));
  EXPECT_TRUE(absl::StartsWith(fine.Receive(), "HTTP/1.1 200 "));
}

TEST(HttpServerTest, AClosedConnectionCancelsItsWaitingRequest) {
  absl::Notification cancelled;
  absl::Notification handled;
  std::optional<Responder> kept;
  auto server =
      StartOrDie({}, [&](const HttpRequest&, const Responder& responder) {
        responder.OnCancel([&] { cancelled.Notify(); });
        kept = responder;
        handled.Notify();
      });
  {
    Client client(server->port());
    client.Send(Post("/wait", ""));
    ASSERT_TRUE(handled.WaitForNotificationWithTimeout(absl::Seconds(5)));
  }
  EXPECT_TRUE(cancelled.WaitForNotificationWithTimeout(absl::Seconds(5)));
  kept->Send({});  // Nobody to answer: harmless.
}

TEST(HttpServerTest, AtMostMaxConnectionsAreOpen) {
  HttpServer::Options options;
  options.max_connections = 3;
  auto server = StartOrDie(options, Echo());
  std::vector<std::unique_ptr<Client>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<Client>(server->port()));
    held.back()->Send(Post("/x", ""));
    held.back()->Receive();
  }
  Client refused(server->port());
  EXPECT_TRUE(refused.ClosedByServer());
  held.pop_back();
  absl::SleepFor(absl::Milliseconds(300));
  Client admitted(server->port());
  admitted.Send(Post("/y", ""));
  EXPECT_TRUE(absl::EndsWith(admitted.Receive(), "POST /y "));
}

TEST(HttpServerTest, DrainWritesAnswersOwedAndRefusesNewConnections) {
  std::optional<Responder> kept;
  absl::Notification handled;
  auto server =
      StartOrDie({}, [&](const HttpRequest&, const Responder& responder) {
        kept = responder;
        handled.Notify();
      });
  const int port = server->port();
  Client waiting(port);
  waiting.Send(Post("/wait", ""));
  ASSERT_TRUE(handled.WaitForNotificationWithTimeout(absl::Seconds(5)));
  std::thread answer([&] {
    absl::SleepFor(absl::Milliseconds(300));
    kept->Send(Text("drained"));
  });
  server->Drain(absl::Seconds(5));
  answer.join();
  EXPECT_TRUE(absl::EndsWith(waiting.Receive(), "drained"));
  Client late(port);
  EXPECT_FALSE(late.connected());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

TEST(HttpServerTest, ServesTlsAndPassesTheVerifiedClientCertificate) {
  testing::TempDir dir;
  testing::TestPki pki(dir.path());
  absl::StatusOr<testing::CertFiles> ca = pki.MakeCa("ca");
  ASSERT_TRUE(ca.ok()) << ca.status();
  absl::StatusOr<testing::CertFiles> server_cert =
      pki.MakeLeaf(*ca, "server", "server", {"IP:127.0.0.1"});
  absl::StatusOr<testing::CertFiles> client_cert =
      pki.MakeLeaf(*ca, "client", "client", {"URI:spiffe://test/client"});
  ASSERT_TRUE(server_cert.ok() && client_cert.ok());
  absl::StatusOr<std::shared_ptr<SSL_CTX>> context =
      MakeServerTlsContext(ReadFile(server_cert->cert),
                           ReadFile(server_cert->key), ReadFile(ca->cert));
  ASSERT_TRUE(context.ok()) << context.status();
  EXPECT_FALSE(MakeServerTlsContext(ReadFile(server_cert->cert),
                                    ReadFile(client_cert->key), "")
                   .ok());

  HttpServer::Options options;
  options.tls = [context = *context] { return context; };
  auto server = StartOrDie(
      options, [](const HttpRequest& request, const Responder& responder) {
        responder.Send(Text(
            absl::StrCat(request.tls, " ", !request.peer_certificate.empty())));
      });

  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> client_context(
      SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  ASSERT_EQ(SSL_CTX_load_verify_locations(client_context.get(),
                                          ca->cert.c_str(), nullptr),
            1);
  ASSERT_EQ(SSL_CTX_use_certificate_chain_file(client_context.get(),
                                               client_cert->cert.c_str()),
            1);
  ASSERT_EQ(
      SSL_CTX_use_PrivateKey_file(client_context.get(),
                                  client_cert->key.c_str(), SSL_FILETYPE_PEM),
      1);
  SSL_CTX_set_verify(client_context.get(), SSL_VERIFY_PEER, nullptr);
  Client tcp(server->port());
  int fd = -1;
  {
    // The Client's socket, driven by OpenSSL.
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(server->port()));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_EQ(
        connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  }
  SSL* ssl = SSL_new(client_context.get());
  SSL_set_fd(ssl, fd);
  ASSERT_EQ(SSL_connect(ssl), 1);
  const std::string request = Post("/tls", "");
  ASSERT_EQ(SSL_write(ssl, request.data(), static_cast<int>(request.size())),
            static_cast<int>(request.size()));
  std::string response;
  char buffer[4096];
  while (!absl::EndsWith(response, "1 1")) {
    const int n = SSL_read(ssl, buffer, sizeof(buffer));
    if (n <= 0) break;
    response.append(buffer, static_cast<size_t>(n));
  }
  EXPECT_TRUE(absl::EndsWith(response, "1 1")) << response;
  SSL_free(ssl);
  close(fd);

  // Without a client certificate the handshake fails.
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> anonymous(
      SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  const int fd2 = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server->port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(
      connect(fd2, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  SSL* refused = SSL_new(anonymous.get());
  SSL_set_fd(refused, fd2);
  const int connected = SSL_connect(refused);
  // TLS 1.3 reports the refusal on the first read.
  const std::string get = Post("/x", "");
  SSL_write(refused, get.data(), static_cast<int>(get.size()));
  EXPECT_TRUE(connected != 1 || SSL_read(refused, buffer, sizeof(buffer)) <= 0);
  SSL_free(refused);
  close(fd2);
}

}  // namespace
}  // namespace idem::server
