// Stateless replicas: real idem-server processes with
// --store=redis-cluster://... over a real 6-node Redis Cluster (3 masters,
// 3 replicas) that each test starts on loopback. Shows that replicas share
// keys and wake each other's waiters, and that a master failover and a
// resharding under load are survived without losing an acknowledged result.
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/local_redis_cluster.h"
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

BeginRequest Begin(const std::string& key) {
  BeginRequest request;
  request.set_namespace_(kNamespace);
  request.set_key(key);
  request.set_fingerprint("fp");
  return request;
}

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

class RedisReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<testing::LocalRedisCluster>> started =
        testing::LocalRedisCluster::Start(3, 1);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    for (const auto& replica : replicas_) {
      std::cerr << "--- idem-server log ---\n" << replica->log();
    }
  }

  testing::ServerProcess& StartReplica(std::vector<std::string> flags) {
    flags.push_back("--store=redis-cluster://" + cluster_->Seeds());
    replicas_.push_back(
        std::make_unique<testing::ServerProcess>(std::move(flags)));
    absl::Status started = replicas_.back()->Start();
    EXPECT_TRUE(started.ok()) << started;
    return *replicas_.back();
  }

  std::vector<std::string> Masters() {
    absl::StatusOr<std::vector<testing::LocalRedisCluster::NodeInfo>> nodes =
        cluster_->Nodes(cluster_->Addresses().front());
    EXPECT_TRUE(nodes.ok()) << nodes.status();
    std::vector<std::string> masters;
    for (const auto& node : *nodes) {
      if (node.master && !node.failed && node.slots > 0) {
        masters.push_back(node.address);
      }
    }
    return masters;
  }

  // The Redis replicas (not Idem's).
  std::vector<std::string> Replicas() {
    absl::StatusOr<std::vector<testing::LocalRedisCluster::NodeInfo>> nodes =
        cluster_->Nodes(cluster_->Addresses().front());
    EXPECT_TRUE(nodes.ok()) << nodes.status();
    std::vector<std::string> replicas;
    if (!nodes.ok()) return replicas;
    for (const auto& node : *nodes) {
      if (!node.master) replicas.push_back(node.address);
    }
    return replicas;
  }

  std::unique_ptr<testing::LocalRedisCluster> cluster_;
  std::vector<std::unique_ptr<testing::ServerProcess>> replicas_;
};

