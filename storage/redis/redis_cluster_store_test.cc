// The Redis Cluster store against a real 6-node cluster (3 masters, 3
// replicas) of Debian's redis-server, started by this test on loopback:
// the conformance suite every store passes, Redis's own clock and TTLs, the
// cluster layer's slot hashing and redirects, and a resharding under load.
#include "storage/redis/redis_cluster_store.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "storage/redis/redis_cluster.h"
#include "storage/testing/store_conformance.h"
#include "tests/testing/local_redis_cluster.h"
#include "tests/testing/status_matchers.h"

namespace idem::storage {
namespace {

// One cluster for the whole binary (it takes a few seconds to form).
testing::LocalRedisCluster& Cluster() {
  static testing::LocalRedisCluster* const cluster = [] {
    absl::StatusOr<std::unique_ptr<testing::LocalRedisCluster>> started =
        testing::LocalRedisCluster::Start(3, 1);
    if (!started.ok()) {
      ADD_FAILURE() << started.status();
      std::abort();
    }
    return started->release();
  }();
  return *cluster;
}

std::vector<std::string> Seeds() {
  return absl::StrSplit(Cluster().Seeds(), ',');
}

RedisClusterOptions ClusterOptions(
    std::vector<std::string> seeds,
    absl::Duration deadline = absl::Seconds(10)) {
  RedisClusterOptions options;
  options.seeds = std::move(seeds);
  options.retry_deadline = deadline;
  return options;
}

// A prefix per store, so that tests never see each other's keys.
std::string FreshPrefix() {
  static std::atomic<int> next{0};
  static const uint64_t run = std::random_device{}();
  return absl::StrCat("test", run, "-", next++);
}

RedisClusterStoreOptions Options(const Clock* clock) {
  RedisClusterStoreOptions options;
  options.cluster.seeds = Seeds();
  options.prefix = FreshPrefix();
  options.clock = clock;
  options.threads = 4;
  return options;
}

std::unique_ptr<RedisClusterStore> OpenOrDie(RedisClusterStoreOptions options) {
  absl::StatusOr<std::unique_ptr<RedisClusterStore>> opened =
      RedisClusterStore::Open(std::move(options));
  if (!opened.ok()) {
    ADD_FAILURE() << opened.status();
    std::abort();
  }
  return *std::move(opened);
}

class RedisHarness final : public StoreHarness {
 public:
  explicit RedisHarness(const Clock* clock) : options_(Options(clock)) {
    Reopen();
  }
  ~RedisHarness() override {
    if (store_ != nullptr) store_->DeleteEverything().IgnoreError();
  }
  Store& store() override { return *store_; }
  // A restart of the replica: the data is in Redis and stays.
  void Reopen() override {
    store_.reset();
    store_ = OpenOrDie(options_);
  }

 private:
  RedisClusterStoreOptions options_;
  std::unique_ptr<RedisClusterStore> store_;
};

INSTANTIATE_TEST_SUITE_P(
    RedisCluster, StoreConformanceTest,
    ::testing::Values(StoreBackend{"ThreeMastersThreeReplicas",
                                   [](const Clock* clock) {
                                     return std::make_unique<RedisHarness>(
                                         clock);
                                   },
                                   /*tokens_grow_across_keys=*/false,
                                   /*peeks=*/false}),
    [](const ::testing::TestParamInfo<StoreBackend>& info) {
      return info.param.name;
    });

TEST(KeySlotTest, MatchesRedisClusterSpecification) {
  // The specification's CRC16 check value and hash-tag examples.
  EXPECT_EQ(KeySlot("123456789"), 0x31C3);
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("{user1000}.followers"));
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("user1000"));
  EXPECT_NE(KeySlot("foo{}{bar}"), KeySlot("bar"));  // Empty tag: all hashed.
  EXPECT_EQ(KeySlot("foo{{bar}}zap"), KeySlot("{bar"));
  EXPECT_EQ(KeySlot("foo{bar}{zap}"), KeySlot("bar"));
}

TEST(KeySlotTest, AgreesWithTheServersForRecordAndCounterKeys) {
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(Options(nullptr));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  const std::string node = cluster->Masters().front();
  for (const char* key : {"123456789", "foo{}{bar}", "foo{{bar}}zap",
                          "foo{bar}{zap}", "{}", "}{", "{user1000}.x"}) {
    ASSERT_OK_AND_ASSIGN(RedisReply slot,
                         cluster->RunOnNode(node, {"CLUSTER", "KEYSLOT", key}));
    EXPECT_EQ(slot.integer, KeySlot(key)) << key;
  }
  std::mt19937 random(7);
  for (int i = 0; i < 200; ++i) {
    std::string key;
    for (int c = 0; c < 1 + i % 40; ++c) {
      key.push_back(static_cast<char>(0x20 + random() % 95));  // Printable.
    }
    const std::string record_key = store->RecordKey({"ns", key});
    ASSERT_OK_AND_ASSIGN(
        RedisReply slot,
        cluster->RunOnNode(node, {"CLUSTER", "KEYSLOT", record_key}));
    EXPECT_EQ(slot.integer, KeySlot(record_key)) << key;
  }
  // Every slot's counter lives in that slot (a script may touch both).
  for (int slot = 0; slot < kRedisSlots; ++slot) {
    ASSERT_EQ(KeySlot(store->CounterKey(slot)), slot);
  }
}

