// idem.v1.Idempotency/Session against the real idem-server, over raw
// generated stubs: the operations, their errors, waiting Begins, per-op
// deadlines, bounds on what one stream may make the server hold, and the
// end of a stream.
#include <httplib.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/server_process.h"

namespace idem {
namespace {

using Stream =
    grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>;

constexpr char kNamespace[] = "session-test";

v1::SessionOp BeginOp(uint64_t id, const std::string& key,
                      const std::string& fingerprint = "fp",
                      absl::Duration wait = absl::ZeroDuration()) {
  v1::SessionOp op;
  op.set_id(id);
  v1::BeginRequest* begin = op.mutable_begin();
  begin->set_namespace_(kNamespace);
  begin->set_key(key);
  begin->set_fingerprint(fingerprint);
  if (wait > absl::ZeroDuration()) {
    begin->mutable_wait()->set_seconds(absl::ToInt64Seconds(wait));
  }
  return op;
}

v1::SessionOp CompleteOp(uint64_t id, const std::string& key, uint64_t token,
                         const std::string& body) {
  v1::SessionOp op;
  op.set_id(id);
  v1::CompleteRequest* complete = op.mutable_complete();
  complete->set_namespace_(kNamespace);
  complete->set_key(key);
  complete->set_token(token);
  complete->mutable_result()->set_code(201);
  complete->mutable_result()->set_body(body);
  return op;
}

v1::SessionOp LookupOp(uint64_t id, const std::string& key) {
  v1::SessionOp op;
  op.set_id(id);
  op.mutable_lookup()->set_namespace_(kNamespace);
  op.mutable_lookup()->set_key(key);
  return op;
}

v1::SessionRequest Message(std::vector<v1::SessionOp> ops) {
  v1::SessionRequest request;
  for (v1::SessionOp& op : ops) *request.add_ops() = std::move(op);
  return request;
}

// Reads until `n` answers came; keyed by id.
std::map<uint64_t, v1::SessionResult> ReadAnswers(Stream* stream, size_t n) {
  std::map<uint64_t, v1::SessionResult> answers;
  v1::SessionResponse response;
  while (answers.size() < n && stream->Read(&response)) {
    for (const v1::SessionResult& result : response.results()) {
      EXPECT_TRUE(answers.emplace(result.id(), result).second)
          << "two answers for id " << result.id();
    }
  }
  return answers;
}

// The server's resident memory, from /proc.
int64_t RssBytes(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      int64_t kb = 0;
      std::string digits;
      for (char c : line) {
        if (c >= '0' && c <= '9') digits += c;
      }
      if (absl::SimpleAtoi(digits, &kb)) return kb * 1024;
    }
  }
  return -1;
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.Start().ok()) << server_.log(); }
  void TearDown() override {
    if (HasFailure()) std::cerr << "--- idem-server log ---\n" << server_.log();
  }

  std::string Metrics() {
    httplib::Client http("127.0.0.1", server_.metrics_port());
    auto response = http.Get("/metrics");
    return response ? response->body : "";
  }

  testing::ServerProcess server_{{"--max-reply-bytes=8388608"}};
};

