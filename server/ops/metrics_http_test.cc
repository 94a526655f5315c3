#include "server/ops/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace idem::server {
namespace {

// A connected loopback socket, closed on destruction.
class Socket {
 public:
  explicit Socket(int port) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address),
                         sizeof(address)) == 0;
    timeval timeout{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  }
  ~Socket() { close(fd_); }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  bool connected() const { return connected_; }
  void Send(const std::string& data) {
    ASSERT_EQ(send(fd_, data.data(), data.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(data.size()));
  }
  // Everything until the server closes the connection.
  std::string ReadAll() {
    std::string out;
    char buffer[4096];
    ssize_t n;
    while ((n = recv(fd_, buffer, sizeof(buffer), 0)) > 0) {
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  int fd_;
  bool connected_ = false;
};

std::string Request(int port, const std::string& request) {
  Socket socket(port);
  EXPECT_TRUE(socket.connected());
  socket.Send(request);
  return socket.ReadAll();
}

std::string Get(int port, const std::string& path) {
  return Request(port,
                 absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: x\r\n\r\n"));
}

class MetricsHttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
        MetricsHttpServer::Start(
            "127.0.0.1:0", [] { return std::string("idem_up 1\n"); },
            [this] { return serving_.load(); });
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = std::move(*started);
    ASSERT_GT(server_->port(), 0);
  }

  std::atomic<bool> serving_{true};
  std::unique_ptr<MetricsHttpServer> server_;
};

TEST_F(MetricsHttpServerTest, MetricsAreTheRenderedTextPlusTheDropCounter) {
  const std::string reply = Get(server_->port(), "/metrics");
  EXPECT_TRUE(absl::StartsWith(reply, "HTTP/1.1 200 OK\r\n")) << reply;
  EXPECT_TRUE(absl::StrContains(
      reply, "Content-Type: text/plain; version=0.0.4; charset=utf-8"));
  EXPECT_TRUE(absl::StrContains(reply, "Connection: close"));
  EXPECT_TRUE(absl::StrContains(reply, "\r\n\r\nidem_up 1\n"));
  EXPECT_TRUE(
      absl::StrContains(reply, "idem_http_connections_dropped_total 0\n"));
}

TEST_F(MetricsHttpServerTest, HealthzFollowsServing) {
  EXPECT_TRUE(
      absl::StartsWith(Get(server_->port(), "/healthz"), "HTTP/1.1 200 OK"));
  EXPECT_TRUE(absl::EndsWith(Get(server_->port(), "/healthz"), "SERVING\n"));
  serving_ = false;
  const std::string reply = Get(server_->port(), "/healthz?verbose=1");
  EXPECT_TRUE(absl::StartsWith(reply, "HTTP/1.1 503 Service Unavailable"))
      << reply;
  EXPECT_TRUE(absl::EndsWith(reply, "\r\n\r\nNOT_SERVING\n"));
}

TEST_F(MetricsHttpServerTest, HeadHasNoBodyOtherMethodsAndPathsAreRefused) {
  const std::string head =
      Request(server_->port(), "HEAD /healthz HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(head, "HTTP/1.1 200 OK")) << head;
  EXPECT_TRUE(absl::StrContains(head, "Content-Length: 8\r\n"));
  EXPECT_TRUE(absl::EndsWith(head, "\r\n\r\n"));

  EXPECT_TRUE(absl::StartsWith(
      Request(server_->port(), "POST /metrics HTTP/1.1\r\n\r\n"),
      "HTTP/1.1 405 "));
  EXPECT_TRUE(absl::StartsWith(Get(server_->port(), "/"), "HTTP/1.1 404 "));
  EXPECT_TRUE(absl::StartsWith(Request(server_->port(), "GARBAGE\r\n\r\n"),
                               "HTTP/1.1 400 "));
}

TEST_F(MetricsHttpServerTest, ARequestSentInPiecesIsAnswered) {
  Socket socket(server_->port());
  ASSERT_TRUE(socket.connected());
  socket.Send("GET /heal");
  usleep(50'000);
  socket.Send("thz HTTP/1.1\r\n");
  usleep(50'000);
  socket.Send("\r\n");
  EXPECT_TRUE(absl::StartsWith(socket.ReadAll(), "HTTP/1.1 200 OK"));
}

TEST_F(MetricsHttpServerTest, AnOversizeRequestIsRefused) {
  const std::string reply = Request(
      server_->port(),
      absl::StrCat("GET /metrics HTTP/1.1\r\nX-Pad: ",
                   std::string(MetricsHttpServer::kMaxRequestBytes, 'a'),
                   "\r\n\r\n"));
  EXPECT_TRUE(absl::StartsWith(reply, "HTTP/1.1 431 ")) << reply;
}

TEST_F(MetricsHttpServerTest, IdleConnectionsCannotLockProbesOut) {
  // More silent connections than the server keeps: the oldest make room,
  // and a probe behind them is still answered at once.
  std::vector<std::unique_ptr<Socket>> idle;
  for (size_t i = 0; i < MetricsHttpServer::kMaxConnections + 8; ++i) {
    idle.push_back(std::make_unique<Socket>(server_->port()));
    ASSERT_TRUE(idle.back()->connected());
  }
  const absl::Time start = absl::Now();
  EXPECT_TRUE(
      absl::StartsWith(Get(server_->port(), "/healthz"), "HTTP/1.1 200 OK"));
  EXPECT_LT(absl::Now() - start, MetricsHttpServer::kRequestTimeout);
  EXPECT_GE(server_->dropped(), 9u);
}

TEST(MetricsHttpServerStartTest, ABadOrBusyAddressIsAnError) {
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> bad =
      MetricsHttpServer::Start(
          "127.0.0.1:99999", [] { return std::string(); }, [] { return true; });
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "127.0.0.1:99999"));

  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> first =
      MetricsHttpServer::Start(
          "127.0.0.1:0", [] { return std::string(); }, [] { return true; });
  ASSERT_TRUE(first.ok());
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> second =
      MetricsHttpServer::Start(
          absl::StrCat("127.0.0.1:", (*first)->port()),
          [] { return std::string(); }, [] { return true; });
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(second.status().message(), "address in use"))
      << second.status();
}

}  // namespace
}  // namespace idem::server