TEST(RedisClusterTest, BadAddressesAndNonClusterNodesAreRefusedClearly) {
  EXPECT_STATUS_CODE(RedisCluster::Connect(ClusterOptions({"no-port"})),
                     absl::StatusCode::kInvalidArgument);
  // Nothing listens on port 1.
  absl::StatusOr<std::unique_ptr<RedisCluster>> refused =
      RedisCluster::Connect(ClusterOptions({"127.0.0.1:1"}, absl::Seconds(1)));
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("127.0.0.1:1"), std::string::npos)
      << refused.status();
}

// Redis's clock, not a test clock: leases lapse and results expire in real
// time, and Redis itself drops the expired record.
TEST(RedisClusterStoreTest, RedisClockRunsLeasesAndTtlsDropExpiredRecords) {
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(Options(nullptr));
  const KeyId id{"clock", "k"};
  ASSERT_OK_AND_ASSIGN(
      BeginResult first,
      store->Begin({id, "fp", "", absl::Seconds(1), absl::Seconds(1)}));
  ASSERT_EQ(first.outcome, BeginOutcome::kAcquired);
  // Redis's TIME and this machine's clock are the same clock here.
  EXPECT_LT(absl::AbsDuration(first.lease_expires_at -
                              (absl::Now() + absl::Seconds(1))),
            absl::Milliseconds(200));
  ASSERT_OK_AND_ASSIGN(
      BeginResult busy,
      store->Begin({id, "fp", "", absl::Seconds(1), absl::Seconds(1)}));
  EXPECT_EQ(busy.outcome, BeginOutcome::kInProgress);
  absl::SleepFor(absl::Milliseconds(1100));
  ASSERT_OK_AND_ASSIGN(
      BeginResult taken,
      store->Begin({id, "fp", "", absl::Seconds(1), absl::Seconds(1)}));
  ASSERT_EQ(taken.outcome, BeginOutcome::kAcquired);
  EXPECT_TRUE(taken.took_over);
  EXPECT_GT(taken.token, first.token);
  ASSERT_OK(store->Complete(
      {id, taken.token, Result{200, "done", {}}, absl::Seconds(1)}));

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  const std::string key = store->RecordKey(id);
  ASSERT_OK_AND_ASSIGN(RedisReply ttl,
                       cluster->Run(KeySlot(key), {"PTTL", key}));
  EXPECT_GT(ttl.integer, 0);
  EXPECT_LE(ttl.integer, 1100);
  absl::SleepFor(absl::Milliseconds(1200));
  ASSERT_OK_AND_ASSIGN(RedisReply exists,
                       cluster->Run(KeySlot(key), {"EXISTS", key}));
  EXPECT_EQ(exists.integer, 0) << "Redis kept an expired record";
  ASSERT_OK_AND_ASSIGN(KeySnapshot gone, store->Lookup(id));
  EXPECT_EQ(gone.state, KeyState::kAbsent);

  // The key starts over, and its token still grows: the slot's counter
  // outlives the record.
  ASSERT_OK_AND_ASSIGN(
      BeginResult again,
      store->Begin({id, "other", "", absl::Seconds(1), absl::Seconds(1)}));
  ASSERT_EQ(again.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(again.token, taken.token);
  ASSERT_OK(store->Release({id, again.token}));
  ASSERT_OK_AND_ASSIGN(
      BeginResult after_release,
      store->Begin({id, "other", "", absl::Seconds(1), absl::Seconds(1)}));
  EXPECT_GT(after_release.token, again.token);
  ASSERT_OK(store->DeleteEverything());
}

// A master that lost the scripts (restarted, failed over to, SCRIPT FLUSH)
// gets them again on first use.
TEST(RedisClusterStoreTest, ScriptsFlushedFromTheMastersAreSentAgain) {
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(Options(nullptr));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  ASSERT_OK(cluster->RunOnEveryMaster({"SCRIPT", "FLUSH"}).status());
  for (int i = 0; i < 20; ++i) {  // Keys on every master.
    const KeyId id{"flushed", absl::StrCat(i)};
    ASSERT_OK_AND_ASSIGN(
        BeginResult begun,
        store->Begin({id, "fp", "", absl::Seconds(30), absl::Hours(1)}));
    ASSERT_EQ(begun.outcome, BeginOutcome::kAcquired);
    ASSERT_OK(store->Complete({id, begun.token, Result{200, "x", {}}, {}}));
  }
  ASSERT_OK(store->DeleteEverything());
}

// More changes waiting than --max-pending-writes: refused as overload, as
// the RocksDB store does, while the ones queued still complete.
TEST(RedisClusterStoreTest, AFullQueueIsRefusedAsOverload) {
  RedisClusterStoreOptions options = Options(nullptr);
  options.threads = 1;
  options.max_pending = 1;
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(options);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  // Scripts wait while the masters are paused: the one thread is busy.
  ASSERT_OK(
      cluster->RunOnEveryMaster({"CLIENT", "PAUSE", "1500", "WRITE"}).status());
  absl::Notification first_done;
  absl::Notification second_done;
  absl::Status first;
  absl::Status second;
  absl::Status third;
  auto begin = [&](const std::string& key, absl::Status* status,
                   absl::Notification* done) {
    store->BeginAsync(
        {{"overload", key}, "fp", "", absl::Seconds(30), absl::Hours(1)},
        [status, done](const absl::StatusOr<BeginResult>& begun) {
          *status = begun.status();
          if (done != nullptr) done->Notify();
        });
  };
  begin("1", &first, &first_done);
  absl::SleepFor(absl::Milliseconds(300));  // Taken by the thread.
  begin("2", &second, &second_done);        // Queued.
  begin("3", &third, nullptr);              // Refused at once.
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted) << third;
  first_done.WaitForNotification();
  second_done.WaitForNotification();
  EXPECT_OK(first);
  EXPECT_OK(second);
  ASSERT_OK(store->DeleteEverything());
}