TEST_F(RedisReplicasTest, TwoReplicasShareKeysAndWakeEachOthersWaiters) {
  // A waiter's fallback poll is 5 minutes and the lease 30 s: only the
  // other replica's announcement can wake it within the test.
  testing::ServerProcess& a = StartReplica({"--redis-poll=5m"});
  testing::ServerProcess& b = StartReplica({"--redis-poll=5m"});
  EXPECT_NE(a.log().find("kind=redis-cluster"), std::string::npos) << a.log();
  auto stub_a = a.NewStub();
  auto stub_b = b.NewStub();

  BeginResponse begun;
  ASSERT_TRUE(stub_a->Begin(Context().get(), Begin("o-1"), &begun).ok());
  ASSERT_EQ(begun.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  BeginResponse busy;
  ASSERT_TRUE(stub_b->Begin(Context().get(), Begin("o-1"), &busy).ok());
  EXPECT_EQ(busy.outcome(), BeginResponse::OUTCOME_IN_PROGRESS);
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
  EXPECT_LT(answered - completed_at, absl::Seconds(2))
      << "the waiter on B was not woken by A's Complete";
  std::cout << "waiter on B answered "
            << absl::FormatDuration(answered - completed_at)
            << " after A's Complete returned\n";

  BeginResponse replay;
  ASSERT_TRUE(stub_b->Begin(Context().get(), Begin("o-1"), &replay).ok());
  EXPECT_EQ(replay.outcome(), BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(replay.result().body(), "ch_1");
  EXPECT_EQ(Lookup(*stub_b, "o-1").state(), LookupResponse::STATE_COMPLETED);

  // A lease taken on A that lapses is taken over on B, with a higher token;
  // A's holder is then fenced out on A as well.
  BeginRequest short_lease = Begin("o-2");
  short_lease.mutable_lease()->set_seconds(1);
  BeginResponse first;
  ASSERT_TRUE(stub_a->Begin(Context().get(), short_lease, &first).ok());
  ASSERT_EQ(first.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  absl::SleepFor(absl::Milliseconds(1200));
  BeginResponse second;
  ASSERT_TRUE(stub_b->Begin(Context().get(), Begin("o-2"), &second).ok());
  ASSERT_EQ(second.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(second.lease().token(), first.lease().token());
  CompleteResponse refused;
  grpc::Status stale = stub_a->Complete(
      Context().get(), Complete("o-2", first.lease().token(), "late"),
      &refused);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << stale.error_message();
}

TEST_F(RedisReplicasTest, UnreachableClusterStopsTheStartWithAClearError) {
  testing::ServerProcess server(
      {"--store=redis-cluster://127.0.0.1:1", "--redis-timeout=1s"});
  absl::Status started = server.Start();
  ASSERT_FALSE(started.ok());
  EXPECT_NE(server.log().find("store_open_failed"), std::string::npos)
      << server.log();
  EXPECT_NE(server.log().find("127.0.0.1:1"), std::string::npos);
}

// A cluster that requires AUTH: without the password, or with a wrong one,
// the server refuses to start and says why; with the password file it
// serves, and the password never shows in its log.
TEST(RedisAuthTest, PasswordProtectedClusterNeedsThePasswordFile) {
  const std::string password = "s3cret-for-idem-test";
  absl::StatusOr<std::unique_ptr<testing::LocalRedisCluster>> cluster =
      testing::LocalRedisCluster::Start(3, 0, password);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::string store = "--store=redis-cluster://" + (*cluster)->Seeds();
  testing::TempDir dir;
  const std::string right = dir.Sub("right");
  const std::string wrong = dir.Sub("wrong");
  std::ofstream(right) << password << "\n";
  std::ofstream(wrong) << "not-it\n";

  testing::ServerProcess without({store, "--redis-timeout=1s"});
  ASSERT_FALSE(without.Start().ok());
  EXPECT_NE(without.log().find("requires a password"), std::string::npos)
      << without.log();

  testing::ServerProcess mistaken(
      {store, "--redis-timeout=1s", "--redis-password-file=" + wrong});
  ASSERT_FALSE(mistaken.Start().ok());
  EXPECT_NE(mistaken.log().find("refused AUTH"), std::string::npos)
      << mistaken.log();

  testing::ServerProcess server({store, "--redis-password-file=" + right});
  absl::Status started = server.Start();
  ASSERT_TRUE(started.ok()) << started;
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

// Masters restarted at once (kill -9, then started again before the node
// timeout, as systemd or a kubelet does) come back with what their
// append-only file holds, and their replicas resync from them. With
// appendfsync always every acknowledged result and token counter is kept;
// a cluster without an append-only file is refused, since there the same
// restart loses acknowledged results and sends tokens back to 1.
TEST(RedisPersistenceTest, MastersRestartedAtOnceKeepWhatWasAcknowledged) {
  absl::StatusOr<std::unique_ptr<testing::LocalRedisCluster>> volatile_nodes =
      testing::LocalRedisCluster::Start(
          3, 0, "", testing::LocalRedisCluster::Persistence::kNone);
  ASSERT_TRUE(volatile_nodes.ok()) << volatile_nodes.status();
  const std::string volatile_store =
      "--store=redis-cluster://" + (*volatile_nodes)->Seeds();
  testing::ServerProcess refused({volatile_store});
  ASSERT_FALSE(refused.Start().ok());
  EXPECT_NE(refused.log().find("event=store_open_failed"), std::string::npos)
      << refused.log();
  EXPECT_NE(refused.log().find("has appendonly no"), std::string::npos)
      << refused.log();
  testing::ServerProcess accepted(
      {volatile_store, "--redis-accept-loss-on-restart"});
  ASSERT_TRUE(accepted.Start().ok()) << accepted.log();
  EXPECT_NE(accepted.log().find("appendonly no, accepted"), std::string::npos)
      << accepted.log();

  absl::StatusOr<std::unique_ptr<testing::LocalRedisCluster>> cluster =
      testing::LocalRedisCluster::Start(
          3, 1, "", testing::LocalRedisCluster::Persistence::kAofAlways);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  testing::ServerProcess server(
      {"--store=redis-cluster://" + (*cluster)->Seeds(),
       "--redis-wait-replicas=1"});
  ASSERT_TRUE(server.Start().ok()) << server.log();
  auto stub = server.NewStub();
  std::map<std::string, uint64_t> tokens;
  for (int i = 0; i < 30; ++i) {
    const std::string key = absl::StrCat("kept-", i);
    BeginResponse begun;
    ASSERT_TRUE(stub->Begin(Context().get(), Begin(key), &begun).ok());
    CompleteResponse done;
    ASSERT_TRUE(stub->Complete(Context().get(),
                               Complete(key, begun.lease().token(), key), &done)
                    .ok());
    tokens[key] = begun.lease().token();
  }
  // A key whose token was raised by releases: its counter must not roll
  // back.
  auto release = [&](const std::string& key, uint64_t token) {
    v1::ReleaseRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    request.set_token(token);
    v1::ReleaseResponse response;
    return stub->Release(Context().get(), request, &response);
  };
  uint64_t cycled_token = 0;
  for (int i = 0; i < 4; ++i) {
    BeginResponse begun;
    ASSERT_TRUE(stub->Begin(Context().get(), Begin("cycled"), &begun).ok());
    cycled_token = begun.lease().token();
    ASSERT_TRUE(release("cycled", cycled_token).ok());
  }
  absl::StatusOr<std::vector<testing::LocalRedisCluster::NodeInfo>> nodes =
      (*cluster)->Nodes((*cluster)->Addresses().front());
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  for (const auto& node : *nodes) {
    if (!node.master) continue;
    (*cluster)->Kill(node.address);
    ASSERT_TRUE((*cluster)->Restart(node.address).ok());
  }
  // Every acknowledged result is there, and tokens go on growing.
  for (const auto& [key, token] : tokens) {
    LookupResponse found;
    grpc::Status status;
    for (int attempt = 0; attempt < 50; ++attempt) {
      LookupRequest request;
      request.set_namespace_(kNamespace);
      request.set_key(key);
      status = stub->Lookup(Context().get(), request, &found);
      if (status.ok()) break;
      absl::SleepFor(absl::Milliseconds(200));
    }
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(found.state(), LookupResponse::STATE_COMPLETED) << key;
    EXPECT_EQ(found.result().body(), key);
    BeginResponse replay;
    ASSERT_TRUE(stub->Begin(Context().get(), Begin(key), &replay).ok());
    EXPECT_EQ(replay.outcome(), BeginResponse::OUTCOME_COMPLETED) << key;
  }
  BeginResponse again;
  ASSERT_TRUE(stub->Begin(Context().get(), Begin("cycled"), &again).ok());
  ASSERT_EQ(again.outcome(), BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_GT(again.lease().token(), cycled_token);
}

// Clients that Begin on one replica and Complete on the other, and remember
// every result the server acknowledged.
class Load {
 public:
  Load(const std::vector<v1::Idempotency::Stub*>& stubs, int threads) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, stubs, t] { Run(stubs, t); });
    }
  }
  ~Load() { Stop(); }

  void Stop() {
    stop_ = true;
    for (std::thread& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

  std::map<std::string, std::string> acknowledged() {
    absl::MutexLock lock(&mu_);
    return acknowledged_;
  }
  int errors() const { return errors_; }
  int completions() const { return completions_; }

 private:
  void Run(const std::vector<v1::Idempotency::Stub*>& stubs, int t) {
    for (int i = 0; !stop_; ++i) {
      const std::string key = absl::StrCat("load-", t, "-", i);
      v1::Idempotency::Stub& first = *stubs[static_cast<size_t>(i) % 2];
      v1::Idempotency::Stub& second = *stubs[static_cast<size_t>(i + 1) % 2];
      BeginResponse begun;
      grpc::Status status = first.Begin(Context().get(), Begin(key), &begun);
      if (!status.ok() || begun.outcome() != BeginResponse::OUTCOME_ACQUIRED) {
        ++errors_;
        continue;
      }
      const std::string body = "result of " + key;
      CompleteResponse done;
      status = second.Complete(
          Context().get(), Complete(key, begun.lease().token(), body), &done);
      if (!status.ok()) {
        ++errors_;
        continue;
      }
      ++completions_;
      absl::MutexLock lock(&mu_);
      acknowledged_[key] = body;
    }
  }

  std::atomic<bool> stop_{false};
  std::atomic<int> errors_{0};
  std::atomic<int> completions_{0};
  absl::Mutex mu_;
  std::map<std::string, std::string> acknowledged_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

void ExpectAllReadable(v1::Idempotency::Stub& stub,
                       const std::map<std::string, std::string>& results) {
  int lost = 0;
  for (const auto& [key, body] : results) {
    const LookupResponse seen = Lookup(stub, key);
    if (seen.state() != LookupResponse::STATE_COMPLETED ||
        seen.result().body() != body) {
      ++lost;
      ADD_FAILURE() << "acknowledged result of " << key << " lost";
    }
  }
  std::cout << results.size() << " acknowledged results read back, " << lost
            << " lost\n";
}

TEST_F(RedisReplicasTest, MasterFailoverUnderLoadLosesNoResultAckedByWait) {
  const std::vector<std::string> flags = {"--redis-wait-replicas=1",
                                          "--redis-wait-timeout=2s",
                                          "--redis-timeout=30s"};
  testing::ServerProcess& a = StartReplica(flags);
  testing::ServerProcess& b = StartReplica(flags);
  auto stub_a = a.NewStub();
  auto stub_b = b.NewStub();
  Load load({stub_a.get(), stub_b.get()}, 6);
  absl::SleepFor(absl::Seconds(1));
  const int before = load.completions();

  const std::vector<std::string> masters = Masters();
  ASSERT_EQ(masters.size(), 3u);
  const absl::Time killed_at = absl::Now();
  cluster_->Kill(masters[0]);
  absl::Status healthy = cluster_->WaitHealthy(absl::Seconds(30));
  ASSERT_TRUE(healthy.ok()) << healthy;
  const absl::Duration failover = absl::Now() - killed_at;
  const int at_failover = load.completions();
  // The promoted replica has no replica of its own: until the old master
  // rejoins, WAIT cannot be satisfied for its slots (those calls fail, as
  // promised). Bring it back, as an operator (or Kubernetes) would.
  ASSERT_TRUE(cluster_->Restart(masters[0]).ok());
  absl::Status rejoined =
      cluster_->WaitReplicaInSync(masters[0], absl::Seconds(30));
  ASSERT_TRUE(rejoined.ok()) << rejoined;
  const int errors_before_rejoin = load.errors();
  const int at_rejoin = load.completions();
  absl::SleepFor(absl::Seconds(2));
  load.Stop();
  const int after = load.completions() - at_rejoin;
  std::cout << "failover took " << absl::FormatDuration(failover) << "; "
            << before << " completions before the kill, "
            << at_rejoin - at_failover << " between failover and rejoin, "
            << after << " in the 2 s after, " << load.errors()
            << " failed calls (" << load.errors() - errors_before_rejoin
            << " after the rejoin)\n";

  // Both replicas lived through it and serve on the new master.
  EXPECT_EQ(a.Signal(0), 0);
  EXPECT_EQ(b.Signal(0), 0);
  EXPECT_GT(before, 0);
  EXPECT_GT(after, 0);
  ExpectAllReadable(*stub_a, load.acknowledged());
}

// With --redis-wait-replicas=1 a Complete is confirmed only once a replica
// has it: while every replica is stopped, Complete and its retries fail
// (the result is on the masters only), and so do replays of it; once the
// replicas are back, the retry is confirmed.
TEST_F(RedisReplicasTest, CompleteIsNotConfirmedUntilAReplicaHasIt) {
  testing::ServerProcess& server =
      StartReplica({"--redis-wait-replicas=1", "--redis-wait-timeout=300ms",
                    "--redis-timeout=2s"});
  auto stub = server.NewStub();
  // With every replica running, a Begin is confirmed; on a loaded machine
  // a replica may still take longer than the 300 ms WAIT, and the client's
  // answer to that UNAVAILABLE is to retry with the same owner.
  BeginRequest first = Begin("w-1");
  first.set_owner("w-1-owner");
  BeginResponse begun;
  grpc::Status begun_status;
  for (int attempt = 0; attempt < 10; ++attempt) {
    begun_status = stub->Begin(Context().get(), first, &begun);
    if (begun_status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
  }
  ASSERT_TRUE(begun_status.ok()) << begun_status.error_message();
  ASSERT_EQ(begun.outcome(), BeginResponse::OUTCOME_ACQUIRED);

  const std::vector<std::string> replicas = Replicas();
  ASSERT_EQ(replicas.size(), 3u);
  for (const std::string& replica : replicas) {
    cluster_->Signal(replica, SIGSTOP);
  }
  const CompleteRequest complete =
      Complete("w-1", begun.lease().token(), "paid");
  for (int attempt = 0; attempt < 3; ++attempt) {
    CompleteResponse done;
    grpc::Status status = stub->Complete(Context().get(), complete, &done);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "attempt " << attempt << ": " << status.error_message();
  }
  BeginResponse replay;
  EXPECT_EQ(stub->Begin(Context().get(), Begin("w-1"), &replay).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  for (const std::string& replica : replicas) {
    cluster_->Signal(replica, SIGCONT);
  }
  grpc::Status confirmed = grpc::Status::CANCELLED;
  for (int attempt = 0; attempt < 50 && !confirmed.ok(); ++attempt) {
    CompleteResponse done;
    confirmed = stub->Complete(Context().get(), complete, &done);
    if (!confirmed.ok()) absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(confirmed.ok()) << confirmed.error_message();
  EXPECT_EQ(Lookup(*stub, "w-1").result().body(), "paid");
}

// A Begin without an owner whose lease no replica confirmed answered
// UNAVAILABLE "retry", yet left the lease on the master under an owner
// nobody knew: the advised retry got IN_PROGRESS for the whole lease. The
// unconfirmed acquisition is now undone, so the retry acquires.
TEST_F(RedisReplicasTest, ABeginWhoseLeaseWasNotConfirmedDoesNotLockTheKey) {
  testing::ServerProcess& server =
      StartReplica({"--redis-wait-replicas=1", "--redis-wait-timeout=300ms",
                    "--redis-timeout=2s"});
  auto stub = server.NewStub();
  const std::vector<std::string> replicas = Replicas();
  for (const std::string& replica : replicas) {
    cluster_->Signal(replica, SIGSTOP);
  }
  BeginRequest request = Begin("u-1");
  request.mutable_lease()->set_seconds(60);
  BeginResponse refused;
  grpc::Status status = stub->Begin(Context().get(), request, &refused);
  for (const std::string& replica : replicas) {
    cluster_->Signal(replica, SIGCONT);
  }
  ASSERT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(status.error_message().find("was undone; retry the Begin"),
            std::string::npos)
      << status.error_message();
  // The retry the message advises acquires at once (not IN_PROGRESS for
  // the 60 s lease).
  BeginResponse retried;
  grpc::Status again = grpc::Status::CANCELLED;
  for (int attempt = 0; attempt < 50 && !again.ok(); ++attempt) {
    again = stub->Begin(Context().get(), request, &retried);
    if (!again.ok()) absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(again.ok()) << again.error_message();
  EXPECT_EQ(retried.outcome(), BeginResponse::OUTCOME_ACQUIRED);
}

TEST_F(RedisReplicasTest, ReshardingUnderLoadIsSurvived) {
  testing::ServerProcess& a = StartReplica({});
  testing::ServerProcess& b = StartReplica({});
  auto stub_a = a.NewStub();
  auto stub_b = b.NewStub();
  Load load({stub_a.get(), stub_b.get()}, 6);
  absl::SleepFor(absl::Milliseconds(500));
  const std::vector<std::string> masters = Masters();
  ASSERT_EQ(masters.size(), 3u);
  // A third of the key space moves there and back while calls run.
  ASSERT_TRUE(cluster_->MoveSlots(masters[0], masters[1], 2000).ok());
  ASSERT_TRUE(cluster_->MoveSlots(masters[1], masters[2], 2000).ok());
  absl::SleepFor(absl::Milliseconds(500));
  load.Stop();
  std::cout << load.completions() << " completions during the resharding, "
            << load.errors() << " failed calls\n";
  EXPECT_EQ(load.errors(), 0);
  EXPECT_GT(load.completions(), 50);
  ExpectAllReadable(*stub_b, load.acknowledged());
}

// An interrupted reshard leaves a slot MIGRATING on one master and
// IMPORTING on another. Keys keep working; the slot is shown on /metrics and
// logged once it stays open past --redis-migration-warn-after, and its end
// is logged too.
TEST_F(RedisReplicasTest, ASlotLeftMigratingIsLoggedAndShownInMetrics) {
  testing::ServerProcess& server =
      StartReplica({"--redis-migration-warn-after=1s"});
  auto stub = server.NewStub();
  httplib::Client http("127.0.0.1", server.metrics_port());
  auto metric = [&](const std::string& name) -> std::string {
    auto response = http.Get("/metrics");
    if (!response || response->status != 200) return "no answer";
    const size_t at = response->body.find("\n" + name + " ");
    if (at == std::string::npos) return "missing";
    const size_t value = at + name.size() + 2;
    return response->body.substr(value,
                                 response->body.find('\n', value) - value);
  };
  EXPECT_EQ(metric("idem_redis_slots_migrating"), "0");
  // Waits up to 15 s (the replica looks every 5 s) for `text` in the log.
  auto await_log = [&](const std::string& text) {
    const absl::Time give_up = absl::Now() + absl::Seconds(15);
    while (server.log().find(text) == std::string::npos &&
           absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(200));
    }
    return server.log().find(text) != std::string::npos;
  };

  const std::vector<std::string> masters = Masters();
  ASSERT_EQ(masters.size(), 3u);
  absl::StatusOr<std::vector<testing::LocalRedisCluster::NodeInfo>> nodes =
      cluster_->Nodes(masters[0]);
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  std::string source_id, target_id;
  for (const auto& node : *nodes) {
    if (node.address == masters[0]) source_id = node.id;
    if (node.address == masters[1]) target_id = node.id;
  }
  // The first slot masters[0] serves: the first number of its slot ranges.
  absl::StatusOr<std::string> own =
      cluster_->Cli(masters[0], {"CLUSTER", "NODES"});
  ASSERT_TRUE(own.ok()) << own.status();
  std::string slot;
  for (absl::string_view line : absl::StrSplit(*own, '\n')) {
    std::vector<std::string> fields = absl::StrSplit(line, ' ');
    if (fields.size() > 8 && absl::StrContains(fields[2], "myself")) {
      slot = fields[8].substr(0, fields[8].find('-'));
    }
  }
  ASSERT_FALSE(slot.empty()) << *own;
  ASSERT_TRUE(cluster_
                  ->Cli(masters[1],
                        {"CLUSTER", "SETSLOT", slot, "IMPORTING", source_id})
                  .ok());
  ASSERT_TRUE(cluster_
                  ->Cli(masters[0],
                        {"CLUSTER", "SETSLOT", slot, "MIGRATING", target_id})
                  .ok());

  ASSERT_TRUE(await_log("event=redis_slot_migration_stuck")) << server.log();
  const std::string log = server.log();
  const std::string line =
      log.substr(log.find("event=redis_slot_migration_stuck"));
  EXPECT_NE(line.find(absl::StrCat("slot=", slot, " ")), std::string::npos)
      << line;
  EXPECT_NE(line.find("from=" + masters[0]), std::string::npos) << line;
  EXPECT_NE(line.find("to=" + masters[1]), std::string::npos) << line;
  EXPECT_EQ(metric("idem_redis_slots_migrating"), "1");
  EXPECT_NE(metric("idem_redis_slot_migration_oldest_seconds"), "0");
  // Health stays SERVING (keys work) and a call still answers.
  auto healthz = http.Get("/healthz");
  ASSERT_TRUE(healthz);
  EXPECT_EQ(healthz->status, 200);
  BeginResponse begun;
  ASSERT_TRUE(stub->Begin(Context().get(), Begin("during"), &begun).ok());

  // Undone (both sides STABLE): the end is logged and the gauge drops.
  ASSERT_TRUE(
      cluster_->Cli(masters[0], {"CLUSTER", "SETSLOT", slot, "STABLE"}).ok());
  ASSERT_TRUE(
      cluster_->Cli(masters[1], {"CLUSTER", "SETSLOT", slot, "STABLE"}).ok());
  ASSERT_TRUE(await_log("event=redis_slot_migration_closed")) << server.log();
  EXPECT_EQ(metric("idem_redis_slots_migrating"), "0");
  EXPECT_EQ(metric("idem_redis_slot_migration_oldest_seconds"), "0");
}

}  // namespace
}  // namespace idem
