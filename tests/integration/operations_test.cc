// Running Idem as infrastructure: reflection (what grpcurl uses), health,
// the metrics endpoint, the Admin service and the logs, all against the real
// idem-server.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "idem/v1/admin.grpc.pb.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/temp_dir.h"

namespace idem {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class OperationsTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }
  void Start(std::vector<std::string> flags) {
    server_ = std::make_unique<testing::ServerProcess>(std::move(flags));
    ASSERT_TRUE(server_->Start().ok()) << server_->log();
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Idempotency::NewStub(channel_);
    admin_ = v1::Admin::NewStub(channel_);
  }
  void TearDown() override {
    if (HasFailure())
      std::cerr << "--- idem-server log ---\n" << server_->log();
  }

  static std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return context;
  }

  v1::BeginResponse Begin(const std::string& ns, const std::string& key,
                          int lease_seconds = 30) {
    v1::BeginRequest request;
    request.set_namespace_(ns);
    request.set_key(key);
    request.mutable_lease()->set_seconds(lease_seconds);
    v1::BeginResponse response;
    grpc::Status status = stub_->Begin(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  grpc::Status Complete(const std::string& ns, const std::string& key,
                        uint64_t token, const std::string& body = "ok") {
    v1::CompleteRequest request;
    request.set_namespace_(ns);
    request.set_key(key);
    request.set_token(token);
    request.mutable_result()->set_code(200);
    request.mutable_result()->set_body(body);
    v1::CompleteResponse response;
    return stub_->Complete(Context().get(), request, &response);
  }

  std::string Scrape() {
    httplib::Client http("127.0.0.1", server_->metrics_port());
    auto response = http.Get("/metrics");
    EXPECT_TRUE(response) << "no answer from the metrics endpoint";
    if (!response) return "";
    EXPECT_EQ(response->status, 200);
    EXPECT_NE(response->get_header_value("Content-Type").find("text/plain"),
              std::string::npos);
    return response->body;
  }

  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Idempotency::Stub> stub_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

// --- Reflection -------------------------------------------------------------

TEST_F(OperationsTest, ReflectionListsAndDescribesEveryService) {
  auto reflection =
      grpc::reflection::v1alpha::ServerReflection::NewStub(channel_);
  grpc::ClientContext context;
  auto stream = reflection->ServerReflectionInfo(&context);

  grpc::reflection::v1alpha::ServerReflectionRequest list;
  list.set_list_services("");
  ASSERT_TRUE(stream->Write(list));
  grpc::reflection::v1alpha::ServerReflectionResponse listed;
  ASSERT_TRUE(stream->Read(&listed));
  std::set<std::string> services;
  for (const auto& s : listed.list_services_response().service()) {
    services.insert(s.name());
  }
  for (const char* expected :
       {"idem.v1.Idempotency", "idem.v1.Admin", "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection"}) {
    EXPECT_EQ(services.count(expected), 1u) << expected;
  }

  // What `grpcurl describe` does: fetch the file defining a symbol (with its
  // dependencies) and build descriptors from it.
  google::protobuf::DescriptorPool pool;
  for (const char* symbol :
       {"idem.v1.Idempotency", "idem.v1.Admin", "grpc.health.v1.Health"}) {
    grpc::reflection::v1alpha::ServerReflectionRequest request;
    request.set_file_containing_symbol(symbol);
    ASSERT_TRUE(stream->Write(request));
    grpc::reflection::v1alpha::ServerReflectionResponse response;
    ASSERT_TRUE(stream->Read(&response));
    ASSERT_TRUE(response.has_file_descriptor_response())
        << symbol << ": " << response.error_response().error_message();
    // Dependencies come too; add them in an order the pool accepts.
    std::vector<google::protobuf::FileDescriptorProto> files;
    for (const std::string& bytes :
         response.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(bytes));
      files.push_back(file);
    }
    for (size_t round = 0; round < files.size(); ++round) {
      for (const auto& file : files) {
        if (pool.FindFileByName(file.name()) != nullptr) continue;
        bool ready = true;
        for (const std::string& dep : file.dependency()) {
          ready = ready && pool.FindFileByName(dep) != nullptr;
        }
        if (ready) pool.BuildFile(file);
      }
    }
    EXPECT_NE(pool.FindServiceByName(symbol), nullptr) << symbol;
  }
  stream->WritesDone();
  const google::protobuf::ServiceDescriptor* idem =
      pool.FindServiceByName("idem.v1.Idempotency");
  ASSERT_NE(idem, nullptr);
  for (const char* method :
       {"Begin", "Complete", "Release", "Extend", "Lookup", "Checkpoint"}) {
    EXPECT_NE(idem->FindMethodByName(method), nullptr) << method;
  }
  EXPECT_NE(pool.FindMessageTypeByName("idem.v1.BeginRequest")
                ->FindFieldByName("fingerprint"),
            nullptr);
}

// --- Health -----------------------------------------------------------------

TEST_F(OperationsTest, HealthIsServingThenNotServingWhileDraining) {
  Start({"--drain-delay=2s"});
  auto health = grpc::health::v1::Health::NewStub(channel_);
  HealthCheckResponse response;
  ASSERT_TRUE(
      health->Check(Context().get(), HealthCheckRequest(), &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  grpc::ClientContext watch_context;
  auto watch = health->Watch(&watch_context, HealthCheckRequest());
  HealthCheckResponse watched;
  ASSERT_TRUE(watch->Read(&watched));
  EXPECT_EQ(watched.status(), HealthCheckResponse::SERVING);

  ASSERT_EQ(server_->Signal(SIGTERM), 0);
  ASSERT_TRUE(watch->Read(&watched));
  EXPECT_EQ(watched.status(), HealthCheckResponse::NOT_SERVING);
  // Still answering during the drain delay, but not serving.
  ASSERT_TRUE(
      health->Check(Context().get(), HealthCheckRequest(), &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  watch_context.TryCancel();
  EXPECT_EQ(server_->Wait(), 0);
}

// --- Metrics ----------------------------------------------------------------

// Parses the Prometheus text format strictly enough to catch a malformed
// line: "name{labels} value" or "name value", and # HELP/TYPE comments.
std::map<std::string, double> ParseMetrics(const std::string& text) {
  static const std::regex kSample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? (-?[0-9.eE+-]+|\+Inf|NaN)$)");
  static const std::regex kComment(
      R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$)");
  std::map<std::string, double> samples;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      EXPECT_TRUE(std::regex_match(line, kComment)) << line;
      continue;
    }
    EXPECT_TRUE(std::regex_match(line, kSample)) << line;
    const size_t space = line.rfind(' ');
    double value = 0;
    EXPECT_TRUE(absl::SimpleAtod(line.substr(space + 1), &value)) << line;
    samples[line.substr(0, space)] = value;
  }
  return samples;
}

TEST_F(OperationsTest, MetricsCountRpcsByOutcomeAndTimeThem) {
  v1::BeginResponse first = Begin("shop", "m1");
  Begin("shop", "m1");  // IN_PROGRESS.
  ASSERT_TRUE(Complete("shop", "m1", first.lease().token()).ok());
  Begin("shop", "m1");  // COMPLETED.
  v1::BeginRequest bad;
  v1::BeginResponse ignored;
  EXPECT_FALSE(stub_->Begin(Context().get(), bad, &ignored).ok());
  v1::BeginResponse lapsing = Begin("shop", "m2", 1);
  absl::SleepFor(absl::Milliseconds(1100));
  Begin("shop", "m2");  // Takeover.

  std::map<std::string, double> m = ParseMetrics(Scrape());
  EXPECT_EQ(m["idem_rpc_total{method=\"Begin\",outcome=\"ACQUIRED\"}"], 3);
  EXPECT_EQ(m["idem_rpc_total{method=\"Begin\",outcome=\"IN_PROGRESS\"}"], 1);
  EXPECT_EQ(m["idem_rpc_total{method=\"Begin\",outcome=\"COMPLETED\"}"], 1);
  EXPECT_EQ(m["idem_rpc_total{method=\"Begin\",outcome=\"INVALID_ARGUMENT\"}"],
            1);
  EXPECT_EQ(m["idem_rpc_total{method=\"Complete\",outcome=\"OK\"}"], 1);
  EXPECT_EQ(m["idem_rpc_duration_seconds_count{method=\"Begin\"}"], 6);
  EXPECT_EQ(m["idem_rpc_duration_seconds_bucket{method=\"Begin\",le=\"+Inf\"}"],
            6);
  EXPECT_GT(m["idem_rpc_duration_seconds_sum{method=\"Begin\"}"], 0);
  EXPECT_LE(
      m["idem_rpc_duration_seconds_bucket{method=\"Begin\",le=\"0.001\"}"],
      m["idem_rpc_duration_seconds_bucket{method=\"Begin\",le=\"0.01\"}"]);
  EXPECT_EQ(m["idem_lease_takeovers_total"], 1);
  EXPECT_EQ(m.count("idem_parked_waiters"), 1u);
  EXPECT_GE(m["idem_keys_stored"], 2);
  EXPECT_GT(m["idem_disk_bytes"], 0);
  EXPECT_EQ(m.count("idem_expired_dropped_total"), 1u);
}

TEST_F(OperationsTest, MetricsShowParkedWaiters) {
  Begin("shop", "w1");
  std::thread waiter([&] {
    v1::BeginRequest request;
    request.set_namespace_("shop");
    request.set_key("w1");
    request.mutable_wait()->set_seconds(2);
    v1::BeginResponse response;
    stub_->Begin(Context().get(), request, &response);
  });
  absl::SleepFor(absl::Milliseconds(400));
  std::map<std::string, double> m = ParseMetrics(Scrape());
  EXPECT_EQ(m["idem_parked_waiters"], 1);
  waiter.join();
}

// --- Admin ------------------------------------------------------------------

TEST_F(OperationsTest, AdminDeleteForgetsAKeyAndLogsTheReason) {
  v1::BeginResponse begun = Begin("shop", "d1");
  ASSERT_TRUE(Complete("shop", "d1", begun.lease().token()).ok());
  v1::DeleteRequest request;
  request.set_namespace_("shop");
  request.set_key("d1");
  v1::DeleteResponse response;
  grpc::Status no_reason = admin_->Delete(Context().get(), request, &response);
  EXPECT_EQ(no_reason.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(no_reason.error_message().find("reason"), std::string::npos);

  request.set_reason("customer asked to retry order d1 (ticket 4711)");
  ASSERT_TRUE(admin_->Delete(Context().get(), request, &response).ok());
  EXPECT_TRUE(response.existed());
  ASSERT_TRUE(admin_->Delete(Context().get(), request, &response).ok());
  EXPECT_FALSE(response.existed());
  v1::BeginResponse again = Begin("shop", "d1");
  EXPECT_EQ(again.outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(again.lease().token(), begun.lease().token());
  EXPECT_NE(
      server_->log().find("event=admin_delete ns=shop key=d1 existed=true "
                          "reason=\"customer asked to retry order d1 "
                          "(ticket 4711)\""),
      std::string::npos);
}

TEST_F(OperationsTest, AdminForceReleaseFreesAStuckKey) {
  v1::BeginResponse stuck = Begin("shop", "f1");
  v1::ForceReleaseRequest request;
  request.set_namespace_("shop");
  request.set_key("f1");
  request.set_reason("worker host lost");
  v1::ForceReleaseResponse response;
  ASSERT_TRUE(admin_->ForceRelease(Context().get(), request, &response).ok());
  EXPECT_GT(response.fencing_token(), stuck.lease().token());
  EXPECT_EQ(Complete("shop", "f1", stuck.lease().token()).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  v1::BeginResponse next = Begin("shop", "f1");
  EXPECT_EQ(next.outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(next.lease().token(), response.fencing_token());
  ASSERT_TRUE(Complete("shop", "f1", next.lease().token()).ok());
  EXPECT_EQ(
      admin_->ForceRelease(Context().get(), request, &response).error_code(),
      grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(server_->log().find("event=admin_force_release ns=shop key=f1"),
            std::string::npos);
}

TEST_F(OperationsTest, AdminListPagesAndFindsStuckWorkAndStatsCount) {
  for (int i = 0; i < 12; ++i) {
    const std::string key = "done-" + std::to_string(10 + i);
    ASSERT_TRUE(Complete("shop", key, Begin("shop", key).lease().token()).ok());
  }
  for (int i = 0; i < 3; ++i) Begin("shop", "stuck-" + std::to_string(i), 1);
  for (int i = 0; i < 2; ++i) Begin("shop", "busy-" + std::to_string(i));
  Begin("other", "x");
  absl::SleepFor(absl::Milliseconds(1100));

  std::vector<std::string> all;
  v1::ListRequest list;
  list.set_namespace_("shop");
  list.set_page_size(5);
  for (int page = 0; page < 10; ++page) {
    v1::ListResponse response;
    ASSERT_TRUE(admin_->List(Context().get(), list, &response).ok());
    for (const auto& k : response.keys()) all.push_back(k.key());
    if (response.next_page_token().empty()) break;
    list.set_page_token(response.next_page_token());
  }
  EXPECT_EQ(all.size(), 17u);

  v1::ListRequest stuck;
  stuck.set_namespace_("shop");
  stuck.set_state(v1::LookupResponse::STATE_IN_PROGRESS);
  stuck.set_lease_lapsed(true);
  v1::ListResponse stuck_keys;
  ASSERT_TRUE(admin_->List(Context().get(), stuck, &stuck_keys).ok());
  ASSERT_EQ(stuck_keys.keys_size(), 3);
  EXPECT_EQ(stuck_keys.keys(0).key(), "stuck-0");
  EXPECT_TRUE(stuck_keys.keys(0).lease_lapsed());

  v1::ListRequest bad;
  bad.set_namespace_("shop");
  bad.set_page_size(5000);
  v1::ListResponse ignored;
  EXPECT_EQ(admin_->List(Context().get(), bad, &ignored).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::StatsResponse stats;
  ASSERT_TRUE(admin_->Stats(Context().get(), v1::StatsRequest(), &stats).ok());
  ASSERT_EQ(stats.namespaces_size(), 2);
  EXPECT_EQ(stats.namespaces(0).namespace_(), "other");
  EXPECT_EQ(stats.namespaces(1).namespace_(), "shop");
  EXPECT_EQ(stats.namespaces(1).completed(), 12u);
  EXPECT_EQ(stats.namespaces(1).in_progress(), 5u);
  EXPECT_EQ(stats.namespaces(1).lease_lapsed(), 3u);
  EXPECT_GT(stats.disk_bytes(), 0u);
}

// --- Logs -------------------------------------------------------------------

TEST_F(OperationsTest, LogsNameTakeoversAndNeverContainBodies) {
  v1::BeginResponse lapsing = Begin("shop", "l1", 1);
  absl::SleepFor(absl::Milliseconds(1100));
  v1::BeginResponse taker = Begin("shop", "l1");
  ASSERT_TRUE(
      Complete("shop", "l1", taker.lease().token(), "SECRET-CARD-4242").ok());
  EXPECT_EQ(server_->Terminate(), 0);
  const std::string log = server_->log();
  EXPECT_NE(log.find("event=lease_takeover ns=shop key=l1 token=" +
                     std::to_string(taker.lease().token()) + " attempt=2"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("event=starting"), std::string::npos);
  EXPECT_NE(log.find("event=serving"), std::string::npos);
  EXPECT_NE(log.find("event=shutdown_complete"), std::string::npos);
  EXPECT_EQ(log.find("SECRET-CARD"), std::string::npos);
  // Every line is key=value, starting with the time.
  std::istringstream lines(log);
  std::string line;
  while (std::getline(lines, line)) {
    EXPECT_EQ(line.rfind("ts=", 0), 0u) << line;
    EXPECT_NE(line.find(" level="), std::string::npos) << line;
  }
}

TEST_F(OperationsTest, ASecondServerCannotListenOnTheSamePort) {
  // With SO_REUSEPORT two servers with separate stores would split the
  // traffic and run the same key's work twice.
  testing::ServerProcess second(
      {"--listen=" + server_->address(), "--metrics-listen="});
  absl::Status started = second.Start();
  EXPECT_FALSE(started.ok());
  EXPECT_NE(second.log().find("event=listen_failed"), std::string::npos)
      << second.log();
}

TEST_F(OperationsTest, InvalidConfigurationFailsAtStartWithOneLine) {
  testing::ServerProcess bad({"--max-lease=forever"});
  absl::Status started = bad.Start();
  EXPECT_FALSE(started.ok());
  EXPECT_NE(bad.log().find("idem-server: invalid --max-lease=\"forever\""),
            std::string::npos)
      << bad.log();
}

// --- Flags and ports
// ----------------------------------------------------------

TEST_F(OperationsTest, AddressFlagsRefuseBadPortsAndHostsAndTouchNothing) {
  testing::TempDir dir;
  const std::string data_dir = dir.path() + "/data";
  struct Case {
    std::vector<std::string> flags;
    std::map<std::string, std::string> env;
    std::string expected;  // In the one line on stderr.
  };
  const std::vector<Case> cases = {
      {{"--listen=127.0.0.1:99999"}, {}, "--listen=\"127.0.0.1:99999\""},
      {{}, {{"IDEM_LISTEN", "127.0.0.1:99999"}}, "$IDEM_LISTEN"},
      {{"--listen=:50051"}, {}, "host is empty"},
      {{"--listen=127.0.0.1"}, {}, "expected HOST:PORT"},
      {{"--listen=127.0.0.1:-1"}, {}, "port \"-1\""},
      {{"--listen=bad host!:50051"}, {}, "not a host name"},
      {{"--listen=::1:50051"}, {}, "needs brackets"},
      {{"--metrics-listen=127.0.0.1:65536"}, {}, "--metrics-listen="},
      {{"--store=redis-cluster://127.0.0.1:7000,127.0.0.1:99999"},
       {},
       "Redis node \"127.0.0.1:99999\""},
      {{"--store=redis-cluster://127.0.0.1:0"}, {}, "port 0"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {IDEM_SERVER_BINARY,
                                     "--data-dir=" + data_dir};
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    testing::CommandResult result = testing::RunCommand(argv, c.env);
    SCOPED_TRACE(absl::StrJoin(argv, " "));
    EXPECT_EQ(result.exit_code, 2) << result.err;
    EXPECT_NE(result.err.find("idem-server: "), std::string::npos)
        << result.err;
    EXPECT_NE(result.err.find(c.expected), std::string::npos) << result.err;
    EXPECT_FALSE(std::filesystem::exists(data_dir))
        << "a refused flag created the data directory";
  }
  // Bracketed IPv6 and port 0 (any free port) stay valid.
  testing::ServerProcess ipv6({"--metrics-listen=[::1]:0"});
  EXPECT_TRUE(ipv6.Start().ok()) << ipv6.log();
}

TEST_F(OperationsTest, ASecondServerCannotShareTheMetricsPort) {
  // With SO_REUSEPORT the second server started, and probes and scrapes
  // alternated between the two processes.
  testing::ServerProcess second({"--metrics-listen=127.0.0.1:" +
                                 std::to_string(server_->metrics_port())});
  EXPECT_FALSE(second.Start().ok());
  EXPECT_NE(second.log().find("event=metrics_listen_failed"), std::string::npos)
      << second.log();
  EXPECT_NE(second.log().find("address in use"), std::string::npos)
      << second.log();
  // The first server still answers every scrape.
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(Scrape().empty());
}

// --- The HTTP port under slow clients
// -----------------------------------------

// A TCP connection to the metrics port that sends `request` one byte at a
// time, every `pause`, until stopped or closed by the server.
class Trickler {
 public:
  Trickler(int port, absl::Duration pause) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address),
                         sizeof(address)) == 0;
    thread_ = std::thread([this, pause] {
      const std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
      for (char c : request) {
        if (stop_.WaitForNotificationWithTimeout(pause)) return;
        if (send(fd_, &c, 1, MSG_NOSIGNAL) != 1) return;
      }
    });
  }
  ~Trickler() {
    stop_.Notify();
    thread_.join();
    close(fd_);
  }
  bool connected() const { return connected_; }
  // The server closed the connection (end of stream or reset).
  bool closed_by_server() const {
    char c;
    const ssize_t n = recv(fd_, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  absl::Notification stop_;
  std::thread thread_;
};

TEST_F(OperationsTest, SlowHttpClientsCannotStarveProbes) {
  // 16 clients trickling a header byte every 2 s used to hold every
  // worker of cpp-httplib's pool: /healthz and /metrics stopped answering.
  std::vector<std::unique_ptr<Trickler>> slow;
  for (int i = 0; i < 16; ++i) {
    slow.push_back(
        std::make_unique<Trickler>(server_->metrics_port(), absl::Seconds(2)));
    ASSERT_TRUE(slow.back()->connected());
  }
  absl::SleepFor(absl::Milliseconds(200));
  absl::Duration slowest;
  for (int i = 0; i < 20; ++i) {
    const absl::Time start = absl::Now();
    httplib::Client http("127.0.0.1", server_->metrics_port());
    http.set_read_timeout(2, 0);
    auto probe = http.Get("/healthz");
    ASSERT_TRUE(probe) << "probe " << i << " got no answer";
    EXPECT_EQ(probe->status, 200);
    EXPECT_EQ(probe->body, "SERVING\n");
    slowest = std::max(slowest, absl::Now() - start);
  }
  std::printf("slowest of 20 probes with 16 slow clients: %s\n",
              absl::FormatDuration(slowest).c_str());
  EXPECT_LT(slowest, absl::Milliseconds(500));
  EXPECT_FALSE(Scrape().empty());

  // More slow clients than the port keeps: the oldest make room.
  for (int i = 0; i < 80; ++i) {
    slow.push_back(
        std::make_unique<Trickler>(server_->metrics_port(), absl::Seconds(2)));
  }
  absl::SleepFor(absl::Milliseconds(200));
  httplib::Client http("127.0.0.1", server_->metrics_port());
  http.set_read_timeout(2, 0);
  auto probe = http.Get("/healthz");
  ASSERT_TRUE(probe) << "no answer with 96 slow clients connected";
  EXPECT_EQ(probe->status, 200);
  // A request must arrive whole within 5 s: the first tricklers are cut.
  absl::SleepFor(absl::Seconds(6));
  EXPECT_TRUE(slow.front()->closed_by_server());
  std::map<std::string, double> m = ParseMetrics(Scrape());
  EXPECT_GE(m["idem_http_connections_dropped_total"], 32);
}

// --- Answers that say what happened -----------------------------------------

TEST_F(OperationsTest, UnparsableRequestBytesAreInvalidArgumentAndCounted) {
  grpc::GenericStub generic(channel_);
  const char garbage[] = "\xff\xff\xff\xff\x0f";
  for (const char* method :
       {"/idem.v1.Idempotency/Begin", "/idem.v1.Admin/List"}) {
    grpc::Slice slice(garbage, sizeof(garbage) - 1);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    absl::Notification done;
    grpc::Status status;
    generic.UnaryCall(&context, method, grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        status = std::move(s);
                        done.Notify();
                      });
    done.WaitForNotification();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method << ": " << status.error_message();
    EXPECT_NE(status.error_message().find("is not a valid idem.v1."),
              std::string::npos)
        << status.error_message();
  }
  std::map<std::string, double> m = ParseMetrics(Scrape());
  EXPECT_EQ(m[R"(idem_rpc_total{method="Begin",outcome="INVALID_ARGUMENT"})"],
            1);
  EXPECT_EQ(
      m[R"(idem_rpc_total{method="Admin.List",outcome="INVALID_ARGUMENT"})"],
      1);
}

TEST_F(OperationsTest, HealthAnswersForEachServiceName) {
  Start({"--drain-delay=2s"});
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const char* service : {"", "idem.v1.Idempotency", "idem.v1.Admin"}) {
    HealthCheckRequest request;
    request.set_service(service);
    HealthCheckResponse response;
    grpc::Status status = health->Check(Context().get(), request, &response);
    ASSERT_TRUE(status.ok()) << service << ": " << status.error_message();
    EXPECT_EQ(response.status(), HealthCheckResponse::SERVING) << service;
  }
  HealthCheckRequest unknown;
  unknown.set_service("idem.v1.Nope");
  HealthCheckResponse response;
  EXPECT_EQ(health->Check(Context().get(), unknown, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // Draining turns every name NOT_SERVING.
  server_->Signal(SIGTERM);
  HealthCheckRequest named;
  named.set_service("idem.v1.Idempotency");
  for (int i = 0; i < 50; ++i) {
    grpc::Status status = health->Check(Context().get(), named, &response);
    if (!status.ok() || response.status() == HealthCheckResponse::NOT_SERVING)
      break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(server_->Wait(), 0);
}

TEST_F(OperationsTest, AdminListsLastPageCarriesNoToken) {
  for (int i = 0; i < 4; ++i) {
    const std::string key = "done-" + std::to_string(i);
    ASSERT_TRUE(Complete("shop", key, Begin("shop", key).lease().token()).ok());
  }
  Begin("shop", "x-busy");  // Follows the completed keys, filtered out.
  v1::ListRequest list;
  list.set_namespace_("shop");
  list.set_state(v1::LookupResponse::STATE_COMPLETED);
  list.set_page_size(2);
  v1::ListResponse first;
  ASSERT_TRUE(admin_->List(Context().get(), list, &first).ok());
  ASSERT_EQ(first.keys_size(), 2);
  ASSERT_FALSE(first.next_page_token().empty());
  list.set_page_token(first.next_page_token());
  v1::ListResponse last;
  ASSERT_TRUE(admin_->List(Context().get(), list, &last).ok());
  ASSERT_EQ(last.keys_size(), 2);
  EXPECT_EQ(last.keys(1).key(), "done-3");
  EXPECT_EQ(last.next_page_token(), "");
}

TEST_F(OperationsTest, ATokenNeverIssuedIsNamedAsSuch) {
  const uint64_t token = Begin("shop", "t1").lease().token();
  v1::ExtendRequest extend;
  extend.set_namespace_("shop");
  extend.set_key("t1");
  extend.set_token(token + 1000);
  v1::ExtendResponse extended;
  grpc::Status status = stub_->Extend(Context().get(), extend, &extended);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("never issued for this key"),
            std::string::npos)
      << status.error_message();
  EXPECT_EQ(status.error_message().find("stale"), std::string::npos);
  EXPECT_NE(
      Complete("shop", "t1", token + 1000).error_message().find("never issued"),
      std::string::npos);
}

}  // namespace
}  // namespace idem