// Connections are killed under the store again and again (CLIENT KILL),
// so that some writes are applied but their replies lost. Retried, every
// operation still gives the answer of the write it made: Begin acquires,
// Delete reports the key existed, ForceRelease reports its token.
TEST(RedisClusterStoreTest, LostRepliesAreRetriedWithTheirOwnAnswers) {
  RedisClusterStoreOptions options = Options(nullptr);
  options.threads = 4;
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(options);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> killer,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  std::atomic<bool> stop{false};
  std::atomic<int> kills{0};
  std::thread kill_loop([&] {
    while (!stop) {
      absl::StatusOr<std::vector<std::pair<std::string, RedisReply>>> killed =
          killer->RunOnEveryMaster(
              {"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"});
      if (killed.ok()) {
        for (const auto& [address, reply] : *killed)
          kills += static_cast<int>(reply.integer);
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
  });
  constexpr int kKeys = 150;
  for (int i = 0; i < kKeys; ++i) {
    const KeyId id{"lost", absl::StrCat(i)};
    absl::StatusOr<BeginResult> begun =
        store->Begin({id, "fp", "", absl::Seconds(30), absl::Hours(1)});
    ASSERT_OK(begun.status());
    ASSERT_EQ(begun->outcome, BeginOutcome::kAcquired) << i;
    if (i % 2 == 0) {
      absl::StatusOr<uint64_t> fenced = store->ForceRelease(id);
      ASSERT_OK(fenced.status()) << i;
      EXPECT_GT(*fenced, begun->token);
      // Released now (Delete would report it absent): acquire it again.
      absl::StatusOr<BeginResult> again =
          store->Begin({id, "fp", "", absl::Seconds(30), absl::Hours(1)});
      ASSERT_OK(again.status());
      ASSERT_EQ(again->outcome, BeginOutcome::kAcquired) << i;
      EXPECT_GT(again->token, *fenced);
    }
    absl::StatusOr<bool> deleted = store->Delete(id);
    ASSERT_OK(deleted.status()) << i;
    EXPECT_TRUE(*deleted) << i;
  }
  stop = true;
  kill_loop.join();
  std::cout << kills.load() << " connections killed under " << kKeys * 2.5
            << " operations\n";
  EXPECT_GT(kills.load(), 0);
  ASSERT_OK(store->DeleteEverything());
}

// With wait_replicas, an answer given without a write (a retried Complete,
// a replay) is confirmed by a no-op write and WAIT; a master that refuses
// writes (out of memory under noeviction) cannot confirm, and the answer
// is UNAVAILABLE rather than an unconfirmed OK.
TEST(RedisClusterStoreTest, UnconfirmableAnswersAreUnavailable) {
  RedisClusterStoreOptions options = Options(nullptr);
  options.wait_replicas = 1;
  options.wait_timeout = absl::Milliseconds(500);
  options.cluster.retry_deadline = absl::Seconds(2);
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(options);
  const KeyId id{"confirm", "k"};
  ASSERT_OK_AND_ASSIGN(
      BeginResult begun,
      store->Begin({id, "fp", "", absl::Seconds(30), absl::Hours(1)}));
  const CompleteCommand complete{id, begun.token, Result{200, "paid", {}}, {}};
  ASSERT_OK(store->Complete(complete));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  ASSERT_OK(
      cluster->RunOnEveryMaster({"CONFIG", "SET", "maxmemory", "1"}).status());
  absl::StatusOr<CompleteResult> again = store->Complete(complete);
  absl::StatusOr<BeginResult> replay =
      store->Begin({id, "fp", "", absl::Seconds(30), absl::Hours(1)});
  ASSERT_OK(
      cluster->RunOnEveryMaster({"CONFIG", "SET", "maxmemory", "0"}).status());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable)
      << again.status();
  EXPECT_EQ(replay.status().code(), absl::StatusCode::kUnavailable)
      << replay.status();
  ASSERT_OK(store->Complete(complete));
  ASSERT_OK_AND_ASSIGN(
      BeginResult replayed,
      store->Begin({id, "fp", "", absl::Seconds(30), absl::Hours(1)}));
  EXPECT_EQ(replayed.outcome, BeginOutcome::kCompleted);
  ASSERT_OK(store->DeleteEverything());
}

// Eviction would drop records and token counters: refused at start.
TEST(RedisClusterStoreTest, AnEvictingClusterIsRefused) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  const std::string master = cluster->Masters().back();
  ASSERT_OK(cluster
                ->RunOnNode(master, {"CONFIG", "SET", "maxmemory-policy",
                                     "allkeys-lru"})
                .status());
  absl::StatusOr<std::unique_ptr<RedisClusterStore>> opened =
      RedisClusterStore::Open(Options(nullptr));
  ASSERT_OK(cluster
                ->RunOnNode(master,
                            {"CONFIG", "SET", "maxmemory-policy", "noeviction"})
                .status());
  ASSERT_EQ(opened.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(opened.status().message().find("noeviction"), std::string::npos)
      << opened.status();
}

// A master without an append-only file that restarts before its node
// timeout comes back empty (its replica then resyncs from it): acknowledged
// results and token counters are lost. Refused unless the operator accepts
// the risk by name.
TEST(RedisClusterStoreTest, AMasterWithoutAnAppendOnlyFileIsRefused) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  const std::string master = cluster->Masters().front();
  ASSERT_OK(cluster->RunOnNode(master, {"CONFIG", "SET", "appendonly", "no"})
                .status());
  absl::StatusOr<std::unique_ptr<RedisClusterStore>> refused =
      RedisClusterStore::Open(Options(nullptr));
  RedisClusterStoreOptions accepting = Options(nullptr);
  accepting.accept_loss_on_restart = true;
  absl::StatusOr<std::unique_ptr<RedisClusterStore>> accepted =
      RedisClusterStore::Open(accepting);
  ASSERT_OK(cluster->RunOnNode(master, {"CONFIG", "SET", "appendonly", "yes"})
                .status());
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find(master + " has appendonly no"),
            std::string::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find("--redis-accept-loss-on-restart"),
            std::string::npos);
  ASSERT_OK(accepted);
  const std::vector<std::string> notes = (*accepted)->durability_notes();
  EXPECT_TRUE(std::any_of(notes.begin(), notes.end(), [&](const auto& n) {
    return absl::StrContains(n, master + ": appendonly no, accepted");
  })) << absl::StrJoin(notes, "\n");
  // The test cluster fsyncs every second: said, not refused.
  EXPECT_TRUE(std::any_of(notes.begin(), notes.end(), [](const auto& n) {
    return absl::StrContains(n, "appendfsync everysec");
  })) << absl::StrJoin(notes, "\n");
}

