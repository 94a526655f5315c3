// The C++ client library against the real idem-server.
#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "idem/client.h"
#include "idem/keys.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/server_process.h"

namespace idem::client {
namespace {

constexpr char kNamespace[] = "orders/POST /v1/orders";

BeginOptions WithFingerprint(const std::string& fingerprint,
                             const std::string& owner = "") {
  BeginOptions options;
  options.fingerprint = fingerprint;
  options.owner = owner;
  return options;
}

// Every test runs twice: over the Session stream (the default) and with
// one unary RPC per call.
class ClientIntegrationTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.Start().ok()) << server_.log();
    client_ = NewClient();
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "--- idem-server log ---\n" << server_.log();
  }

  std::unique_ptr<Client> NewClient(RetryPolicy retry = {}) {
    ClientOptions options;
    options.target = server_.address();
    options.retry = retry;
    options.session = GetParam();
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return *std::move(client);
  }

  static Result Created(const std::string& body) {
    return Result{201, body, {{"content-type", "application/json"}}};
  }

  testing::ServerProcess server_;
  std::unique_ptr<Client> client_;
};

TEST_P(ClientIntegrationTest, RunDoesTheWorkOnceFor32ConcurrentCallers) {
  constexpr int kCallers = 32;
  const std::string key = NewKey();
  std::atomic<int> executions{0};
  std::vector<absl::StatusOr<RunResult>> results(kCallers);
  std::vector<std::thread> callers;
  absl::Notification go;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      go.WaitForNotification();
      results[i] = client_->Run(
          kNamespace, key, "order-body",
          [&](RunContext&) -> absl::StatusOr<Result> {
            const int n = ++executions;
            absl::SleepFor(absl::Milliseconds(300));  // Duplicates pile up.
            return Created("order #" + std::to_string(n));
          });
    });
  }
  go.Notify();
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(executions.load(), 1);
  int replayed = 0;
  for (const absl::StatusOr<RunResult>& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(SameResponse(r->result, Created("order #1")));
    EXPECT_EQ(r->result.completed_at, results[0]->result.completed_at);
    replayed += r->replayed ? 1 : 0;
  }
  EXPECT_EQ(replayed, kCallers - 1);
}

TEST_P(ClientIntegrationTest, WorkerWhoseHeartbeatStopsIsTakenOver) {
  const std::string key = NewKey();
  absl::Notification a_started, b_done;
  absl::StatusOr<RunResult> a_result;
  std::thread worker_a([&] {
    RunOptions stalled;
    stalled.lease = absl::Seconds(1);
    stalled.heartbeat = absl::InfiniteDuration();  // As if the worker hung.
    a_result = client_->Run(
        kNamespace, key, "req",
        [&](RunContext&) -> absl::StatusOr<Result> {
          a_started.Notify();
          b_done.WaitForNotification();
          return Created("from a");
        },
        stalled);
  });
  a_started.WaitForNotification();
  RunOptions patient;
  patient.wait = absl::Seconds(10);
  uint64_t b_token = 0;
  absl::StatusOr<RunResult> b_result = client_->Run(
      kNamespace, key, "req",
      [&](RunContext& run) -> absl::StatusOr<Result> {
        b_token = run.token();
        return Created("from b");
      },
      patient);
  b_done.Notify();
  worker_a.join();

  ASSERT_TRUE(b_result.ok()) << b_result.status();
  EXPECT_FALSE(b_result->replayed);
  EXPECT_EQ(b_result->attempt, 2u);
  EXPECT_EQ(ErrorKindOf(a_result.status()), ErrorKind::kLeaseLost)
      << a_result.status();
  EXPECT_EQ(a_result.status().code(), absl::StatusCode::kAborted);
  absl::StatusOr<KeyInfo> stored = client_->Lookup(kNamespace, key);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->result.body, "from b");
  EXPECT_GT(b_token, 0u);
}

TEST_P(ClientIntegrationTest, ServerRestartDuringRunIsRetried) {
  RetryPolicy patient;
  patient.max_attempts = 50;
  patient.total_timeout = absl::Seconds(30);
  std::unique_ptr<Client> client = NewClient(patient);
  const std::string key = NewKey();
  std::thread restarter;
  absl::StatusOr<RunResult> result = client->Run(
      kNamespace, key, "req", [&](RunContext&) -> absl::StatusOr<Result> {
        server_.Kill();  // The server crashes while the work runs...
        restarter = std::thread([&] {
          absl::SleepFor(absl::Milliseconds(500));
          ASSERT_TRUE(server_.Start().ok());  // ...and comes back.
        });
        return Created("survived");
      });
  restarter.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->replayed);
  absl::StatusOr<KeyInfo> stored = client->Lookup(kNamespace, key);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->state, KeyState::kCompleted);
  EXPECT_EQ(stored->result.body, "survived");
}

