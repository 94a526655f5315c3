// Stateless replicas over PostgreSQL: real idem-server processes with
// --store=postgresql://... over a real PostgreSQL 15 that each test
// initialises and starts on loopback. Shows that replicas share keys,
// fence each other's holders and wake each other's waiters, that the
// database going away is UNAVAILABLE and NOT_SERVING until it is back, and
// that a password never reaches the log.
#include <httplib.h>

#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "idem/v1/admin.grpc.pb.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/local_postgres.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"

namespace idem {
namespace {

using v1::BeginRequest;
using v1::BeginResponse;
using v1::CompleteRequest;
using v1::CompleteResponse;
using v1::LookupRequest;
using v1::LookupResponse;

constexpr char kNamespace[] = "orders";

std::unique_ptr<grpc::ClientContext> Context(
    absl::Duration timeout = absl::Seconds(30)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

BeginRequest Begin(const std::string& key, const std::string& fingerprint) {
  BeginRequest request;
  request.set_namespace_(kNamespace);
  request.set_key(key);
  request.set_fingerprint(fingerprint);
  return request;
}

BeginRequest Begin(const std::string& key) { return Begin(key, "fp"); }

CompleteRequest Complete(const std::string& key, uint64_t token,
                         const std::string& body) {
  CompleteRequest request;
  request.set_namespace_(kNamespace);
  request.set_key(key);
  request.set_token(token);
  request.mutable_result()->set_code(200);
  request.mutable_result()->set_body(body);
  return request;
}

LookupResponse Lookup(v1::Idempotency::Stub& stub, const std::string& key) {
  LookupRequest request;
  request.set_namespace_(kNamespace);
  request.set_key(key);
  LookupResponse response;
  grpc::Status status = stub.Lookup(Context().get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

class PostgresReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<testing::LocalPostgres>> started =
        testing::LocalPostgres::Start();
    ASSERT_TRUE(started.ok()) << started.status();
    pg_ = *std::move(started);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    for (const auto& replica : replicas_) {
      std::cerr << "--- idem-server log ---\n" << replica->log();
    }
    if (pg_ != nullptr) std::cerr << "--- postgres log ---\n" << pg_->log();
  }

  testing::ServerProcess& StartReplica(std::vector<std::string> flags,
                                       const std::string& uri = "") {
    flags.push_back("--store=" + (uri.empty() ? pg_->uri() : uri));
    replicas_.push_back(
        std::make_unique<testing::ServerProcess>(std::move(flags)));
    absl::Status started = replicas_.back()->Start();
    EXPECT_TRUE(started.ok()) << started;
    return *replicas_.back();
  }

  std::unique_ptr<testing::LocalPostgres> pg_;
  std::vector<std::unique_ptr<testing::ServerProcess>> replicas_;
};

TEST_F(PostgresReplicasTest, TwoReplicasShareKeysFenceAndWakeEachOther) {
  // A waiter's fallback poll is 5 minutes and the lease 30 s: only the
  // other replica's NOTIFY can wake it within the test.
  testing::ServerProcess& a = StartReplica({"--postgres-poll=5m"});
  testing::ServerProcess& b = StartReplica({"--postgres-poll=5m"});
  EXPECT_NE(a.log().find("kind=postgresql"), std::string::npos) << a.log();
  auto stub_a = a.NewStub();
  auto stub_b = b.NewStub();

  BeginResponse begun;
  ASSERT_TRUE(stub_a->Begin(Context().get(), Begin("o-1"), &begun).ok());
  ASSERT_EQ(begun.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  BeginResponse busy;
  ASSERT_TRUE(stub_b->Begin(Context().get(), Begin("o-1"), &busy).ok());
  EXPECT_EQ(busy.outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
  BeginResponse mismatch;
  ASSERT_TRUE(
      stub_b->Begin(Context().get(), Begin("o-1", "other"), &mismatch).ok());
  EXPECT_EQ(mismatch.outcome(), BeginResponse::OUTCOME_MISMATCH);
  EXPECT_EQ(Lookup(*stub_b, "o-1").state(), LookupResponse::STATE_IN_PROGRESS);

  // A Begin on B that waits; A completes the key.
  BeginResponse waited;
  grpc::Status waited_status;
  absl::Time answered;
  std::thread waiter([&] {
    BeginRequest request = Begin("o-1");
    request.mutable_wait()->set_seconds(60);
    waited_status =
        stub_b->Begin(Context(absl::Seconds(90)).get(), request, &waited);
    answered = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(500));  // Parked on B.
  CompleteResponse completed;
  ASSERT_TRUE(stub_a
                  ->Complete(Context().get(),
                             Complete("o-1", begun.lease().token(), "ch_1"),
                             &completed)
                  .ok());
  const absl::Time completed_at = absl::Now();
  waiter.join();
  ASSERT_TRUE(waited_status.ok()) << waited_status.error_message();
  EXPECT_EQ(waited.outcome(), BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(waited.result().body(), "ch_1");
  EXPECT_LT(answered - completed_at, absl::Seconds(1))
      << "the waiter on B was not woken by A's Complete";
  std::cout << "waiter on B answered "
            << absl::FormatDuration(answered - completed_at)
            << " after A's Complete returned\n";

  BeginResponse replay;
  ASSERT_TRUE(stub_b->Begin(Context().get(), Begin("o-1"), &replay).ok());
  EXPECT_EQ(replay.outcome(), BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(replay.result().body(), "ch_1");
  ASSERT_TRUE(
      stub_b->Begin(Context().get(), Begin("o-1", "other"), &mismatch).ok());
  EXPECT_EQ(mismatch.outcome(), BeginResponse::OUTCOME_MISMATCH);

  // Released on A, taken on B with a higher token; A's holder is fenced.
  BeginResponse first;
  ASSERT_TRUE(stub_a->Begin(Context().get(), Begin("o-2"), &first).ok());
  ASSERT_EQ(first.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  v1::ReleaseRequest release;
  release.set_namespace_(kNamespace);
  release.set_key("o-2");
  release.set_token(first.lease().token());
  v1::ReleaseResponse released;
  ASSERT_TRUE(stub_a->Release(Context().get(), release, &released).ok());
  BeginResponse second;
  ASSERT_TRUE(stub_b->Begin(Context().get(), Begin("o-2"), &second).ok());
  ASSERT_EQ(second.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(second.lease().token(), first.lease().token());

  // A lease taken on A that lapses is taken over on B, with a higher token.
  BeginRequest short_lease = Begin("o-3");
  short_lease.mutable_lease()->set_seconds(1);
  BeginResponse lapsing;
  ASSERT_TRUE(stub_a->Begin(Context().get(), short_lease, &lapsing).ok());
  ASSERT_EQ(lapsing.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  absl::SleepFor(absl::Milliseconds(1200));
  BeginResponse takeover;
  ASSERT_TRUE(stub_b->Begin(Context().get(), Begin("o-3"), &takeover).ok());
  ASSERT_EQ(takeover.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(takeover.lease().token(), lapsing.lease().token());
  CompleteResponse refused;
  grpc::Status stale = stub_a->Complete(
      Context().get(), Complete("o-3", lapsing.lease().token(), "late"),
      &refused);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << stale.error_message();
  ASSERT_TRUE(stub_b
                  ->Complete(Context().get(),
                             Complete("o-3", takeover.lease().token(), "won"),
                             &completed)
                  .ok());
  EXPECT_EQ(Lookup(*stub_a, "o-3").result().body(), "won");
}

TEST_F(PostgresReplicasTest, TheDatabaseGoingAwayIsUnavailableUntilItIsBack) {
  testing::ServerProcess& server = StartReplica({"--postgres-timeout=2s"});
  auto stub = server.NewStub();
  httplib::Client http("127.0.0.1", server.metrics_port());
  auto healthz = [&] {
    auto response = http.Get("/healthz");
    return response ? response->status : -1;
  };
  auto await_health = [&](int status) {
    const absl::Time give_up = absl::Now() + absl::Seconds(15);
    while (healthz() != status && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    return healthz() == status;
  };
  BeginResponse begun;
  ASSERT_TRUE(stub->Begin(Context().get(), Begin("kept"), &begun).ok());
  CompleteResponse done;
  ASSERT_TRUE(stub->Complete(Context().get(),
                             Complete("kept", begun.lease().token(), "r"),
                             &done)
                  .ok());
  EXPECT_EQ(healthz(), 200);

  pg_->Crash();
  BeginResponse during;
  grpc::Status status = stub->Begin(Context().get(), Begin("during"), &during);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
  EXPECT_TRUE(await_health(503)) << "health stayed SERVING";

  ASSERT_TRUE(pg_->Restart().ok());
  EXPECT_TRUE(await_health(200)) << "health did not come back";
  BeginResponse replay;
  ASSERT_TRUE(stub->Begin(Context().get(), Begin("kept"), &replay).ok());
  EXPECT_EQ(replay.outcome(), BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(replay.result().body(), "r");
  BeginResponse after;
  ASSERT_TRUE(stub->Begin(Context().get(), Begin("after"), &after).ok());
  EXPECT_EQ(after.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(after.lease().token(), begun.lease().token());
}

TEST_F(PostgresReplicasTest, StatsShowTheExpiredBacklogAndMetricsToo) {
  testing::ServerProcess& server = StartReplica({});
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(
      server.address(), grpc::InsecureChannelCredentials()));
  v1::StatsRequest request;
  v1::StatsResponse stats;
  ASSERT_TRUE(admin->Stats(Context().get(), request, &stats).ok());
  EXPECT_TRUE(stats.has_expired_backlog());
  httplib::Client http("127.0.0.1", server.metrics_port());
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_TRUE(absl::StrContains(metrics->body, "\nidem_expired_backlog "))
      << metrics->body;
}

TEST_F(PostgresReplicasTest, APasswordInTheUriNeverReachesTheLog) {
  // Trust authentication accepts any password: this shows where it goes.
  const std::string uri = absl::StrCat(
      "postgresql://idem:s3cret-for-idem-test@127.0.0.1:", pg_->port(),
      "/idem");
  testing::ServerProcess& server = StartReplica({}, uri);
  auto stub = server.NewStub();
  BeginResponse begun;
  ASSERT_TRUE(stub->Begin(Context().get(), Begin("p-1"), &begun).ok());
  EXPECT_EQ(server.log().find("s3cret"), std::string::npos) << server.log();
  EXPECT_NE(server.log().find("password=****"), std::string::npos)
      << server.log();
}

// A database that asks for a password (scram-sha-256): without it, or with
// a wrong one, the server refuses to start and says why; with the password
// file it serves, and the password never shows in its log.
TEST(PostgresAuthTest, APasswordProtectedDatabaseNeedsThePasswordFile) {
  const std::string password = "s3cret-for-idem-test";
  testing::LocalPostgres::Options options;
  options.password = password;
  absl::StatusOr<std::unique_ptr<testing::LocalPostgres>> pg =
      testing::LocalPostgres::Start(options);
  ASSERT_TRUE(pg.ok()) << pg.status();
  const std::string store = "--store=" + (*pg)->uri();
  testing::TempDir dir;
  const std::string right = dir.Sub("right");
  const std::string wrong = dir.Sub("wrong");
  std::ofstream(right) << password << "\n";
  std::ofstream(wrong) << "not-it\n";

  testing::ServerProcess without({store, "--postgres-timeout=2s"});
  ASSERT_FALSE(without.Start().ok());
  EXPECT_NE(without.log().find("no password supplied"), std::string::npos)
      << without.log();

  testing::ServerProcess mistaken(
      {store, "--postgres-timeout=2s", "--postgres-password-file=" + wrong});
  ASSERT_FALSE(mistaken.Start().ok());
  EXPECT_NE(mistaken.log().find("password authentication failed"),
            std::string::npos)
      << mistaken.log();

  testing::ServerProcess server({store, "--postgres-password-file=" + right});
  absl::Status started = server.Start();
  ASSERT_TRUE(started.ok()) << started << server.log();
  auto stub = server.NewStub();
  BeginResponse begun;
  ASSERT_TRUE(stub->Begin(Context().get(), Begin("a-1"), &begun).ok());
  ASSERT_EQ(begun.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  CompleteResponse done;
  ASSERT_TRUE(stub->Complete(Context().get(),
                             Complete("a-1", begun.lease().token(), "ok"),
                             &done)
                  .ok());
  EXPECT_EQ(Lookup(*stub, "a-1").result().body(), "ok");
  EXPECT_EQ(server.log().find(password), std::string::npos);
}

TEST(PostgresStartTest, AnUnreachableDatabaseStopsTheStartWithAClearError) {
  testing::ServerProcess server(
      {"--store=postgresql://idem@127.0.0.1:1/idem", "--postgres-timeout=1s"});
  absl::Status started = server.Start();
  ASSERT_FALSE(started.ok());
  EXPECT_NE(server.log().find("store_open_failed"), std::string::npos)
      << server.log();
  EXPECT_NE(server.log().find("could not connect to PostgreSQL"),
            std::string::npos)
      << server.log();
}

}  // namespace
}  // namespace idem