TEST_F(SessionTest, EveryOperationAndItsErrorsOverOneStream) {
  auto stub = server_.NewStub();
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = stub->Session(&context);

  // Begin two keys, and three operations that fail on their own, in one
  // message.
  v1::SessionOp empty;
  empty.set_id(3);
  v1::SessionOp bad_key = BeginOp(4, "");
  v1::SessionOp bad_timeout = LookupOp(5, "a");
  bad_timeout.mutable_timeout()->set_seconds(-1);
  ASSERT_TRUE(stream->Write(Message(
      {BeginOp(1, "a"), BeginOp(2, "b"), empty, bad_key, bad_timeout})));
  std::map<uint64_t, v1::SessionResult> first = ReadAnswers(stream.get(), 5);
  ASSERT_EQ(first.size(), 5u);
  EXPECT_EQ(first[1].status().code(), 0);
  EXPECT_EQ(first[1].begin().outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_EQ(first[2].begin().outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_EQ(first[3].status().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(first[3].status().message().find("must set one of"),
            std::string::npos);
  EXPECT_EQ(first[4].status().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(first[4].status().message().find("key"), std::string::npos);
  EXPECT_FALSE(first[4].has_begin());
  EXPECT_EQ(first[5].status().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(first[5].status().message().find("timeout"), std::string::npos);
  const uint64_t token_a = first[1].begin().lease().token();
  const uint64_t token_b = first[2].begin().lease().token();

  // Checkpoint and Extend a, Complete it, Release b; a stale token fails.
  v1::SessionOp checkpoint;
  checkpoint.set_id(10);
  checkpoint.mutable_checkpoint()->set_namespace_(kNamespace);
  checkpoint.mutable_checkpoint()->set_key("a");
  checkpoint.mutable_checkpoint()->set_token(token_a);
  checkpoint.mutable_checkpoint()->set_checkpoint("step 1");
  v1::SessionOp extend;
  extend.set_id(11);
  extend.mutable_extend()->set_namespace_(kNamespace);
  extend.mutable_extend()->set_key("a");
  extend.mutable_extend()->set_token(token_a);
  v1::SessionOp release;
  release.set_id(13);
  release.mutable_release()->set_namespace_(kNamespace);
  release.mutable_release()->set_key("b");
  release.mutable_release()->set_token(token_b);
  ASSERT_TRUE(stream->Write(
      Message({checkpoint, extend, CompleteOp(12, "a", token_a, "done"),
               release, CompleteOp(14, "b", token_b, "late")})));
  std::map<uint64_t, v1::SessionResult> second = ReadAnswers(stream.get(), 5);
  ASSERT_EQ(second.size(), 5u);
  EXPECT_EQ(second[10].status().code(), 0) << second[10].status().message();
  EXPECT_TRUE(second[10].has_checkpoint());
  EXPECT_EQ(second[11].status().code(), 0);
  EXPECT_TRUE(second[11].extend().has_expires_at());
  EXPECT_EQ(second[12].status().code(), 0);
  EXPECT_TRUE(second[12].complete().has_completed_at());
  EXPECT_EQ(second[13].status().code(), 0);
  EXPECT_TRUE(second[13].has_release());
  // Started after the Release in the same message: it sees it.
  EXPECT_EQ(second[14].status().code(), grpc::StatusCode::FAILED_PRECONDITION);

  // A retry replays; another request with the same key is a mismatch;
  // Lookup reads the stored result.
  ASSERT_TRUE(stream->Write(Message(
      {BeginOp(20, "a"), BeginOp(21, "a", "other"), LookupOp(22, "a")})));
  std::map<uint64_t, v1::SessionResult> third = ReadAnswers(stream.get(), 3);
  ASSERT_EQ(third.size(), 3u);
  EXPECT_EQ(third[20].begin().outcome(), v1::BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(third[20].begin().result().body(), "done");
  EXPECT_EQ(third[21].begin().outcome(), v1::BeginResponse::OUTCOME_MISMATCH);
  EXPECT_EQ(third[22].lookup().state(), v1::LookupResponse::STATE_COMPLETED);
  EXPECT_EQ(third[22].lookup().result().body(), "done");

  stream->WritesDone();
  v1::SessionResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(SessionTest, AWaitingBeginDoesNotHoldUpTheCompleteThatWakesIt) {
  auto stub = server_.NewStub();
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = stub->Session(&context);
  ASSERT_TRUE(stream->Write(Message({BeginOp(1, "k")})));
  std::map<uint64_t, v1::SessionResult> begun = ReadAnswers(stream.get(), 1);
  const uint64_t token = begun[1].begin().lease().token();

  // 64 waiting Begins park; the Complete sent after them still runs.
  std::vector<v1::SessionOp> waits;
  for (uint64_t id = 100; id < 164; ++id) {
    waits.push_back(BeginOp(id, "k", "fp", absl::Seconds(30)));
  }
  ASSERT_TRUE(stream->Write(Message(waits)));
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time sent = absl::Now();
  ASSERT_TRUE(stream->Write(Message({CompleteOp(2, "k", token, "paid")})));
  std::map<uint64_t, v1::SessionResult> answers = ReadAnswers(stream.get(), 65);
  ASSERT_EQ(answers.size(), 65u);
  EXPECT_LT(absl::Now() - sent, absl::Seconds(5));
  EXPECT_EQ(answers[2].status().code(), 0);
  for (uint64_t id = 100; id < 164; ++id) {
    EXPECT_EQ(answers[id].begin().outcome(),
              v1::BeginResponse::OUTCOME_COMPLETED)
        << id;
    EXPECT_EQ(answers[id].begin().result().body(), "paid");
  }
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(SessionTest, AnOperationTimeoutEndsItsWait) {
  auto stub = server_.NewStub();
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = stub->Session(&context);
  ASSERT_TRUE(stream->Write(Message({BeginOp(1, "held")})));
  ASSERT_EQ(ReadAnswers(stream.get(), 1).size(), 1u);
  v1::SessionOp wait = BeginOp(2, "held", "fp", absl::Seconds(30));
  wait.mutable_timeout()->set_nanos(400'000'000);
  const absl::Time start = absl::Now();
  ASSERT_TRUE(stream->Write(Message({wait})));
  std::map<uint64_t, v1::SessionResult> answers = ReadAnswers(stream.get(), 1);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(answers[2].begin().outcome(),
            v1::BeginResponse::OUTCOME_IN_PROGRESS);
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(3));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(SessionTest, HalfClosingStillGetsEveryAnswer) {
  auto stub = server_.NewStub();
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = stub->Session(&context);
  std::vector<v1::SessionOp> ops;
  for (uint64_t id = 1; id <= 500; ++id) {
    ops.push_back(BeginOp(id, absl::StrCat("half-", id)));
  }
  ASSERT_TRUE(stream->Write(Message(ops)));
  stream->WritesDone();
  std::map<uint64_t, v1::SessionResult> answers =
      ReadAnswers(stream.get(), 500);
  EXPECT_EQ(answers.size(), 500u);
  for (const auto& [id, answer] : answers) {
    EXPECT_EQ(answer.begin().outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  }
  EXPECT_TRUE(stream->Finish().ok());
}

// One stream replaying a 1 MiB result 600 times without reading: the server
// stops reading instead of holding 600 MiB of answers.
TEST_F(SessionTest, ManyLargeReplaysAreBoundedWhileTheClientDoesNotRead) {
  auto stub = server_.NewStub();
  {
    grpc::ClientContext context;
    std::unique_ptr<Stream> stream = stub->Session(&context);
    ASSERT_TRUE(stream->Write(Message({BeginOp(1, "big")})));
    std::map<uint64_t, v1::SessionResult> begun = ReadAnswers(stream.get(), 1);
    ASSERT_TRUE(stream->Write(
        Message({CompleteOp(2, "big", begun[1].begin().lease().token(),
                            std::string(size_t{1} << 20, 'x'))})));
    std::map<uint64_t, v1::SessionResult> done = ReadAnswers(stream.get(), 1);
    ASSERT_EQ(done[2].status().code(), 0) << done[2].status().message();
    stream->WritesDone();
    ASSERT_TRUE(stream->Finish().ok());
  }
  const int64_t before = RssBytes(server_.pid());
  ASSERT_GT(before, 0);

  constexpr int kReplays = 600;
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = stub->Session(&context);
  std::thread writer([&] {
    for (int i = 0; i < kReplays; i += 50) {
      std::vector<v1::SessionOp> ops;
      for (int j = i; j < i + 50; ++j) {
        ops.push_back(j % 2 == 0 ? BeginOp(j, "big") : LookupOp(j, "big"));
      }
      if (!stream->Write(Message(ops))) return;
    }
    stream->WritesDone();
  });
  absl::SleepFor(absl::Seconds(3));  // The client reads nothing meanwhile.
  const int64_t held = RssBytes(server_.pid()) - before;
  // --max-reply-bytes is 8 MiB: about 2 x 8 MiB of answers, plus what the
  // transport buffers.
  EXPECT_LT(held, int64_t{120} << 20) << "server RSS grew by " << held;

  std::map<uint64_t, v1::SessionResult> answers =
      ReadAnswers(stream.get(), kReplays);
  writer.join();
  ASSERT_EQ(answers.size(), static_cast<size_t>(kReplays));
  for (const auto& [id, answer] : answers) {
    ASSERT_EQ(answer.status().code(), 0) << answer.status().message();
    const std::string& body = id % 2 == 0 ? answer.begin().result().body()
                                          : answer.lookup().result().body();
    ASSERT_EQ(body.size(), size_t{1} << 20);
  }
  EXPECT_TRUE(stream->Finish().ok());
}

// A client that goes away with Begins parked: they are cancelled, and the
// stream's resources are released.
TEST_F(SessionTest, CancellingTheStreamEndsItsParkedBegins) {
  auto stub = server_.NewStub();
  {
    grpc::ClientContext context;
    std::unique_ptr<Stream> stream = stub->Session(&context);
    ASSERT_TRUE(stream->Write(Message({BeginOp(1, "parked")})));
    ASSERT_EQ(ReadAnswers(stream.get(), 1).size(), 1u);
    std::vector<v1::SessionOp> waits;
    for (uint64_t id = 10; id < 20; ++id) {
      waits.push_back(BeginOp(id, "parked", "fp", absl::Seconds(60)));
    }
    ASSERT_TRUE(stream->Write(Message(waits)));
    absl::SleepFor(absl::Milliseconds(300));
    context.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The server notices, and has no waiter or session left.
  std::string metrics;
  for (int i = 0; i < 50; ++i) {
    metrics = Metrics();
    if (metrics.find("idem_parked_waiters 0\n") != std::string::npos &&
        metrics.find("idem_sessions_open 0\n") != std::string::npos) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(metrics.find("idem_parked_waiters 0\n"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("idem_sessions_open 0\n"), std::string::npos);
  EXPECT_NE(metrics.find("idem_session_operations_total 11\n"),
            std::string::npos);
  EXPECT_NE(
      metrics.find("idem_rpc_total{method=\"Begin\",outcome=\"ACQUIRED\"} 1"),
      std::string::npos);
  EXPECT_NE(
      metrics.find("idem_rpc_total{method=\"Begin\",outcome=\"CANCELLED\"} 10"),
      std::string::npos);
}

}  // namespace
}  // namespace idem