TEST_P(ClientIntegrationTest, DefaultRetriesRideOutARestartOfSeconds) {
  const std::string key = NewKey();
  server_.Kill();
  std::thread restarter([&] {
    absl::SleepFor(absl::Seconds(3));  // A pod being replaced, say.
    ASSERT_TRUE(server_.Start().ok());
  });
  // Default retry policy: the call waits the outage out instead of failing.
  absl::StatusOr<KeyInfo> seen = client_->Lookup(kNamespace, key);
  restarter.join();
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->state, KeyState::kAbsent);
}

TEST_P(ClientIntegrationTest, HeartbeatKeepsALongTasksLeaseAlive) {
  const std::string key = NewKey();
  RunOptions options;
  options.lease = absl::Seconds(1);
  options.heartbeat = absl::Milliseconds(250);
  Outcome seen_by_other = Outcome::kAcquired;
  bool lost = true;
  absl::StatusOr<RunResult> result = client_->Run(
      kNamespace, key, "req",
      [&](RunContext& run) -> absl::StatusOr<Result> {
        absl::SleepFor(absl::Milliseconds(1500));  // Past the first lease.
        absl::StatusOr<BeginReply> other = client_->Begin(
            kNamespace, key, WithFingerprint(Fingerprint("req")));
        if (other.ok()) seen_by_other = other->outcome;
        absl::SleepFor(absl::Milliseconds(1000));
        lost = run.lease_lost();
        return Created("long");
      },
      options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(seen_by_other, Outcome::kInProgress);
  EXPECT_FALSE(lost);
  EXPECT_EQ(result->attempt, 1u);
}

TEST_P(ClientIntegrationTest, WorkerDyingAfterStepTwoIsResumedAtStepThree) {
  const std::string key = NewKey();
  std::atomic<int> step_runs[3] = {0, 0, 0};
  auto work = [&](RunContext& run, absl::Notification* after_two,
                  absl::Notification* hang) -> absl::StatusOr<Result> {
    std::string outputs;
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<std::string> out =
          run.Step("step-" + std::to_string(i + 1), [&] {
            ++step_runs[i];
            return absl::StatusOr<std::string>("out" + std::to_string(i + 1) +
                                               "@" +
                                               std::to_string(run.token()));
          });
      if (!out.ok()) return out.status();
      outputs += *out + ";";
      if (i == 1 && hang != nullptr) {
        after_two->Notify();
        hang->WaitForNotification();  // Dies here: never reaches step 3.
        return absl::UnavailableError("worker died");
      }
    }
    return Created(outputs);
  };

  absl::Notification after_two, hang;
  std::thread worker_a([&] {
    RunOptions dying;
    dying.lease = absl::Seconds(1);
    dying.heartbeat = absl::InfiniteDuration();
    client_
        ->Run(
            kNamespace, key, "req",
            [&](RunContext& run) { return work(run, &after_two, &hang); },
            dying)
        .IgnoreError();
  });
  after_two.WaitForNotification();
  RunOptions patient;
  patient.wait = absl::Seconds(10);
  int skipped = -1;
  absl::StatusOr<RunResult> resumed = client_->Run(
      kNamespace, key, "req",
      [&](RunContext& run) {
        EXPECT_TRUE(run.resumed());
        absl::StatusOr<Result> r = work(run, nullptr, nullptr);
        skipped = run.steps_skipped();
        return r;
      },
      patient);
  hang.Notify();
  worker_a.join();

  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(step_runs[0].load(), 1);
  EXPECT_EQ(step_runs[1].load(), 1);
  EXPECT_EQ(step_runs[2].load(), 1);
  EXPECT_EQ(skipped, 2);
  EXPECT_EQ(resumed->attempt, 2u);
  absl::StatusOr<KeyInfo> stored = client_->Lookup(kNamespace, key);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->result.body, resumed->result.body);
  EXPECT_FALSE(stored->checkpoint.empty());
}

