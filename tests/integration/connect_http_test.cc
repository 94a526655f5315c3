// The Connect protocol door (--http-listen) against the real idem-server,
// over real HTTP: every RPC in JSON and in binary protobuf, errors and
// their statuses, limits, GET, waiting Begins woken over gRPC, TLS and the
// policy, and 1,000 waiting HTTP callers beside gRPC callers.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "idem/credentials.h"
#include "idem/v1/admin.grpc.pb.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_pki.h"

namespace idem {
namespace {

using v1::BeginResponse;
using v1::LookupResponse;

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(10));
  return context;
}

enum class Codec { kJson, kProto };

struct Reply {
  int status = 0;
  std::string content_type;
  std::string body;
};

// Connect calls over one HTTP connection (plaintext or TLS).
class ConnectClient {
 public:
  explicit ConnectClient(std::unique_ptr<httplib::ClientImpl> http)
      : http_(std::move(http)) {
    http_->set_read_timeout(30, 0);
  }

  Reply Post(const std::string& procedure, const std::string& body,
             const std::string& content_type,
             const httplib::Headers& headers = {}) {
    httplib::Result result =
        http_->Post(procedure, headers, body, content_type);
    if (!result) return {0, "", httplib::to_string(result.error())};
    return {result->status, result->get_header_value("Content-Type"),
            result->body};
  }
  Reply Get(const std::string& target, const httplib::Headers& headers = {}) {
    httplib::Result result = http_->Get(target, headers);
    if (!result) return {0, "", httplib::to_string(result.error())};
    return {result->status, result->get_header_value("Content-Type"),
            result->body};
  }

  // Calls `procedure` with `request` in `codec`; fills `response` on 200.
  Reply Call(const std::string& procedure,
             const google::protobuf::Message& request,
             google::protobuf::Message* response, Codec codec = Codec::kJson,
             const httplib::Headers& headers = {}) {
    std::string body;
    if (codec == Codec::kJson) {
      EXPECT_TRUE(
          google::protobuf::util::MessageToJsonString(request, &body).ok());
    } else {
      request.SerializeToString(&body);
    }
    Reply reply =
        Post(procedure, body,
             codec == Codec::kJson ? "application/json" : "application/proto",
             headers);
    if (reply.status == 200 && response != nullptr) {
      if (codec == Codec::kJson) {
        EXPECT_EQ(reply.content_type, "application/json");
        EXPECT_TRUE(
            google::protobuf::util::JsonStringToMessage(reply.body, response)
                .ok())
            << reply.body;
      } else {
        EXPECT_EQ(reply.content_type, "application/proto");
        EXPECT_TRUE(response->ParseFromString(reply.body));
      }
    }
    return reply;
  }

 private:
  std::unique_ptr<httplib::ClientImpl> http_;
};

v1::BeginRequest BeginOf(const std::string& name_space, const std::string& key,
                         const std::string& fingerprint = "fp") {
  v1::BeginRequest request;
  request.set_namespace_(name_space);
  request.set_key(key);
  request.set_fingerprint(fingerprint);
  return request;
}

v1::CompleteRequest CompleteOf(const std::string& name_space,
                               const std::string& key, uint64_t token,
                               const std::string& body) {
  v1::CompleteRequest request;
  request.set_namespace_(name_space);
  request.set_key(key);
  request.set_token(token);
  request.mutable_result()->set_code(201);
  request.mutable_result()->set_body(body);
  return request;
}

// The `code` of a Connect error body.
std::string ErrorCode(const Reply& reply) {
  const size_t at = reply.body.find("\"code\":\"");
  if (at == std::string::npos) return "";
  const size_t start = at + 8;
  return reply.body.substr(start, reply.body.find('"', start) - start);
}

class ConnectHttpTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(std::vector<std::string> flags) {
    server_ = std::make_unique<testing::ServerProcess>(std::move(flags));
    ASSERT_TRUE(server_->Start().ok()) << server_->log();
    ASSERT_GT(server_->http_port(), 0);
  }

  ConnectClient Http() {
    return ConnectClient(std::make_unique<httplib::ClientImpl>(
        "127.0.0.1", server_->http_port()));
  }

  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(ConnectHttpTest, EveryRpcWorksInJsonAndInBinaryProtobuf) {
  for (Codec codec : {Codec::kJson, Codec::kProto}) {
    SCOPED_TRACE(codec == Codec::kJson ? "json" : "proto");
    const std::string ns = codec == Codec::kJson ? "json" : "proto";
    ConnectClient http = Http();
    BeginResponse begun;
    ASSERT_EQ(
        http.Call("/idem.v1.Idempotency/Begin", BeginOf(ns, "k"), &begun, codec)
            .status,
        200);
    ASSERT_EQ(begun.outcome(), BeginResponse::OUTCOME_ACQUIRED);
    const uint64_t token = begun.lease().token();

    v1::CheckpointRequest checkpoint;
    checkpoint.set_namespace_(ns);
    checkpoint.set_key("k");
    checkpoint.set_token(token);
    checkpoint.set_checkpoint("step-1");
    v1::CheckpointResponse checkpointed;
    EXPECT_EQ(http.Call("/idem.v1.Idempotency/Checkpoint", checkpoint,
                        &checkpointed, codec)
                  .status,
              200);

    v1::ExtendRequest extend;
    extend.set_namespace_(ns);
    extend.set_key("k");
    extend.set_token(token);
    extend.mutable_lease()->set_seconds(60);
    v1::ExtendResponse extended;
    EXPECT_EQ(http.Call("/idem.v1.Idempotency/Extend", extend, &extended, codec)
                  .status,
              200);
    EXPECT_GT(extended.expires_at().seconds(), 0);

    v1::CompleteResponse completed;
    EXPECT_EQ(http.Call("/idem.v1.Idempotency/Complete",
                        CompleteOf(ns, "k", token, std::string("\0\xff", 2)),
                        &completed, codec)
                  .status,
              200);
    EXPECT_GT(completed.expires_at().seconds(), 0);

    BeginResponse replay;
    EXPECT_EQ(http.Call("/idem.v1.Idempotency/Begin", BeginOf(ns, "k"), &replay,
                        codec)
                  .status,
              200);
    EXPECT_EQ(replay.outcome(), BeginResponse::OUTCOME_COMPLETED);
    EXPECT_EQ(replay.result().body(), std::string("\0\xff", 2));
    EXPECT_EQ(replay.result().code(), 201);

    v1::LookupRequest lookup;
    lookup.set_namespace_(ns);
    lookup.set_key("k");
    LookupResponse seen;
    EXPECT_EQ(
        http.Call("/idem.v1.Idempotency/Lookup", lookup, &seen, codec).status,
        200);
    EXPECT_EQ(seen.state(), LookupResponse::STATE_COMPLETED);

    // GET, as Connect clients send side-effect-free calls.
    std::string message;
    std::string target;
    if (codec == Codec::kJson) {
      ASSERT_TRUE(
          google::protobuf::util::MessageToJsonString(lookup, &message).ok());
      target = absl::StrCat(
          "/idem.v1.Idempotency/Lookup?connect=v1&encoding="
          "json&message=",
          httplib::detail::encode_query_param(message));
    } else {
      lookup.SerializeToString(&message);
      target = absl::StrCat(
          "/idem.v1.Idempotency/Lookup?connect=v1&encoding=proto&base64=1&"
          "message=",
          absl::WebSafeBase64Escape(message));
    }
    const Reply got = http.Get(target);
    ASSERT_EQ(got.status, 200) << got.body;
    LookupResponse got_seen;
    if (codec == Codec::kJson) {
      ASSERT_TRUE(
          google::protobuf::util::JsonStringToMessage(got.body, &got_seen)
              .ok());
    } else {
      ASSERT_TRUE(got_seen.ParseFromString(got.body));
    }
    EXPECT_EQ(got_seen.state(), LookupResponse::STATE_COMPLETED);

    BeginResponse other;
    ASSERT_EQ(
        http.Call("/idem.v1.Idempotency/Begin", BeginOf(ns, "r"), &other, codec)
            .status,
        200);
    v1::ReleaseRequest release;
    release.set_namespace_(ns);
    release.set_key("r");
    release.set_token(other.lease().token());
    v1::ReleaseResponse released;
    EXPECT_EQ(
        http.Call("/idem.v1.Idempotency/Release", release, &released, codec)
            .status,
        200);

    v1::BeginBatchRequest batch;
    *batch.add_requests() = BeginOf(ns, "b1");
    *batch.add_requests() = BeginOf(ns, "b2");
    v1::BeginBatchResponse batched;
    ASSERT_EQ(
        http.Call("/idem.v1.Idempotency/BeginBatch", batch, &batched, codec)
            .status,
        200);
    ASSERT_EQ(batched.entries_size(), 2);
    v1::CompleteBatchRequest complete_batch;
    for (int i = 0; i < 2; ++i) {
      *complete_batch.add_requests() =
          CompleteOf(ns, absl::StrCat("b", i + 1),
                     batched.entries(i).response().lease().token(), "done");
    }
    v1::CompleteBatchResponse complete_batched;
    ASSERT_EQ(http.Call("/idem.v1.Idempotency/CompleteBatch", complete_batch,
                        &complete_batched, codec)
                  .status,
              200);
    ASSERT_EQ(complete_batched.entries_size(), 2);
    EXPECT_EQ(complete_batched.entries(1).status().code(), 0);

    v1::StatsRequest stats;
    stats.set_namespace_(ns);
    v1::StatsResponse counted;
    ASSERT_EQ(http.Call("/idem.v1.Admin/Stats", stats, &counted, codec).status,
              200);
    v1::ListRequest list;
    list.set_namespace_(ns);
    v1::ListResponse listed;
    ASSERT_EQ(http.Call("/idem.v1.Admin/List", list, &listed, codec).status,
              200);
    EXPECT_EQ(listed.keys_size(), 3);  // k, b1, b2 (r was released).
    BeginResponse held;
    ASSERT_EQ(
        http.Call("/idem.v1.Idempotency/Begin", BeginOf(ns, "f"), &held, codec)
            .status,
        200);
    v1::ForceReleaseRequest force;
    force.set_namespace_(ns);
    force.set_key("f");
    force.set_reason("test");
    v1::ForceReleaseResponse forced;
    EXPECT_EQ(
        http.Call("/idem.v1.Admin/ForceRelease", force, &forced, codec).status,
        200);
    v1::DeleteRequest remove;
    remove.set_namespace_(ns);
    remove.set_key("k");
    remove.set_reason("test");
    v1::DeleteResponse removed;
    ASSERT_EQ(
        http.Call("/idem.v1.Admin/Delete", remove, &removed, codec).status,
        200);
    EXPECT_TRUE(removed.existed());
  }
  // Counted per RPC like gRPC calls.
  httplib::Client metrics("127.0.0.1", server_->metrics_port());
  httplib::Result scraped = metrics.Get("/metrics");
  ASSERT_TRUE(scraped);
  EXPECT_TRUE(
      absl::StrContains(scraped->body, "idem_rpc_total{method=\"Checkpoint\""))
      << scraped->body;
  EXPECT_TRUE(
      absl::StrContains(scraped->body, "\nidem_connect_http_connections "))
      << scraped->body;
}

