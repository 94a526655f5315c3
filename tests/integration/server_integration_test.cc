// End-to-end tests: the real idem-server binary on a loopback port, driven
// over gRPC through the generated stub.
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/server_process.h"

namespace idem {
namespace {

using v1::BeginRequest;
using v1::BeginResponse;
using v1::CompleteRequest;
using v1::CompleteResponse;
using v1::LookupRequest;
using v1::LookupResponse;

constexpr char kNamespace[] = "payments/POST /v1/charges";

class ServerIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer({}); }

  void StartServer(std::vector<std::string> flags) {
    server_ = std::make_unique<testing::ServerProcess>(std::move(flags));
    absl::Status started = server_->Start();
    ASSERT_TRUE(started.ok()) << started;
    stub_ = server_->NewStub();
  }

  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      std::cerr << "--- idem-server log ---\n" << server_->log();
    }
  }

  static std::unique_ptr<grpc::ClientContext> Context(
      absl::Duration timeout = absl::Seconds(10)) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    return context;
  }

  static BeginRequest Begin(const std::string& key,
                            const std::string& fingerprint = "fp-1") {
    BeginRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    request.set_fingerprint(fingerprint);
    return request;
  }

  grpc::Status Call(const BeginRequest& request, BeginResponse* response,
                    absl::Duration timeout = absl::Seconds(10)) {
    return stub_->Begin(Context(timeout).get(), request, response);
  }

  BeginResponse MustBegin(const BeginRequest& request) {
    BeginResponse response;
    grpc::Status status = Call(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  static CompleteRequest Complete(
      const std::string& key, uint64_t token,
      const std::string& body = "{\"id\":\"ch_1\"}") {
    CompleteRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    request.set_token(token);
    request.mutable_result()->set_code(201);
    request.mutable_result()->set_body(body);
    (*request.mutable_result()->mutable_metadata())["content-type"] =
        "application/json";
    return request;
  }

  grpc::Status Call(const CompleteRequest& request,
                    CompleteResponse* response = nullptr) {
    CompleteResponse ignored;
    return stub_->Complete(Context().get(), request,
                           response != nullptr ? response : &ignored);
  }

  LookupResponse MustLookup(const std::string& key) {
    LookupRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    LookupResponse response;
    grpc::Status status = stub_->Lookup(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  std::unique_ptr<testing::ServerProcess> server_;
  std::unique_ptr<v1::Idempotency::Stub> stub_;
};

absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

TEST_F(ServerIntegrationTest, FullLifecycleBeginWorkCompleteReplay) {
  const absl::Time before = absl::Now();
  BeginResponse begun = MustBegin(Begin("order-1"));
  ASSERT_EQ(begun.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(begun.lease().token(), 0u);
  EXPECT_EQ(begun.attempt(), 1u);
  const absl::Time lease_end = FromProto(begun.lease().expires_at());
  EXPECT_GE(lease_end, before + absl::Seconds(30));
  EXPECT_LE(lease_end, absl::Now() + absl::Seconds(30));

  LookupResponse working = MustLookup("order-1");
  EXPECT_EQ(working.state(), LookupResponse::STATE_IN_PROGRESS);
  EXPECT_EQ(working.lease().token(), 0u);  // The token is never revealed.
  EXPECT_EQ(working.fingerprint(), "fp-1");

  v1::ExtendRequest extend;
  extend.set_namespace_(kNamespace);
  extend.set_key("order-1");
  extend.set_token(begun.lease().token());
  extend.mutable_lease()->set_seconds(120);
  v1::ExtendResponse extended;
  ASSERT_TRUE(stub_->Extend(Context().get(), extend, &extended).ok());
  EXPECT_GT(FromProto(extended.expires_at()), lease_end);

  BeginResponse concurrent = MustBegin(Begin("order-1"));
  EXPECT_EQ(concurrent.outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
  EXPECT_EQ(concurrent.lease().token(), 0u);
  EXPECT_EQ(FromProto(concurrent.lease().expires_at()),
            FromProto(extended.expires_at()));

  CompleteResponse completed;
  ASSERT_TRUE(
      Call(Complete("order-1", begun.lease().token()), &completed).ok());
  EXPECT_EQ(
      FromProto(completed.expires_at()) - FromProto(completed.completed_at()),
      absl::Hours(24));

  for (int retry = 0; retry < 3; ++retry) {
    BeginResponse replay = MustBegin(Begin("order-1"));
    ASSERT_EQ(replay.outcome(), BeginResponse::OUTCOME_COMPLETED);
    EXPECT_EQ(replay.result().code(), 201);
    EXPECT_EQ(replay.result().body(), "{\"id\":\"ch_1\"}");
    EXPECT_EQ(replay.result().metadata().at("content-type"),
              "application/json");
    EXPECT_EQ(FromProto(replay.result().completed_at()),
              FromProto(completed.completed_at()));
    EXPECT_EQ(FromProto(replay.expires_at()),
              FromProto(completed.expires_at()));
  }
  LookupResponse done = MustLookup("order-1");
  EXPECT_EQ(done.state(), LookupResponse::STATE_COMPLETED);
  EXPECT_EQ(done.result().body(), "{\"id\":\"ch_1\"}");
  EXPECT_EQ(done.attempt(), 1u);

  // Same result again is fine; a different one is refused and changes nothing.
  EXPECT_TRUE(Call(Complete("order-1", begun.lease().token())).ok());
  grpc::Status different =
      Call(Complete("order-1", begun.lease().token(), "other"));
  EXPECT_EQ(different.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(MustLookup("order-1").result().body(), "{\"id\":\"ch_1\"}");

  BeginResponse mismatch = MustBegin(Begin("order-1", "fp-2"));
  EXPECT_EQ(mismatch.outcome(), BeginResponse::OUTCOME_MISMATCH);
  EXPECT_FALSE(mismatch.has_result());
}

TEST_F(ServerIntegrationTest, SixtyFourConcurrentBeginsAcquireExactlyOnce) {
  constexpr int kCallers = 64;
  std::atomic<int> acquired{0}, in_progress{0}, other{0};
  absl::Notification go;
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&] {
      // Each caller on its own connection, as separate service replicas.
      std::unique_ptr<v1::Idempotency::Stub> stub = server_->NewStub();
      BeginResponse response;
      go.WaitForNotification();
      grpc::Status status =
          stub->Begin(Context().get(), Begin("hot-key"), &response);
      if (status.ok() &&
          response.outcome() == BeginResponse::OUTCOME_ACQUIRED) {
        acquired++;
      } else if (status.ok() &&
                 response.outcome() == BeginResponse::OUTCOME_IN_PROGRESS) {
        in_progress++;
      } else {
        other++;
      }
    });
  }
  go.Notify();
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(acquired.load(), 1);
  EXPECT_EQ(in_progress.load(), kCallers - 1);
  EXPECT_EQ(other.load(), 0);
}

TEST_F(ServerIntegrationTest, LapsedLeaseIsTakenOverAndOldHolderIsRefused) {
  BeginRequest request = Begin("order-2");
  request.mutable_lease()->set_seconds(1);
  BeginResponse crashed_worker = MustBegin(request);
  ASSERT_EQ(crashed_worker.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_EQ(MustBegin(Begin("order-2")).outcome(),
            BeginResponse::OUTCOME_IN_PROGRESS);

  absl::SleepFor(absl::Milliseconds(1100));
  BeginResponse taker = MustBegin(Begin("order-2"));
  ASSERT_EQ(taker.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(taker.lease().token(), crashed_worker.lease().token());
  EXPECT_EQ(taker.attempt(), 2u);

  grpc::Status stale =
      Call(Complete("order-2", crashed_worker.lease().token()));
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(stale.error_message().find("lease lost"), std::string::npos)
      << stale.error_message();
  ASSERT_TRUE(Call(Complete("order-2", taker.lease().token(), "taker")).ok());
  EXPECT_EQ(MustLookup("order-2").result().body(), "taker");
}

TEST_F(ServerIntegrationTest, SameOwnerRetryGetsTheSameToken) {
  BeginRequest request = Begin("order-3");
  request.set_owner("worker-a/attempt-1");
  BeginResponse first = MustBegin(request);
  BeginResponse retried = MustBegin(request);  // As after a lost reply.
  ASSERT_EQ(retried.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_EQ(retried.lease().token(), first.lease().token());
}

TEST_F(ServerIntegrationTest, ReleaseLetsTheNextBeginAcquireWithHigherToken) {
  BeginResponse first = MustBegin(Begin("order-4"));
  v1::ReleaseRequest release;
  release.set_namespace_(kNamespace);
  release.set_key("order-4");
  release.set_token(first.lease().token() + 1000);
  v1::ReleaseResponse released;
  EXPECT_EQ(stub_->Release(Context().get(), release, &released).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  release.set_token(first.lease().token());
  ASSERT_TRUE(stub_->Release(Context().get(), release, &released).ok());
  EXPECT_EQ(MustLookup("order-4").state(), LookupResponse::STATE_ABSENT);
  BeginResponse second = MustBegin(Begin("order-4", "any-fingerprint"));
  ASSERT_EQ(second.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(second.lease().token(), first.lease().token());
}

TEST_F(ServerIntegrationTest, WaitingBeginIsWokenByComplete) {
  BeginResponse holder = MustBegin(Begin("order-5"));
  BeginResponse waited;
  grpc::Status waited_status;
  absl::Time answered;
  std::thread waiter([&] {
    BeginRequest request = Begin("order-5");
    request.mutable_wait()->set_seconds(20);
    waited_status = Call(request, &waited, absl::Seconds(30));
    answered = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(300));  // Let the waiter park.
  const absl::Time completed_at = absl::Now();
  ASSERT_TRUE(Call(Complete("order-5", holder.lease().token())).ok());
  waiter.join();
  ASSERT_TRUE(waited_status.ok()) << waited_status.error_message();
  EXPECT_EQ(waited.outcome(), BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(waited.result().body(), "{\"id\":\"ch_1\"}");
  EXPECT_LT(answered - completed_at, absl::Seconds(2));
}

TEST_F(ServerIntegrationTest, ReleaseWakesWaitersAndExactlyOneAcquires) {
  BeginResponse holder = MustBegin(Begin("order-6"));
  constexpr int kWaiters = 4;
  std::atomic<int> acquired{0}, in_progress{0}, other{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&] {
      BeginRequest request = Begin("order-6");
      request.mutable_wait()->set_seconds(2);
      BeginResponse response;
      grpc::Status status = Call(request, &response, absl::Seconds(10));
      if (!status.ok()) {
        other++;
      } else if (response.outcome() == BeginResponse::OUTCOME_ACQUIRED) {
        acquired++;
      } else if (response.outcome() == BeginResponse::OUTCOME_IN_PROGRESS) {
        in_progress++;
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  v1::ReleaseRequest release;
  release.set_namespace_(kNamespace);
  release.set_key("order-6");
  release.set_token(holder.lease().token());
  v1::ReleaseResponse released;
  ASSERT_TRUE(stub_->Release(Context().get(), release, &released).ok());
  for (std::thread& t : waiters) t.join();
  EXPECT_EQ(acquired.load(), 1);
  EXPECT_EQ(in_progress.load(), kWaiters - 1);
  EXPECT_EQ(other.load(), 0);
}

TEST_F(ServerIntegrationTest, WaitingBeginAcquiresWhenTheLeaseLapses) {
  BeginRequest first = Begin("order-7");
  first.mutable_lease()->set_seconds(1);
  BeginResponse crashed = MustBegin(first);
  BeginRequest request = Begin("order-7");
  request.mutable_wait()->set_seconds(10);
  const absl::Time start = absl::Now();
  BeginResponse waited;
  ASSERT_TRUE(Call(request, &waited, absl::Seconds(20)).ok());
  EXPECT_EQ(waited.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(waited.lease().token(), crashed.lease().token());
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(ServerIntegrationTest, WaitEndsWithInProgressAtTheWaitOrTheDeadline) {
  MustBegin(Begin("order-8"));
  BeginRequest request = Begin("order-8");
  request.mutable_wait()->set_nanos(400'000'000);
  absl::Time start = absl::Now();
  BeginResponse waited;
  ASSERT_TRUE(Call(request, &waited).ok());
  EXPECT_EQ(waited.outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(400));

  // A wait longer than the call's deadline ends just before the deadline.
  request.mutable_wait()->set_seconds(60);
  request.mutable_wait()->set_nanos(0);
  start = absl::Now();
  grpc::Status status = Call(request, &waited, absl::Milliseconds(800));
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(waited.outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(500));
}

TEST_F(ServerIntegrationTest, ResultIsForgottenAfterItsRetention) {
  BeginRequest request = Begin("order-9");
  request.mutable_retention()->set_seconds(1);
  BeginResponse begun = MustBegin(request);
  ASSERT_TRUE(Call(Complete("order-9", begun.lease().token())).ok());
  EXPECT_EQ(MustBegin(Begin("order-9")).outcome(),
            BeginResponse::OUTCOME_COMPLETED);
  absl::SleepFor(absl::Milliseconds(1100));
  EXPECT_EQ(MustLookup("order-9").state(), LookupResponse::STATE_ABSENT);
  BeginResponse anew = MustBegin(Begin("order-9", "new-fingerprint"));
  EXPECT_EQ(anew.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(anew.lease().token(), begun.lease().token());
}

TEST_F(ServerIntegrationTest, BadInputIsRejectedClearlyAndChangesNothing) {
  BeginResponse holder = MustBegin(Begin("order-10"));
  const LookupResponse before = MustLookup("order-10");

  struct Case {
    std::string what;
    BeginRequest request;
    grpc::StatusCode code;
    std::string mentions;
  };
  std::vector<Case> cases;
  cases.push_back({"empty key", Begin(""), grpc::StatusCode::INVALID_ARGUMENT,
                   "key must be 1 to 255"});
  cases.push_back({"long key", Begin(std::string(256, 'k')),
                   grpc::StatusCode::INVALID_ARGUMENT, "key must be 1 to 255"});
  BeginRequest both = Begin("order-10");
  both.set_request("raw");
  cases.push_back(
      {"both", both, grpc::StatusCode::INVALID_ARGUMENT, "not both"});
  BeginRequest lease = Begin("order-10");
  lease.mutable_lease()->set_seconds(-1);
  cases.push_back(
      {"lease", lease, grpc::StatusCode::INVALID_ARGUMENT, "lease must be"});
  BeginRequest ns = Begin("order-10");
  ns.set_namespace_("");
  cases.push_back({"namespace", ns, grpc::StatusCode::INVALID_ARGUMENT,
                   "namespace must be"});
  for (const Case& c : cases) {
    BeginResponse response;
    grpc::Status status = Call(c.request, &response);
    EXPECT_EQ(status.error_code(), c.code) << c.what;
    EXPECT_NE(status.error_message().find(c.mentions), std::string::npos)
        << c.what << ": " << status.error_message();
  }

  CompleteRequest big = Complete("order-10", holder.lease().token(),
                                 std::string((1 << 20) + 1, 'b'));
  grpc::Status too_big = Call(big);
  EXPECT_EQ(too_big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(too_big.error_message().find("result.body"), std::string::npos);
  // Larger than any message the server accepts: refused by gRPC itself.
  CompleteRequest huge =
      Complete("order-10", holder.lease().token(), std::string(8 << 20, 'b'));
  EXPECT_EQ(Call(huge).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  CompleteRequest no_token = Complete("order-10", 0);
  EXPECT_EQ(Call(no_token).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  const LookupResponse after = MustLookup("order-10");
  EXPECT_EQ(after.SerializeAsString(), before.SerializeAsString());
  // The holder is unaffected and completes normally.
  EXPECT_TRUE(Call(Complete("order-10", holder.lease().token())).ok());
}

TEST_F(ServerIntegrationTest, RequestBytesAreFingerprintedWithSha256) {
  BeginRequest request = Begin("order-11", "");
  request.set_request("{\"amount\":100}");
  ASSERT_EQ(MustBegin(request).outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_EQ(MustLookup("order-11").fingerprint().size(), 32u);
  EXPECT_EQ(MustBegin(request).outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
  request.set_request("{\"amount\":999}");
  EXPECT_EQ(MustBegin(request).outcome(), BeginResponse::OUTCOME_MISMATCH);
}

TEST_F(ServerIntegrationTest, CompletedResultSurvivesKillNine) {
  BeginResponse begun = MustBegin(Begin("order-12"));
  ASSERT_TRUE(Call(Complete("order-12", begun.lease().token())).ok());
  server_->Kill();  // No flush, no close: only what was synced survives.

  ASSERT_TRUE(server_->Start().ok()) << server_->log();
  stub_ = server_->NewStub();
  BeginResponse replay = MustBegin(Begin("order-12"));
  ASSERT_EQ(replay.outcome(), BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(replay.result().body(), "{\"id\":\"ch_1\"}");
  // Tokens keep increasing across the crash.
  BeginResponse next = MustBegin(Begin("order-13"));
  EXPECT_GT(next.lease().token(), begun.lease().token());
}

TEST_F(ServerIntegrationTest, BatchesAnswerEachRequestOnItsOwnInOrder) {
  BeginResponse done = MustBegin(Begin("batch-done"));
  ASSERT_TRUE(Call(Complete("batch-done", done.lease().token())).ok());

  v1::BeginBatchRequest batch;
  *batch.add_requests() = Begin("batch-a");          // ACQUIRED
  *batch.add_requests() = Begin("batch-a");          // IN_PROGRESS: sees #0
  *batch.add_requests() = Begin("batch-a", "fp-9");  // MISMATCH: sees #0
  *batch.add_requests() = Begin("");                 // INVALID_ARGUMENT
  BeginRequest waiting = Begin("batch-b");
  waiting.mutable_wait()->set_seconds(1);
  *batch.add_requests() = waiting;              // INVALID_ARGUMENT
  *batch.add_requests() = Begin("batch-done");  // COMPLETED
  v1::BeginBatchResponse begun;
  ASSERT_TRUE(stub_->BeginBatch(Context().get(), batch, &begun).ok());
  ASSERT_EQ(begun.entries_size(), 6);
  EXPECT_EQ(begun.entries(0).response().outcome(),
            BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_EQ(begun.entries(1).response().outcome(),
            BeginResponse::OUTCOME_IN_PROGRESS);
  EXPECT_EQ(begun.entries(2).response().outcome(),
            BeginResponse::OUTCOME_MISMATCH);
  EXPECT_EQ(begun.entries(3).status().code(),
            static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(begun.entries(3).status().message().find("key must be"),
            std::string::npos);
  EXPECT_EQ(begun.entries(4).status().code(),
            static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_EQ(begun.entries(5).response().outcome(),
            BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(begun.entries(5).response().result().body(), "{\"id\":\"ch_1\"}");

  v1::CompleteBatchRequest completes;
  const uint64_t token = begun.entries(0).response().lease().token();
  *completes.add_requests() = Complete("batch-a", token);
  *completes.add_requests() = Complete("batch-a", token + 1000);
  v1::CompleteBatchResponse completed;
  ASSERT_TRUE(
      stub_->CompleteBatch(Context().get(), completes, &completed).ok());
  ASSERT_EQ(completed.entries_size(), 2);
  EXPECT_EQ(completed.entries(0).status().code(), 0);
  EXPECT_TRUE(completed.entries(0).response().has_completed_at());
  EXPECT_EQ(completed.entries(1).status().code(),
            static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_EQ(MustBegin(Begin("batch-a")).outcome(),
            BeginResponse::OUTCOME_COMPLETED);
}

TEST_F(ServerIntegrationTest, BatchSizeIsBoundedAndAFullBatchIsDurable) {
  v1::BeginBatchRequest empty;
  v1::BeginBatchResponse ignored;
  grpc::Status none = stub_->BeginBatch(Context().get(), empty, &ignored);
  EXPECT_EQ(none.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(none.error_message().find("1 to 1000"), std::string::npos);
  v1::BeginBatchRequest too_many;
  for (int i = 0; i < 1001; ++i) *too_many.add_requests() = Begin("k");
  EXPECT_EQ(stub_->BeginBatch(Context().get(), too_many, &ignored).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::BeginBatchRequest full;
  for (int i = 0; i < 1000; ++i) {
    *full.add_requests() = Begin("bulk-" + std::to_string(i));
  }
  v1::BeginBatchResponse begun;
  ASSERT_TRUE(stub_->BeginBatch(Context().get(), full, &begun).ok());
  v1::CompleteBatchRequest completes;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(begun.entries(i).response().outcome(),
              BeginResponse::OUTCOME_ACQUIRED);
    *completes.add_requests() =
        Complete("bulk-" + std::to_string(i),
                 begun.entries(i).response().lease().token());
  }
  v1::CompleteBatchResponse completed;
  ASSERT_TRUE(
      stub_->CompleteBatch(Context().get(), completes, &completed).ok());
  server_->Kill();
  ASSERT_TRUE(server_->Start().ok());
  stub_ = server_->NewStub();
  v1::BeginBatchResponse replayed;
  ASSERT_TRUE(stub_->BeginBatch(Context().get(), full, &replayed).ok());
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(replayed.entries(i).response().outcome(),
              BeginResponse::OUTCOME_COMPLETED)
        << i;
  }
}

TEST_F(ServerIntegrationTest, CancelledWaitersLeaveTheKeyWorking) {
  BeginResponse holder = MustBegin(Begin("order-15"));
  constexpr int kWaiters = 16;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<grpc::Status> statuses(kWaiters);
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    contexts.push_back(Context(absl::Seconds(30)));
  }
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&, i] {
      BeginRequest request = Begin("order-15");
      request.mutable_wait()->set_seconds(20);
      BeginResponse response;
      statuses[i] = stub_->Begin(contexts[i].get(), request, &response);
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  for (auto& context : contexts) context->TryCancel();
  for (std::thread& t : waiters) t.join();
  for (const grpc::Status& status : statuses) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  }
  ASSERT_TRUE(Call(Complete("order-15", holder.lease().token())).ok());
  EXPECT_EQ(MustBegin(Begin("order-15")).outcome(),
            BeginResponse::OUTCOME_COMPLETED);
}

TEST_F(ServerIntegrationTest, SigtermAnswersParkedWaitersAndExitsCleanly) {
  MustBegin(Begin("order-14"));
  BeginResponse waited;
  grpc::Status waited_status;
  std::thread waiter([&] {
    BeginRequest request = Begin("order-14");
    request.mutable_wait()->set_seconds(60);
    waited_status = Call(request, &waited, absl::Seconds(90));
  });
  absl::SleepFor(absl::Milliseconds(300));
  const absl::Time start = absl::Now();
  EXPECT_EQ(server_->Terminate(), 0);
  waiter.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ASSERT_TRUE(waited_status.ok()) << waited_status.error_message();
  EXPECT_EQ(waited.outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
  EXPECT_NE(server_->log().find("event=shutdown_complete"), std::string::npos);
}

}  // namespace
}  // namespace idem