// What every call will need is tried at start: a user without a permission
// or a --redis-wait-replicas the masters cannot meet stops the start with a
// message naming it (before, Begin could succeed and every Complete fail).
TEST(RedisClusterStoreTest, MissingPermissionsAndReplicasAreFoundAtStart) {
  struct Case {
    const char* user;
    const char* rules;  // ACL SETUSER rules besides on, password, keys.
    int wait_replicas;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"idem-nochannel", "+@all", 0, "PUBLISH to"},
      {"idem-nowait", "&* +@all -wait", 1, "refused WAIT"},
      {"idem-noevalsha", "&* +@all -evalsha", 0, "the read script"},
      {"idem-nosubscribe", "&* +@all -subscribe", 0, "refused SUBSCRIBE"},
      {"idem-ok", "&* +@all", 2, "fewer than --redis-wait-replicas=2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.user);
    for (const std::string& node : Cluster().Addresses()) {
      std::vector<std::string> setuser = {"ACL", "SETUSER", c.user, "reset",
                                          "on",  ">pw",     "~*"};
      for (absl::string_view rule : absl::StrSplit(c.rules, ' ')) {
        setuser.emplace_back(rule);
      }
      ASSERT_OK(Cluster().Cli(node, setuser).status());
    }
    RedisClusterStoreOptions options = Options(nullptr);
    options.cluster.user = c.user;
    options.cluster.password = "pw";
    options.cluster.retry_deadline = absl::Seconds(2);
    options.wait_replicas = c.wait_replicas;
    options.wait_timeout = absl::Milliseconds(300);
    absl::StatusOr<std::unique_ptr<RedisClusterStore>> opened =
        RedisClusterStore::Open(options);
    ASSERT_FALSE(opened.ok()) << "opened";
    EXPECT_EQ(opened.status().code(), absl::StatusCode::kFailedPrecondition)
        << opened.status();
    EXPECT_NE(opened.status().message().find(c.expected), std::string::npos)
        << opened.status();
    std::printf("%s: %s\n", c.user,
                std::string(opened.status().message()).c_str());
  }
  // With what it needs, the same kind of user starts.
  RedisClusterStoreOptions options = Options(nullptr);
  options.cluster.user = "idem-ok";
  options.cluster.password = "pw";
  options.wait_replicas = 1;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisClusterStore> store,
                       RedisClusterStore::Open(options));
  // A permission taken away later turns health bad within the re-check
  // period (10 s), and back when it returns.
  auto set_channels = [&](const char* rule) {
    for (const std::string& node : Cluster().Addresses()) {
      ASSERT_OK(
          Cluster().Cli(node, {"ACL", "SETUSER", "idem-ok", rule}).status());
    }
  };
  set_channels("resetchannels");
  absl::Status health;
  for (int i = 0; i < 150; ++i) {
    health = store->Health();
    if (!health.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(health.message().find("can't publish to the channel"),
            std::string::npos)
      << health;
  set_channels("&*");
  for (int i = 0; i < 50 && !store->Health().ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_OK(store->Health());
}

// A replica without an append-only file promoted to master (a failover)
// makes the store unhealthy until it has one.
TEST(RedisClusterStoreTest, AFailoverToAMasterWithoutPersistenceIsUnhealthy) {
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(Options(nullptr));
  ASSERT_OK(store->Health());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  const std::string master = cluster->Masters().front();
  ASSERT_OK_AND_ASSIGN(std::vector<testing::LocalRedisCluster::NodeInfo> nodes,
                       Cluster().Nodes(master));
  std::string master_id, replica;
  for (const auto& node : nodes) {
    if (node.address == master) master_id = node.id;
  }
  for (const auto& node : nodes) {
    if (!node.master && node.master_id == master_id) replica = node.address;
  }
  ASSERT_FALSE(replica.empty());
  ASSERT_OK(
      Cluster().Cli(replica, {"CONFIG", "SET", "appendonly", "no"}).status());
  ASSERT_OK(Cluster().Cli(replica, {"CLUSTER", "FAILOVER"}).status());
  absl::Status health;
  for (int i = 0; i < 100; ++i) {
    health = store->Health();
    if (absl::StrContains(health.message(), "appendonly no")) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(health.message().find(replica + " has appendonly no"),
            std::string::npos)
      << health;
  // Mended: healthy again within a few checks.
  ASSERT_OK(
      Cluster().Cli(replica, {"CONFIG", "SET", "appendonly", "yes"}).status());
  for (int i = 0; i < 100 && !store->Health().ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_OK(store->Health());
  // The old master takes its role back, for the tests that follow.
  ASSERT_OK(Cluster().Cli(master, {"CLUSTER", "FAILOVER"}).status());
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<std::string> role = Cluster().Cli(master, {"ROLE"});
    if (role.ok() && absl::StartsWith(*role, "master")) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
}

// A hung master (SIGSTOP) kept health SERVING for 5.5 to 8 s: the health
// PING waited the pooled connections' command timeout, twice. So did Stats.
TEST(RedisClusterStoreTest, AHungMasterTurnsHealthBadWithinSeconds) {
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(Options(nullptr));
  ASSERT_OK(store->Health());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  const std::string master = cluster->Masters().back();
  Cluster().Signal(master, SIGSTOP);
  const absl::Time stopped = absl::Now();
  while (store->Health().ok() && absl::Now() - stopped < absl::Seconds(10)) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const absl::Duration noticed = absl::Now() - stopped;
  // Stats (a metrics scrape, which /healthz waits behind) waits for the
  // hung master no longer than a health check does: it took 4 s.
  const absl::Time stats_start = absl::Now();
  store->Stats();
  const absl::Duration stats_took = absl::Now() - stats_start;
  Cluster().Signal(master, SIGCONT);
  std::printf("health turned bad %s after the master hung; Stats took %s\n",
              absl::FormatDuration(noticed).c_str(),
              absl::FormatDuration(stats_took).c_str());
  EXPECT_LT(noticed, absl::Seconds(3));
  EXPECT_LT(stats_took, 2 * RedisCluster::kHealthTimeout);
  for (int i = 0; i < 100 && !store->Health().ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_OK(store->Health());
}

// The slowest of 12 Begins (on keys spread over every master) while one
// master is SIGSTOPped; each Begin gets `caller_deadline` from its start.
// The master resumes, and the store is healthy again, before it returns.
absl::Duration SlowestBeginWithAMasterHung(absl::Duration redis_timeout,
                                           absl::Duration caller_deadline) {
  RedisClusterStoreOptions options = Options(nullptr);
  options.cluster.retry_deadline = redis_timeout;
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(options);
  absl::StatusOr<std::unique_ptr<RedisCluster>> cluster =
      RedisCluster::Connect(ClusterOptions(Seeds()));
  EXPECT_OK(cluster.status());
  if (!cluster.ok()) return absl::InfiniteDuration();
  const std::string master = (*cluster)->Masters().front();
  Cluster().Signal(master, SIGSTOP);
  absl::Duration slowest;
  int failed = 0;
  for (int i = 0; i < 12; ++i) {
    BeginCommand begin{{"hung", absl::StrCat("k-", i)},
                       "fp",
                       "",
                       absl::Seconds(30),
                       absl::Hours(1)};
    const absl::Time start = absl::Now();
    begin.deadline = start + caller_deadline;
    if (!store->Begin(begin).ok()) ++failed;
    slowest = std::max(slowest, absl::Now() - start);
  }
  Cluster().Signal(master, SIGCONT);
  std::printf(
      "slowest of 12 Begins with a master hung (timeout %s, "
      "deadline %s): %s, %d failed\n",
      absl::FormatDuration(redis_timeout).c_str(),
      absl::FormatDuration(caller_deadline).c_str(),
      absl::FormatDuration(slowest).c_str(), failed);
  for (int i = 0; i < 100 && !store->Health().ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  return slowest;
}

// With a master hung, a call took 18.5 s under --redis-timeout=10s: the
// deadline was checked only between attempts, and each round trip of an
// operation had a deadline of its own. Now one deadline bounds the whole
// operation and every attempt's wait. 3 s is not a multiple of the 2 s
// command timeout: a second attempt used to start before the deadline and
// wait its full command timeout past it (6.1 s).
TEST(RedisClusterStoreTest, CallsOnAHungMasterAnswerWithinTheRedisTimeout) {
  EXPECT_LT(
      SlowestBeginWithAMasterHung(absl::Seconds(3), absl::InfiniteDuration()),
      absl::Milliseconds(3700));
}

// The caller's deadline, when sooner than --redis-timeout, bounds the
// operation too: its thread is free again when the caller has given up.
TEST(RedisClusterStoreTest, TheCallersDeadlineBoundsTheOperation) {
  EXPECT_LT(
      SlowestBeginWithAMasterHung(absl::Seconds(5), absl::Milliseconds(500)),
      absl::Milliseconds(1200));
}

// While a slot is being migrated, Redis refuses scripts whose keys are
// split between the two nodes (TRYAGAIN): every new key's Begin failed
// after --redis-timeout, as did existing keys once the slot's token
// counter had moved. Transitions now switch to single-key scripts.
TEST(SlotMigrationsTest, EachSideReportsItsOwnOpenMigrations) {
  // CLUSTER NODES as the source (first line, "myself") sees a migration to
  // the second node and an import from the third; other nodes' brackets
  // are not this node's business.
  const std::string nodes =
      "aaa 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5000 "
      "[93->-bbb] [7000-<-ccc]\n"
      "bbb 127.0.0.1:7002@17002,host-b master - 0 0 2 connected 5001-10000 "
      "[5-<-aaa]\n"
      "ccc 10.0.0.3:7003@17003 master - 0 0 3 connected 10001-16383\n";
  const std::vector<SlotMigration> seen = ParseSlotMigrations(nodes);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].slot, 93);
  EXPECT_EQ(seen[0].from, "127.0.0.1:7001");
  EXPECT_EQ(seen[0].to, "127.0.0.1:7002");
  EXPECT_EQ(seen[1].slot, 7000);
  EXPECT_EQ(seen[1].from, "10.0.0.3:7003");
  EXPECT_EQ(seen[1].to, "127.0.0.1:7001");
  // An unknown node id leaves that side empty; garbage is skipped.
  const std::vector<SlotMigration> odd = ParseSlotMigrations(
      "aaa 127.0.0.1:7001@17001 myself,master - 0 0 1 connected [12->-zzz] "
      "[x->-bbb] [99999->-bbb] [12]\n");
  ASSERT_EQ(odd.size(), 1u);
  EXPECT_EQ(odd[0].slot, 12);
  EXPECT_EQ(odd[0].to, "");
  EXPECT_TRUE(ParseSlotMigrations("").empty());
}

TEST(RedisClusterStoreTest, KeysWorkWhileTheirSlotIsBeingMigrated) {
  RedisClusterStoreOptions options = Options(nullptr);
  options.cluster.retry_deadline = absl::Seconds(5);
  // A migration open for over a second is reported (and then its end).
  absl::Mutex reports_mu;
  std::vector<SlotMigrationReport> reports;
  options.migration_stuck_after = absl::Seconds(1);
  options.on_slot_migration = [&](const SlotMigrationReport& report) {
    absl::MutexLock lock(&reports_mu);
    reports.push_back(report);
  };
  // The reports once there are `count` (the store looks every 5 s).
  auto await_reports = [&](size_t count) {
    const absl::Time give_up = absl::Now() + absl::Seconds(15);
    while (true) {
      {
        absl::MutexLock lock(&reports_mu);
        if (reports.size() >= count || absl::Now() > give_up) return reports;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  };
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(options);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  // Not a structured binding: clang 14 cannot capture one in a lambda.
  const std::string source = cluster->MasterSlots().front().first;
  const int slot = cluster->MasterSlots().front().second;
  std::string target;
  for (const std::string& master : cluster->Masters()) {
    if (master != source) target = master;
  }
  // Two keys of that slot (the record key's hash tag is namespace NUL key),
  // and the slot's token counter (its tag: the first number in the slot).
  auto key_in_slot = [&](const std::string& stem) {
    for (int i = 0;; ++i) {
      std::string key = absl::StrCat(stem, i);
      if (KeySlot(absl::StrCat("{migrating", std::string(1, '\0'), key, "}")) ==
          slot) {
        return key;
      }
    }
  };
  const std::string existing = key_in_slot("old-");
  const std::string fresh = key_in_slot("new-");
  std::string counter;
  for (int i = 0; counter.empty(); ++i) {
    if (KeySlot(absl::StrCat(i)) == slot) {
      counter = absl::StrCat(options.prefix, ":t:{", i, "}");
    }
  }
  auto begin = [&](const std::string& key) {
    return store->Begin(
        {{"migrating", key}, "fp", "", absl::Seconds(30), absl::Hours(1)});
  };
  ASSERT_OK_AND_ASSIGN(BeginResult old_lease, begin(existing));
  ASSERT_OK(store->Complete({{"migrating", existing},
                             old_lease.token,
                             Result{201, "old", {}},
                             std::nullopt}));

  ASSERT_OK_AND_ASSIGN(auto nodes, Cluster().Nodes(source));
  std::string source_id, target_id;
  for (const auto& node : nodes) {
    if (node.address == source) source_id = node.id;
    if (node.address == target) target_id = node.id;
  }
  const std::string slot_text = absl::StrCat(slot);
  ASSERT_OK(Cluster()
                .Cli(target,
                     {"CLUSTER", "SETSLOT", slot_text, "IMPORTING", source_id})
                .status());
  ASSERT_OK(Cluster()
                .Cli(source,
                     {"CLUSTER", "SETSLOT", slot_text, "MIGRATING", target_id})
                .status());
  // The counter moves first, the records stay: every key's keys are split.
  const std::string target_port = target.substr(target.rfind(':') + 1);
  ASSERT_OK(Cluster()
                .Cli(source, {"MIGRATE", "127.0.0.1", target_port, "", "0",
                              "5000", "KEYS", counter})
                .status());

  const absl::Time start = absl::Now();
  ASSERT_OK_AND_ASSIGN(BeginResult acquired, begin(fresh));
  EXPECT_EQ(acquired.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(acquired.token, old_lease.token);
  ASSERT_OK(store->Complete({{"migrating", fresh},
                             acquired.token,
                             Result{201, "new", {}},
                             std::nullopt}));
  ASSERT_OK_AND_ASSIGN(BeginResult replay, begin(fresh));
  EXPECT_EQ(replay.outcome, BeginOutcome::kCompleted);
  ASSERT_OK_AND_ASSIGN(BeginResult old_replay, begin(existing));
  EXPECT_EQ(old_replay.outcome, BeginOutcome::kCompleted);
  EXPECT_EQ(old_replay.result.body, "old");
  ASSERT_OK_AND_ASSIGN(KeySnapshot looked, store->Lookup({"migrating", fresh}));
  EXPECT_EQ(looked.result.body, "new");
  const absl::Duration took = absl::Now() - start;
  std::printf("new and existing keys of a migrating slot: 5 calls in %s\n",
              absl::FormatDuration(took).c_str());
  EXPECT_LT(took, absl::Seconds(2));

  // Left open, the migration is reported stuck, with both sides, and
  // counted in the store's stats (the server's metrics).
  std::vector<SlotMigrationReport> seen = await_reports(1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].migration.slot, slot);
  EXPECT_EQ(seen[0].migration.from, source);
  EXPECT_EQ(seen[0].migration.to, target);
  EXPECT_FALSE(seen[0].closed);
  EXPECT_GE(seen[0].open_for, absl::Seconds(1));
  const StoreStats during = store->Stats();
  ASSERT_TRUE(during.slot_migrations.has_value());
  EXPECT_EQ(during.slot_migrations->open, 1u);
  EXPECT_GE(during.slot_migrations->oldest, absl::Seconds(1));

  // The migration ends: the rest of the slot's keys move (through hiredis:
  // record keys hold a NUL, which redis-cli's arguments cannot), and the
  // slot is the target's everywhere.
  for (int round = 0; round < 20; ++round) {
    ASSERT_OK_AND_ASSIGN(RedisReply keys,
                         cluster->RunOnNode(source, {"CLUSTER", "GETKEYSINSLOT",
                                                     slot_text, "100"}));
    if (keys.elements.empty()) break;
    RedisCommand migrate = {"MIGRATE", "127.0.0.1", target_port, "",
                            "0",       "5000",      "KEYS"};
    for (const RedisReply& name : keys.elements) migrate.push_back(name.text);
    ASSERT_OK_AND_ASSIGN(RedisReply migrated,
                         cluster->RunOnNode(source, migrate));
    ASSERT_FALSE(migrated.is_error()) << migrated.text;
  }
  for (const std::string& master : cluster->Masters()) {
    ASSERT_OK(
        Cluster()
            .Cli(master, {"CLUSTER", "SETSLOT", slot_text, "NODE", target_id})
            .status());
  }
  ASSERT_OK_AND_ASSIGN(KeySnapshot moved, store->Lookup({"migrating", fresh}));
  EXPECT_EQ(moved.result.body, "new");
  ASSERT_OK_AND_ASSIGN(KeySnapshot old_moved,
                       store->Lookup({"migrating", existing}));
  EXPECT_EQ(old_moved.result.body, "old");

  // Its end is reported once, and the count goes back to 0.
  seen = await_reports(2);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].migration.slot, slot);
  EXPECT_TRUE(seen[1].closed);
  EXPECT_EQ(store->Stats().slot_migrations->open, 0u);
}

// Two stores (two replicas) on the same cluster race for the same keys:
// exactly one acquisition per key, and each learns of the other's changes.
TEST(RedisClusterStoreTest, TwoReplicasRacingOnKeysAcquireEachOnce) {
  RedisClusterStoreOptions options = Options(nullptr);
  std::unique_ptr<RedisClusterStore> a = OpenOrDie(options);
  std::unique_ptr<RedisClusterStore> b = OpenOrDie(options);
  absl::Mutex mu;
  std::vector<KeyId> announced;
  b->WatchChanges([&](const KeyId& id) {
    absl::MutexLock lock(&mu);
    announced.push_back(id);
  });
  absl::SleepFor(absl::Milliseconds(300));  // Subscribed.
  constexpr int kKeys = 50;
  std::atomic<int> acquired{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      RedisClusterStore* store = t % 2 == 0 ? a.get() : b.get();
      for (int k = 0; k < kKeys; ++k) {
        absl::StatusOr<BeginResult> begun =
            store->Begin({{"race", absl::StrCat(k)},
                          "fp",
                          "",
                          absl::Seconds(30),
                          absl::Hours(1)});
        ASSERT_OK(begun.status());
        if (begun->outcome == BeginOutcome::kAcquired) {
          ++acquired;
          ASSERT_OK(store->Complete({{"race", absl::StrCat(k)},
                                     begun->token,
                                     Result{200, absl::StrCat("by ", t), {}},
                                     std::nullopt}));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(acquired.load(), kKeys);
  // Every completion was announced to the other replica.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  for (bool all = false; !all && absl::Now() < deadline;) {
    absl::SleepFor(absl::Milliseconds(20));
    absl::MutexLock lock(&mu);
    all = announced.size() >= kKeys;
  }
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(announced.size(), static_cast<size_t>(kKeys));
    for (const KeyId& id : announced) EXPECT_EQ(id.name_space, "race");
  }
  ASSERT_OK(a->DeleteEverything());
}

// Slots migrate (redis-cli --cluster reshard: ASK during the move, MOVED
// after) while four threads Begin and Complete: every call succeeds and
// every result is still there afterwards.
TEST(RedisClusterStoreTest, ReshardingUnderLoadLosesNothing) {
  RedisClusterStoreOptions options = Options(nullptr);
  options.threads = 8;
  std::unique_ptr<RedisClusterStore> store = OpenOrDie(options);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisCluster> cluster,
                       RedisCluster::Connect(ClusterOptions(Seeds())));
  std::vector<std::string> masters = cluster->Masters();
  ASSERT_GE(masters.size(), 2u);

  // Keys whose tokens must keep growing although their slots (and the
  // slots' token counters) move to another master.
  std::map<std::string, uint64_t> released;
  for (int i = 0; i < 200; ++i) {  // About 18 in the slots that move.
    const KeyId id{"reshard-tokens", absl::StrCat(i)};
    ASSERT_OK_AND_ASSIGN(
        BeginResult begun,
        store->Begin({id, "fp", "", absl::Seconds(30), absl::Hours(1)}));
    ASSERT_OK(store->Release({id, begun.token}));
    released[id.key] = begun.token;
  }

  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::map<std::string, std::string> completed;  // key -> body
  std::atomic<int> failures{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        const std::string key = absl::StrCat(t, "-", i);
        const KeyId id{"reshard", key};
        absl::StatusOr<BeginResult> begun =
            store->Begin({id, "fp", "", absl::Seconds(30), absl::Hours(1)});
        if (!begun.ok() || begun->outcome != BeginOutcome::kAcquired) {
          ADD_FAILURE() << key << ": " << begun.status();
          ++failures;
          continue;
        }
        absl::StatusOr<CompleteResult> done = store->Complete(
            {id, begun->token, Result{200, "body " + key, {}}, std::nullopt});
        if (!done.ok()) {
          ADD_FAILURE() << key << ": " << done.status();
          ++failures;
          continue;
        }
        absl::MutexLock lock(&mu);
        completed[key] = "body " + key;
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_OK(Cluster().MoveSlots(masters[0], masters[1], 1500));
  ASSERT_OK(Cluster().MoveSlots(masters[1], masters[0], 1500));
  absl::SleepFor(absl::Milliseconds(300));
  stop = true;
  for (std::thread& thread : load) thread.join();
  EXPECT_EQ(failures.load(), 0);

  for (const auto& [key, token] : released) {
    ASSERT_OK_AND_ASSIGN(BeginResult again,
                         store->Begin({{"reshard-tokens", key},
                                       "fp",
                                       "",
                                       absl::Seconds(30),
                                       absl::Hours(1)}));
    ASSERT_EQ(again.outcome, BeginOutcome::kAcquired);
    EXPECT_GT(again.token, token) << key;
  }

  absl::MutexLock lock(&mu);
  EXPECT_GT(completed.size(), 100u);
  for (const auto& [key, body] : completed) {
    ASSERT_OK_AND_ASSIGN(KeySnapshot seen, store->Lookup({"reshard", key}));
    ASSERT_EQ(seen.state, KeyState::kCompleted) << key;
    EXPECT_EQ(seen.result.body, body);
  }
  ASSERT_OK(store->DeleteEverything());
}

}  // namespace
}  // namespace idem::storage