TEST_F(ConnectHttpTest, ErrorsCarryTheirConnectCodeAndHttpStatus) {
  ConnectClient http = Http();
  const auto expect_error = [](const Reply& reply, int status,
                               const std::string& code) {
    EXPECT_EQ(reply.status, status) << reply.body;
    EXPECT_EQ(reply.content_type, "application/json");
    EXPECT_EQ(ErrorCode(reply), code) << reply.body;
    EXPECT_TRUE(absl::StrContains(reply.body, "\"message\":\"")) << reply.body;
  };
  // invalid_argument: the server's own validation.
  expect_error(http.Post("/idem.v1.Idempotency/Begin", R"({"key":"k"})",
                         "application/json"),
               400, "invalid_argument");
  // ... and a body that is not the method's message.
  expect_error(http.Post("/idem.v1.Idempotency/Begin", R"({"namespace": 5)",
                         "application/json"),
               400, "invalid_argument");
  expect_error(http.Post("/idem.v1.Idempotency/Begin",
                         R"({"namespace":"n","key":"k","fingerprnt":"AA=="})",
                         "application/json"),
               400, "invalid_argument");
  expect_error(http.Post("/idem.v1.Idempotency/Begin", "\xff\xff\xff",
                         "application/proto"),
               400, "invalid_argument");

  BeginResponse begun;
  ASSERT_EQ(
      http.Call("/idem.v1.Idempotency/Begin", BeginOf("e", "k"), &begun).status,
      200);
  const uint64_t token = begun.lease().token();
  // failed_precondition: a stale token.
  expect_error(http.Call("/idem.v1.Idempotency/Complete",
                         CompleteOf("e", "k", token + 1000, "x"), nullptr),
               400, "failed_precondition");
  ASSERT_EQ(http.Call("/idem.v1.Idempotency/Complete",
                      CompleteOf("e", "k", token, "x"), nullptr)
                .status,
            200);
  // already_exists: the same token completing with another result.
  expect_error(http.Call("/idem.v1.Idempotency/Complete",
                         CompleteOf("e", "k", token, "y"), nullptr),
               409, "already_exists");
  // Connect-Timeout-Ms is the call's deadline: a waiting Begin answers
  // IN_PROGRESS just before it.
  BeginResponse held;
  ASSERT_EQ(
      http.Call("/idem.v1.Idempotency/Begin", BeginOf("e", "d"), &held).status,
      200);
  v1::BeginRequest waiting = BeginOf("e", "d");
  waiting.mutable_wait()->set_seconds(30);
  const absl::Time start = absl::Now();
  BeginResponse waited;
  ASSERT_EQ(http.Call("/idem.v1.Idempotency/Begin", waiting, &waited,
                      Codec::kJson, {{"Connect-Timeout-Ms", "700"}})
                .status,
            200);
  EXPECT_EQ(waited.outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_GT(absl::Now() - start, absl::Milliseconds(500));

  // A loopback port refuses requests for another host (DNS rebinding).
  expect_error(http.Post("/idem.v1.Admin/Stats", "{}", "application/json",
                         {{"Host", "attacker.example:8080"}}),
               403, "permission_denied");

  // The protocol's own refusals.
  expect_error(http.Post("/idem.v1.Idempotency/Nope", "{}", "application/json"),
               404, "unimplemented");
  expect_error(
      http.Post("/idem.v1.Idempotency/Session", "{}", "application/json"), 404,
      "unimplemented");
  expect_error(http.Post("/idem.v1.Idempotency/Begin", "{}", "text/plain"), 415,
               "invalid_argument");
  expect_error(http.Get("/idem.v1.Idempotency/Begin?encoding=json&message={}"),
               405, "unimplemented");
  expect_error(
      http.Call("/idem.v1.Idempotency/Lookup", v1::LookupRequest(), nullptr,
                Codec::kJson, {{"Connect-Protocol-Version", "2"}}),
      400, "invalid_argument");
  expect_error(
      http.Call("/idem.v1.Idempotency/Lookup", v1::LookupRequest(), nullptr,
                Codec::kJson, {{"Connect-Timeout-Ms", "12345678901"}}),
      400, "invalid_argument");
  expect_error(http.Call("/idem.v1.Idempotency/Lookup", v1::LookupRequest(),
                         nullptr, Codec::kJson, {{"Connect-Timeout-Ms", "0"}}),
               400, "invalid_argument");
  expect_error(http.Post("/idem.v1.Idempotency/Begin", "{}", "application/json",
                         {{"Content-Encoding", "gzip"}}),
               501, "unimplemented");
  expect_error(http.Get("/idem.v1.Idempotency/Lookup?encoding=xml&message=x"),
               415, "invalid_argument");
  // Nothing above changed the key.
  BeginResponse replay;
  ASSERT_EQ(http.Call("/idem.v1.Idempotency/Begin", BeginOf("e", "k"), &replay)
                .status,
            200);
  EXPECT_EQ(replay.result().body(), "x");
}

TEST_F(ConnectHttpTest, LimitsApplyAndAnOversizeBodyIsRefusedUnread) {
  // A result over --max-body-bytes: the server's own check refuses it.
  ConnectClient http = Http();
  BeginResponse begun;
  ASSERT_EQ(
      http.Call("/idem.v1.Idempotency/Begin", BeginOf("l", "k"), &begun).status,
      200);
  const Reply big = http.Call(
      "/idem.v1.Idempotency/Complete",
      CompleteOf("l", "k", begun.lease().token(), std::string(1 << 21, 'x')),
      nullptr, Codec::kProto);
  EXPECT_EQ(big.status, 429) << big.body;
  EXPECT_EQ(ErrorCode(big), "resource_exhausted");

  // A reply larger than gRPC's default 4 MiB message comes back whole: a
  // BeginBatch replaying five 1 MiB results.
  v1::BeginBatchRequest replays;
  for (int i = 0; i < 5; ++i) {
    const std::string key = absl::StrCat("big-", i);
    BeginResponse mine;
    ASSERT_EQ(http.Call("/idem.v1.Idempotency/Begin", BeginOf("l", key), &mine)
                  .status,
              200);
    ASSERT_EQ(http.Call("/idem.v1.Idempotency/Complete",
                        CompleteOf("l", key, mine.lease().token(),
                                   std::string(1 << 20, 'a' + i)),
                        nullptr, Codec::kProto)
                  .status,
              200);
    *replays.add_requests() = BeginOf("l", key);
  }
  v1::BeginBatchResponse replayed;
  const Reply batch = http.Call("/idem.v1.Idempotency/BeginBatch", replays,
                                &replayed, Codec::kJson);
  ASSERT_EQ(batch.status, 200) << batch.body.substr(0, 300);
  ASSERT_EQ(replayed.entries_size(), 5);
  EXPECT_EQ(replayed.entries(4).response().result().body(),
            std::string(1 << 20, 'e'));

  // A body announced larger than any request: refused from its head alone.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server_->http_port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
            0);
  const std::string head =
      "POST /idem.v1.Idempotency/Complete HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/proto\r\nContent-Length: 1000000000\r\n\r\n";
  ASSERT_EQ(send(fd, head.data(), head.size(), 0),
            static_cast<ssize_t>(head.size()));
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string reply;
  char buffer[4096];
  ssize_t n = 0;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) reply.append(buffer, n);
  close(fd);
  EXPECT_TRUE(absl::StartsWith(reply, "HTTP/1.1 413 ")) << reply;
  EXPECT_TRUE(absl::StrContains(reply, "\"code\":\"resource_exhausted\""));

  // The parked-waiter limit.
  server_.reset();
  Start({"--max-parked-waiters=1"});
  ConnectClient again = Http();
  ASSERT_EQ(again.Call("/idem.v1.Idempotency/Begin", BeginOf("l", "w"), &begun)
                .status,
            200);
  v1::BeginRequest waiting = BeginOf("l", "w");
  waiting.mutable_wait()->set_seconds(5);
  std::thread first([&] {
    ConnectClient mine = Http();
    mine.Call("/idem.v1.Idempotency/Begin", waiting, nullptr);
  });
  absl::SleepFor(absl::Milliseconds(500));
  const Reply second =
      again.Call("/idem.v1.Idempotency/Begin", waiting, nullptr);
  EXPECT_EQ(second.status, 429) << second.body;
  EXPECT_EQ(ErrorCode(second), "resource_exhausted");
  first.join();
}