TEST_P(ClientIntegrationTest, MismatchAndInProgressAreDistinctErrors) {
  const std::string key = NewKey();
  auto work = [](RunContext&) -> absl::StatusOr<Result> {
    return Result{200, "ok", {}};
  };
  ASSERT_TRUE(client_->Run(kNamespace, key, "request A", work).ok());
  absl::StatusOr<RunResult> mismatch =
      client_->Run(kNamespace, key, "request B", work);
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrorKindOf(mismatch.status()), ErrorKind::kMismatch);

  const std::string busy = NewKey();
  ASSERT_TRUE(
      client_->Begin(kNamespace, busy, WithFingerprint(Fingerprint("r"))).ok());
  RunOptions short_wait;
  short_wait.wait = absl::Milliseconds(300);
  absl::StatusOr<RunResult> in_progress =
      client_->Run(kNamespace, busy, "r", work, short_wait);
  EXPECT_EQ(in_progress.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorKindOf(in_progress.status()), ErrorKind::kInProgress);
}

TEST_P(ClientIntegrationTest, FailedWorkReleasesTheKeyAndRetriesRunAgain) {
  const std::string key = NewKey();
  int runs = 0;
  absl::StatusOr<RunResult> failed = client_->Run(
      kNamespace, key, "req", [&](RunContext&) -> absl::StatusOr<Result> {
        ++runs;
        return absl::UnavailableError("card network down");
      });
  EXPECT_EQ(failed.status().message(), "card network down");
  EXPECT_EQ(client_->Lookup(kNamespace, key)->state, KeyState::kAbsent);

  RunOptions release_5xx;
  release_5xx.release_if = [](const Result& r) { return r.code >= 500; };
  absl::StatusOr<RunResult> unstored = client_->Run(
      kNamespace, key, "req",
      [&](RunContext&) -> absl::StatusOr<Result> {
        ++runs;
        return Result{503, "try later", {}};
      },
      release_5xx);
  ASSERT_TRUE(unstored.ok());
  EXPECT_FALSE(unstored->stored);

  EXPECT_THROW(client_
                   ->Run(kNamespace, key, "req",
                         [&](RunContext&) -> absl::StatusOr<Result> {
                           ++runs;
                           throw std::runtime_error("bug");
                         })
                   .IgnoreError(),
               std::runtime_error);

  absl::StatusOr<RunResult> stored = client_->Run(
      kNamespace, key, "req", [&](RunContext&) -> absl::StatusOr<Result> {
        ++runs;
        return Result{402, "card declined", {}};  // Stored, as Stripe does.
      });
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->stored);
  EXPECT_EQ(stored->attempt, 4u);
  EXPECT_EQ(runs, 4);
  absl::StatusOr<RunResult> replay = client_->Run(
      kNamespace, key, "req", [&](RunContext&) -> absl::StatusOr<Result> {
        ++runs;
        return Result{};
      });
  ASSERT_TRUE(replay.ok());
  EXPECT_TRUE(replay->replayed);
  EXPECT_EQ(replay->result.code, 402);
  EXPECT_EQ(runs, 4);
}

TEST_P(ClientIntegrationTest, TypedCallsMapToTheRpcs) {
  const std::string key = NewKey();
  ASSERT_TRUE(client_->Ping().ok());
  absl::StatusOr<BeginReply> begun =
      client_->Begin(kNamespace, key, WithFingerprint("fp", "worker-1"));
  ASSERT_TRUE(begun.ok());
  EXPECT_EQ(begun->outcome, Outcome::kAcquired);
  EXPECT_EQ(begun->owner, "worker-1");
  absl::StatusOr<BeginReply> again =
      client_->Begin(kNamespace, key, WithFingerprint("fp", "worker-1"));
  EXPECT_EQ(again->token, begun->token);
  ASSERT_TRUE(client_->Checkpoint(kNamespace, key, begun->token, "half").ok());
  absl::StatusOr<absl::Time> extended =
      client_->Extend(kNamespace, key, begun->token, absl::Minutes(2));
  ASSERT_TRUE(extended.ok());
  EXPECT_GT(*extended, absl::Now() + absl::Seconds(100));
  absl::StatusOr<Completion> done = client_->Complete(
      kNamespace, key, begun->token, Created("x"), absl::Hours(1));
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->expires_at - done->completed_at, absl::Hours(1));
  absl::StatusOr<KeyInfo> info = client_->Lookup(kNamespace, key);
  EXPECT_EQ(info->state, KeyState::kCompleted);
  EXPECT_EQ(info->checkpoint, "half");
  EXPECT_EQ(info->fingerprint, "fp");
  EXPECT_EQ(client_->Release(kNamespace, key, begun->token).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_->Complete(kNamespace, "", 1, Result{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(ClientIntegrationTest, ADownServerFailsWithinTheTotalTimeout) {
  server_.Kill();
  RetryPolicy quick;
  quick.total_timeout = absl::Seconds(2);
  quick.max_attempts = 100;
  std::unique_ptr<Client> client = NewClient(quick);
  const absl::Time start = absl::Now();
  absl::Status status = client->Ping();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  const absl::Time begin_start = absl::Now();
  EXPECT_EQ(client->Begin(kNamespace, NewKey(), WithFingerprint("fp"))
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - begin_start, absl::Seconds(4));
}

// 64 threads share one Client, as a service's request threads do: every
// call gets its own answer (over one stream, in shared messages).
TEST_P(ClientIntegrationTest, SixtyFourThreadsShareOneClient) {
  constexpr int kThreads = 64;
  constexpr int kRequests = 40;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRequests; ++i) {
        const std::string key = absl::StrCat("shared-", t, "-", i);
        const std::string body = absl::StrCat("body ", t, " ", i);
        absl::StatusOr<BeginReply> begun =
            client_->Begin(kNamespace, key, WithFingerprint("fp"));
        if (!begun.ok() || begun->outcome != Outcome::kAcquired) {
          ++failures;
          continue;
        }
        if (!client_->Complete(kNamespace, key, begun->token, Created(body))
                 .ok()) {
          ++failures;
          continue;
        }
        absl::StatusOr<BeginReply> replay =
            client_->Begin(kNamespace, key, WithFingerprint("fp"));
        if (!replay.ok() || replay->outcome != Outcome::kCompleted ||
            replay->result.body != body) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Transports, ClientIntegrationTest,
                         ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Session" : "Unary";
                         });

// An older server, without Session: a proxy that forwards the unary RPCs
// to the real server and answers Session with UNIMPLEMENTED, as gRPC does
// for a method a server does not have.
class UnaryOnlyProxy final : public v1::Idempotency::Service {
 public:
  explicit UnaryOnlyProxy(std::unique_ptr<v1::Idempotency::Stub> upstream)
      : upstream_(std::move(upstream)) {}

  grpc::Status Begin(grpc::ServerContext*, const v1::BeginRequest* request,
                     v1::BeginResponse* response) override {
    grpc::ClientContext context;
    return upstream_->Begin(&context, *request, response);
  }
  grpc::Status Complete(grpc::ServerContext*,
                        const v1::CompleteRequest* request,
                        v1::CompleteResponse* response) override {
    grpc::ClientContext context;
    return upstream_->Complete(&context, *request, response);
  }
  grpc::Status Lookup(grpc::ServerContext*, const v1::LookupRequest* request,
                      v1::LookupResponse* response) override {
    grpc::ClientContext context;
    return upstream_->Lookup(&context, *request, response);
  }

 private:
  std::unique_ptr<v1::Idempotency::Stub> upstream_;
};

TEST(ClientFallbackTest, AServerWithoutSessionIsCalledWithUnaryRpcs) {
  testing::ServerProcess server;
  ASSERT_TRUE(server.Start().ok()) << server.log();
  UnaryOnlyProxy proxy(server.NewStub());
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&proxy);
  std::unique_ptr<grpc::Server> older = builder.BuildAndStart();
  ASSERT_NE(older, nullptr);

  ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port);
  ASSERT_TRUE(options.session);  // The default.
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok());
  const std::string key = NewKey();
  for (int round = 0; round < 2; ++round) {
    absl::StatusOr<RunResult> run = (*client)->Run(
        kNamespace, key, "body",
        [](RunContext&) -> absl::StatusOr<Result> {
          return Result{201, "made", {}};
        },
        [] {
          RunOptions run_options;
          run_options.heartbeat = absl::InfiniteDuration();
          return run_options;
        }());
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ(run->result.body, "made");
    EXPECT_EQ(run->replayed, round == 1);
  }
  absl::StatusOr<KeyInfo> info = (*client)->Lookup(kNamespace, key);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state, KeyState::kCompleted);
  older->Shutdown();
}

}  // namespace
}  // namespace idem::client