TEST_F(ConnectHttpTest, AWaitingBeginIsWokenByACompleteOverGrpc) {
  auto stub = server_->NewStub();
  BeginResponse held;
  ASSERT_TRUE(stub->Begin(Context().get(), BeginOf("w", "k"), &held).ok());
  v1::BeginRequest waiting = BeginOf("w", "k");
  waiting.mutable_wait()->set_seconds(20);
  BeginResponse woken;
  Reply reply;
  absl::Time answered;
  std::thread caller([&] {
    ConnectClient http = Http();
    reply = http.Call("/idem.v1.Idempotency/Begin", waiting, &woken);
    answered = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(500));
  v1::CompleteResponse completed;
  const absl::Time complete_at = absl::Now();
  ASSERT_TRUE(stub->Complete(Context().get(),
                             CompleteOf("w", "k", held.lease().token(), "done"),
                             &completed)
                  .ok());
  caller.join();
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(woken.outcome(), BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(woken.result().body(), "done");
  EXPECT_LT(answered - complete_at, absl::Seconds(1));
}

TEST_F(ConnectHttpTest, HealthzAndDrainOnShutdown) {
  ConnectClient http = Http();
  const Reply health = http.Get("/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "SERVING\n");
  // A waiting Begin is answered with the state as it is when the server
  // drains, before it exits.
  BeginResponse held;
  ASSERT_EQ(
      http.Call("/idem.v1.Idempotency/Begin", BeginOf("d", "k"), &held).status,
      200);
  v1::BeginRequest waiting = BeginOf("d", "k");
  waiting.mutable_wait()->set_seconds(60);
  Reply reply;
  BeginResponse answer;
  std::thread caller([&] {
    ConnectClient mine = Http();
    reply = mine.Call("/idem.v1.Idempotency/Begin", waiting, &answer);
  });
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(server_->Terminate(), 0);
  caller.join();
  EXPECT_EQ(reply.status, 200) << reply.body << server_->log();
  EXPECT_EQ(answer.outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
}

// 1,000 HTTP callers wait on one key, each on its own connection; gRPC
// callers meanwhile are answered as before, and the 1,000 are all answered
// once the key completes.
TEST_F(ConnectHttpTest, AThousandWaitingHttpCallersDoNotStarveGrpc) {
  rlimit files{};
  getrlimit(RLIMIT_NOFILE, &files);
  files.rlim_cur = files.rlim_max;
  setrlimit(RLIMIT_NOFILE, &files);
  ASSERT_GE(files.rlim_cur, 2100u);

  auto stub = server_->NewStub();
  BeginResponse held;
  ASSERT_TRUE(stub->Begin(Context().get(), BeginOf("m", "hot"), &held).ok());
  v1::BeginRequest waiting = BeginOf("m", "hot");
  waiting.mutable_wait()->set_seconds(60);
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(waiting, &json).ok());
  const std::string request = absl::StrCat(
      "POST /idem.v1.Idempotency/Begin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/json\r\nContent-Length: ",
      json.size(), "\r\n\r\n", json);
  constexpr int kCallers = 1000;
  std::vector<int> sockets;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server_->http_port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < kCallers; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(
        connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0)
        << i;
    ASSERT_EQ(send(fd, request.data(), request.size(), 0),
              static_cast<ssize_t>(request.size()));
    sockets.push_back(fd);
  }
  // All parked: the server's gauge says so.
  httplib::Client metrics("127.0.0.1", server_->metrics_port());
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  bool parked = false;
  while (!parked && absl::Now() < deadline) {
    httplib::Result scraped = metrics.Get("/metrics");
    parked = scraped &&
             absl::StrContains(scraped->body,
                               absl::StrCat("idem_parked_waiters ", kCallers));
    if (!parked) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(parked) << metrics.Get("/metrics")->body.substr(0, 3000);

  // gRPC callers are served meanwhile, each well within a second.
  absl::Duration slowest;
  for (int i = 0; i < 200; ++i) {
    const absl::Time start = absl::Now();
    BeginResponse begun;
    ASSERT_TRUE(
        stub->Begin(Context().get(), BeginOf("m", absl::StrCat("g", i)), &begun)
            .ok());
    EXPECT_EQ(begun.outcome(), BeginResponse::OUTCOME_ACQUIRED);
    slowest = std::max(slowest, absl::Now() - start);
  }
  EXPECT_LT(slowest, absl::Seconds(1));
  // And HTTP callers too.
  ConnectClient http = Http();
  BeginResponse other;
  EXPECT_EQ(
      http.Call("/idem.v1.Idempotency/Begin", BeginOf("m", "other"), &other)
          .status,
      200);

  v1::CompleteResponse completed;
  ASSERT_TRUE(stub->Complete(Context().get(),
                             CompleteOf("m", "hot", held.lease().token(), "ok"),
                             &completed)
                  .ok());
  int answered = 0;
  for (int fd : sockets) {
    timeval timeout{20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    std::string reply;
    char buffer[4096];
    while (!absl::StrContains(reply, "OUTCOME_")) {
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      reply.append(buffer, static_cast<size_t>(n));
    }
    if (absl::StartsWith(reply, "HTTP/1.1 200 ") &&
        absl::StrContains(reply, "OUTCOME_COMPLETED")) {
      ++answered;
    }
    close(fd);
  }
  EXPECT_EQ(answered, kCallers);
}

// TLS with the gRPC port's certificates, and the policy, over HTTP.
class ConnectHttpSecurityTest : public ::testing::Test {
 protected:
  static constexpr char kToken[] = "http-token-for-ci";
  static constexpr char kPayUri[] = "spiffe://idem.test/payments";

  void SetUp() override {
    testing::TestPki pki(dir_.path());
    auto ca = pki.MakeCa("ca");
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *ca;
    auto server = pki.MakeLeaf(ca_, "server", "idem-a",
                               {"DNS:localhost", "IP:127.0.0.1"});
    auto rotated = pki.MakeLeaf(ca_, "rotated", "idem-b",
                                {"DNS:localhost", "IP:127.0.0.1"});
    auto pay =
        pki.MakeLeaf(ca_, "pay", "payments", {std::string("URI:") + kPayUri});
    ASSERT_TRUE(server.ok() && rotated.ok() && pay.ok());
    rotated_ = *rotated;
    pay_ = *pay;
    // The server reads its files from here; rotation replaces them.
    cert_ = dir_.Sub("tls.crt");
    key_ = dir_.Sub("tls.key");
    std::filesystem::copy_file(server->cert, cert_);
    std::filesystem::copy_file(server->key, key_);
    const testing::CommandResult digest = testing::RunCommand(
        {"/bin/sh", "-c",
         absl::StrCat("printf %s '", kToken, "' | sha256sum | cut -c1-64")});
    ASSERT_EQ(digest.exit_code, 0);
    const std::string policy = dir_.Sub("policy.yaml");
    std::ofstream(policy) << "principals:\n"
                          << "  - name: payments-api\n"
                          << "    match: {uri_san: \"" << kPayUri << "\"}\n"
                          << "    namespaces: [\"payments\"]\n"
                          << "  - name: ci-bot\n"
                          << "    match: {token_sha256: "
                          << digest.out.substr(0, 64) << "}\n"
                          << "    namespaces: [\"ci\"]\n";
    server_ = std::make_unique<testing::ServerProcess>(
        std::vector<std::string>{"--tls-cert=" + cert_, "--tls-key=" + key_,
                                 "--tls-client-ca=" + ca_.cert,
                                 "--policy=" + policy, "--tls-refresh=1s"});
    client::TlsSettings tls;
    tls.ca_file = ca_.cert;
    tls.cert_file = pay_.cert;
    tls.key_file = pay_.key;
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        client::MakeCredentials(tls);
    ASSERT_TRUE(credentials.ok());
    server_->UseCredentials(*credentials);
    ASSERT_TRUE(server_->Start().ok()) << server_->log();
  }

  // mTLS is required by the server: every client shows a certificate.
  ConnectClient Https(const std::string& cert, const std::string& key) {
    auto https = std::make_unique<httplib::SSLClient>(
        "127.0.0.1", server_->http_port(), cert, key);
    https->set_ca_cert_path(ca_.cert);
    https->enable_server_certificate_verification(true);
    return ConnectClient(std::move(https));
  }

  // The subject CN of the certificate a new TLS connection is served.
  std::string ServedCommonName() {
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> context(
        SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
    SSL_CTX_use_certificate_chain_file(context.get(), pay_.cert.c_str());
    SSL_CTX_use_PrivateKey_file(context.get(), pay_.key.c_str(),
                                SSL_FILETYPE_PEM);
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(server_->http_port()));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string name;
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
        0) {
      SSL* ssl = SSL_new(context.get());
      SSL_set_fd(ssl, fd);
      const int connected = SSL_connect(ssl);
      if (connected != 1) ERR_print_errors_fp(stderr);
      if (connected == 1) {
        X509* cert = SSL_get_peer_certificate(ssl);
        if (cert != nullptr) {
          char cn[256] = {0};
          X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName,
                                    cn, sizeof(cn));
          name = cn;
          X509_free(cert);
        }
      }
      SSL_free(ssl);
    }
    close(fd);
    return name;
  }

  testing::TempDir dir_;
  testing::CertFiles ca_, rotated_, pay_;
  std::string cert_, key_;
  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(ConnectHttpSecurityTest, IdentitiesAndNamespacesAsOverGrpc) {
  ConnectClient pay = Https(pay_.cert, pay_.key);
  BeginResponse begun;
  const Reply allowed =
      pay.Call("/idem.v1.Idempotency/Begin", BeginOf("payments", "k"), &begun);
  EXPECT_EQ(allowed.status, 200) << allowed.body;
  const Reply denied =
      pay.Call("/idem.v1.Idempotency/Begin", BeginOf("ci", "k"), nullptr);
  EXPECT_EQ(denied.status, 403) << denied.body;
  EXPECT_EQ(ErrorCode(denied), "permission_denied");
  const Reply admin =
      pay.Call("/idem.v1.Admin/Stats", v1::StatsRequest(), nullptr);
  EXPECT_EQ(admin.status, 403);

  // A bearer token allowed in one namespace is refused in another (the
  // connection still shows the payments certificate: the token's grants
  // add to it).
  const httplib::Headers bearer = {
      {"Authorization", absl::StrCat("Bearer ", kToken)}};
  EXPECT_EQ(pay.Call("/idem.v1.Idempotency/Begin", BeginOf("ci", "t"), nullptr,
                     Codec::kJson, bearer)
                .status,
            200);
  const Reply wrong_token =
      pay.Call("/idem.v1.Idempotency/Begin", BeginOf("other", "t"), nullptr,
               Codec::kJson, bearer);
  EXPECT_EQ(wrong_token.status, 403);
  EXPECT_EQ(ErrorCode(wrong_token), "permission_denied");
  const Reply malformed =
      pay.Call("/idem.v1.Idempotency/Begin", BeginOf("ci", "t"), nullptr,
               Codec::kJson, {{"Authorization", "Basic abc"}});
  EXPECT_EQ(malformed.status, 401);
  EXPECT_EQ(ErrorCode(malformed), "unauthenticated");

  // Plaintext HTTP is not served on a TLS port.
  httplib::Client plain("127.0.0.1", server_->http_port());
  EXPECT_FALSE(plain.Get("/healthz"));

  // A remote gRPC caller cannot claim an identity the HTTP door forwards.
  client::TlsSettings tls;
  tls.ca_file = ca_.cert;
  tls.cert_file = pay_.cert;
  tls.key_file = pay_.key;
  auto credentials = client::MakeCredentials(tls);
  ASSERT_TRUE(credentials.ok());
  auto stub = v1::Idempotency::NewStub(
      grpc::CreateChannel(server_->address(), *credentials));
  auto context = Context();
  context->AddMetadata("idem-forwarded-by", "guess");
  context->AddMetadata("idem-forwarded-tls", "1");
  BeginResponse forged;
  const grpc::Status refused =
      stub->Begin(context.get(), BeginOf("payments", "f"), &forged);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ConnectHttpSecurityTest, RotatedCertificatesReachNewHttpConnections) {
  EXPECT_EQ(ServedCommonName(), "idem-a");
  std::filesystem::copy_file(rotated_.key, key_ + ".new");
  std::filesystem::copy_file(rotated_.cert, cert_ + ".new");
  std::filesystem::rename(key_ + ".new", key_);
  std::filesystem::rename(cert_ + ".new", cert_);
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  std::string served;
  while (absl::Now() < deadline && (served = ServedCommonName()) != "idem-b") {
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(served, "idem-b") << server_->log();
  // And calls still work over the new certificate.
  ConnectClient pay = Https(pay_.cert, pay_.key);
  BeginResponse begun;
  EXPECT_EQ(
      pay.Call("/idem.v1.Idempotency/Begin", BeginOf("payments", "r"), &begun)
          .status,
      200);
}

}  // namespace
}  // namespace idem
