// The PostgreSQL store against a real PostgreSQL 15 (Debian's packages)
// that this test initialises and runs on loopback, as an unprivileged user:
// the conformance suite every store passes, then what only a shared SQL
// database brings — migrations raced by replicas, the reaper, announcements
// between replicas, the database crashing and coming back, the statement
// timeout, and a failover to a synchronous standby.
#include "storage/postgres/postgres_store.h"

#include <algorithm>
#include <atomic>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "storage/testing/store_conformance.h"
#include "tests/testing/local_postgres.h"
#include "tests/testing/status_matchers.h"

namespace idem::storage {
namespace {

using testing::LocalPostgres;

// One server for the conformance suite and the tests that do not stop it.
LocalPostgres& Shared() {
  static LocalPostgres* const pg = [] {
    absl::StatusOr<std::unique_ptr<LocalPostgres>> started =
        LocalPostgres::Start();
    if (!started.ok()) {
      ADD_FAILURE() << started.status();
      std::abort();
    }
    return started->release();
  }();
  return *pg;
}

// A schema per store, so that tests never see each other's keys.
std::string FreshSchema() {
  static std::atomic<int> next{0};
  static const uint32_t run = std::random_device{}();
  return absl::StrCat("test_", run, "_", next++);
}

PostgresStoreOptions Options(const std::string& uri, const Clock* clock,
                             const std::string& schema = FreshSchema()) {
  PostgresStoreOptions options;
  options.connection.conninfo = uri;
  options.connection.timeout = absl::Seconds(5);
  options.schema = schema;
  options.connections = 4;
  options.clock = clock;
  // Tests run maintenance themselves (RunMaintenance) where it matters.
  options.maintenance_interval = absl::Hours(1);
  return options;
}

std::unique_ptr<PostgresStore> OpenOrDie(PostgresStoreOptions options) {
  absl::StatusOr<std::unique_ptr<PostgresStore>> opened =
      PostgresStore::Open(std::move(options));
  if (!opened.ok()) {
    ADD_FAILURE() << opened.status();
    std::abort();
  }
  return *std::move(opened);
}

class PostgresHarness final : public StoreHarness {
 public:
  explicit PostgresHarness(const Clock* clock)
      : options_(Options(Shared().uri(), clock)) {
    Reopen();
  }
  ~PostgresHarness() override {
    if (store_ != nullptr) store_->DropSchema().IgnoreError();
  }
  Store& store() override { return *store_; }
  // A restart of the replica: the data is in PostgreSQL and stays.
  void Reopen() override {
    store_.reset();
    store_ = OpenOrDie(options_);
  }

 private:
  PostgresStoreOptions options_;
  std::unique_ptr<PostgresStore> store_;
};

INSTANTIATE_TEST_SUITE_P(
    PostgreSQL, StoreConformanceTest,
    ::testing::Values(StoreBackend{"PostgreSQL15",
                                   [](const Clock* clock) {
                                     return std::make_unique<PostgresHarness>(
                                         clock);
                                   },
                                   /*tokens_grow_across_keys=*/true,
                                   /*peeks=*/false}),
    [](const ::testing::TestParamInfo<StoreBackend>& info) {
      return info.param.name;
    });

BeginCommand Begin(const std::string& key, const std::string& owner = "",
                   absl::Duration retention = absl::Hours(1)) {
  BeginCommand command;
  command.id = {"ns", key};
  command.fingerprint = "fp";
  command.owner = owner;
  command.lease = absl::Seconds(30);
  command.retention = retention;
  return command;
}

CompleteCommand Complete(const std::string& key, uint64_t token,
                         const std::string& body,
                         std::optional<absl::Duration> retention = {}) {
  CompleteCommand command;
  command.id = {"ns", key};
  command.token = token;
  command.result.code = 200;
  command.result.body = body;
  command.retention = retention;
  return command;
}

TEST(PostgresStoreTest, ReplicasStartingTogetherMigrateTheSchemaOnce) {
  const std::string schema = FreshSchema();
  std::vector<std::thread> threads;
  std::atomic<int> opened{0};
  std::vector<std::unique_ptr<PostgresStore>> stores(6);
  for (size_t i = 0; i < stores.size(); ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<std::unique_ptr<PostgresStore>> store =
          PostgresStore::Open(Options(Shared().uri(), nullptr, schema));
      if (store.ok()) {
        stores[i] = *std::move(store);
        ++opened;
      } else {
        ADD_FAILURE() << store.status();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(opened.load(), 6);
  EXPECT_EQ(*Shared().Sql(absl::StrCat("SELECT string_agg(version::text, ',') "
                                       "FROM ",
                                       schema, ".schema_version")),
            "1");
  // Every replica works on the one schema.
  ASSERT_OK_AND_ASSIGN(BeginResult begun, stores[0]->Begin(Begin("k")));
  ASSERT_EQ(begun.outcome, BeginOutcome::kAcquired);
  ASSERT_OK(stores[5]->Complete(Complete("k", begun.token, "done")).status());
  ASSERT_OK_AND_ASSIGN(BeginResult replay, stores[3]->Begin(Begin("k")));
  EXPECT_EQ(replay.outcome, BeginOutcome::kCompleted);
  EXPECT_EQ(replay.result.body, "done");
  stores[0]->DropSchema().IgnoreError();
}

// A role that owns a provisioned schema but may not create schemas in the
// database (what a DBA hands a service) is enough; one that has neither
// is refused with PostgreSQL's reason.
TEST(PostgresStoreTest, AnOwnedSchemaNeedsNoCreateOnTheDatabase) {
  const std::string schema = FreshSchema();
  const std::string role = schema + "_owner";
  ASSERT_OK(
      Shared().Sql(absl::StrCat("CREATE ROLE ", role, " LOGIN")).status());
  ASSERT_OK(
      Shared()
          .Sql(absl::StrCat("CREATE SCHEMA ", schema, " AUTHORIZATION ", role))
          .status());
  const std::string uri = absl::StrCat("postgresql://", role,
                                       "@127.0.0.1:", Shared().port(), "/idem");
  {
    std::unique_ptr<PostgresStore> store =
        OpenOrDie(Options(uri, nullptr, schema));
    ASSERT_OK_AND_ASSIGN(BeginResult begun, store->Begin(Begin("k")));
    EXPECT_EQ(begun.outcome, BeginOutcome::kAcquired);
  }
  absl::StatusOr<std::unique_ptr<PostgresStore>> refused =
      PostgresStore::Open(Options(uri, nullptr, FreshSchema()));
  EXPECT_FALSE(refused.ok());
  EXPECT_TRUE(
      absl::StrContains(refused.status().message(), "permission denied"))
      << refused.status();
  ASSERT_OK(
      Shared().Sql(absl::StrCat("DROP SCHEMA ", schema, " CASCADE")).status());
  ASSERT_OK(Shared().Sql(absl::StrCat("DROP ROLE ", role)).status());
}

TEST(PostgresStoreTest, RefusesASchemaNewerThanThisBinary) {
  const std::string schema = FreshSchema();
  { OpenOrDie(Options(Shared().uri(), nullptr, schema)); }
  ASSERT_OK(Shared()
                .Sql(absl::StrCat("INSERT INTO ", schema,
                                  ".schema_version (version) VALUES (99)"))
                .status());
  absl::StatusOr<std::unique_ptr<PostgresStore>> opened =
      PostgresStore::Open(Options(Shared().uri(), nullptr, schema));
  EXPECT_STATUS_CODE(opened.status(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(opened.status().message(), "version 99"))
      << opened.status();
  ASSERT_OK(
      Shared().Sql(absl::StrCat("DROP SCHEMA ", schema, " CASCADE")).status());
}

TEST(PostgresStoreTest, RefusesABadSchemaNameAndAnUnreachableDatabase) {
  PostgresStoreOptions bad = Options(Shared().uri(), nullptr, "Robert'; --");
  EXPECT_STATUS_CODE(PostgresStore::Open(bad).status(),
                     absl::StatusCode::kInvalidArgument);
  PostgresStoreOptions unreachable =
      Options("postgresql://idem@127.0.0.1:1/idem", nullptr);
  const absl::StatusOr<std::unique_ptr<PostgresStore>> opened =
      PostgresStore::Open(unreachable);
  EXPECT_STATUS_CODE(opened.status(), absl::StatusCode::kUnavailable);
}

TEST(PostgresStoreTest, TheReaperDeletesExpiredRowsInBoundedBatches) {
  FakeClock clock;
  PostgresStoreOptions options = Options(Shared().uri(), &clock);
  options.reap_batch = 100;
  options.reap_batches_per_pass = 2;
  std::unique_ptr<PostgresStore> store = OpenOrDie(options);
  uint64_t first_token = 0;
  for (int i = 0; i < 250; ++i) {
    const std::string key = absl::StrCat("k", i);
    ASSERT_OK_AND_ASSIGN(BeginResult begun, store->Begin(Begin(key)));
    ASSERT_OK(
        store->Complete(Complete(key, begun.token, "r", absl::Seconds(10)))
            .status());
    if (i == 0) first_token = begun.token;
  }
  store->RunMaintenance();
  EXPECT_EQ(store->Stats().expired_dropped, 0u);
  EXPECT_EQ(store->Stats().expired_backlog, 0u);

  clock.Advance(absl::Seconds(11));
  store->RunMaintenance();  // Two batches of 100.
  EXPECT_EQ(store->Stats().expired_dropped, 200u);
  EXPECT_EQ(store->Stats().expired_backlog, 50u);
  store->RunMaintenance();
  EXPECT_EQ(store->Stats().expired_dropped, 250u);
  EXPECT_EQ(store->Stats().expired_backlog, 0u);
  EXPECT_EQ(*Shared().Sql(absl::StrCat("SELECT count(*) FROM ", options.schema,
                                       ".records")),
            "0");
  // The row is gone, its token is not: the next lease is fenced above it.
  ASSERT_OK_AND_ASSIGN(BeginResult again, store->Begin(Begin("k0")));
  ASSERT_EQ(again.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(again.token, first_token + 249);
  store->DropSchema().IgnoreError();
}

TEST(PostgresStoreTest, TheReaperNeverDeletesALiveRecord) {
  FakeClock clock;
  std::unique_ptr<PostgresStore> store =
      OpenOrDie(Options(Shared().uri(), &clock));
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store->Begin(Begin("k")));
  ASSERT_OK(
      store->Complete(Complete("k", begun.token, "kept", absl::Seconds(10)))
          .status());
  clock.Advance(absl::Seconds(10) - absl::Microseconds(1));
  store->RunMaintenance();
  EXPECT_EQ(store->Stats().expired_dropped, 0u);
  ASSERT_OK_AND_ASSIGN(KeySnapshot snapshot, store->Lookup({"ns", "k"}));
  EXPECT_EQ(snapshot.state, KeyState::kCompleted);
  store->DropSchema().IgnoreError();
}

// Collects the keys another replica announces.
class Announcements {
 public:
  void Add(const KeyId& id) {
    absl::MutexLock lock(&mu_);
    seen_.push_back(id.key.empty() ? "*" : id.key);
  }
  bool WaitFor(const std::string& key, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (std::find(seen_.begin(), seen_.end(), key) != seen_.end()) {
          return true;
        }
      }
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(5));
    }
  }
  std::vector<std::string> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> seen_ ABSL_GUARDED_BY(mu_);
};

TEST(PostgresStoreTest, AnotherReplicaHearsACompleteWithinASecond) {
  const std::string schema = FreshSchema();
  std::unique_ptr<PostgresStore> a =
      OpenOrDie(Options(Shared().uri(), nullptr, schema));
  std::unique_ptr<PostgresStore> b =
      OpenOrDie(Options(Shared().uri(), nullptr, schema));
  Announcements heard_by_a;
  Announcements heard_by_b;
  a->WatchChanges([&](const KeyId& id) { heard_by_a.Add(id); });
  b->WatchChanges([&](const KeyId& id) { heard_by_b.Add(id); });
  absl::SleepFor(absl::Milliseconds(300));  // Both listening.

  ASSERT_OK_AND_ASSIGN(BeginResult begun, a->Begin(Begin("paid")));
  const absl::Time completed = absl::Now();
  ASSERT_OK(a->Complete(Complete("paid", begun.token, "ok")).status());
  EXPECT_TRUE(heard_by_b.WaitFor("paid", absl::Seconds(1)));
  EXPECT_LT(absl::Now() - completed, absl::Seconds(1));
  // A Begin (in progress) is not announced; a replica skips its own.
  ASSERT_OK(b->Begin(Begin("other")).status());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(heard_by_b.seen(), std::vector<std::string>{"paid"});
  EXPECT_TRUE(heard_by_a.seen().empty());
  a->DropSchema().IgnoreError();
}

TEST(PostgresStoreTest, AStatementTimeoutBoundsACallOnALockedTable) {
  PostgresStoreOptions options = Options(Shared().uri(), nullptr);
  options.connection.timeout = absl::Milliseconds(800);
  std::unique_ptr<PostgresStore> store = OpenOrDie(options);
  // The locker's own session may idle in its transaction for longer.
  PgConnectOptions locker_options = options.connection;
  locker_options.timeout = absl::Seconds(30);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PgConnection> locker,
                       PgConnection::Connect(locker_options));
  ASSERT_OK(locker
                ->Run({{"", "BEGIN", {}},
                       {"",
                        absl::StrCat("LOCK TABLE ", options.schema,
                                     ".records IN ACCESS EXCLUSIVE MODE"),
                        {}}},
                      absl::Now() + absl::Seconds(5))
                .status());
  const absl::Time start = absl::Now();
  absl::StatusOr<BeginResult> begun = store->Begin(Begin("k"));
  const absl::Duration took = absl::Now() - start;
  EXPECT_STATUS_CODE(begun.status(), absl::StatusCode::kUnavailable);
  EXPECT_LT(took, absl::Seconds(3)) << begun.status();
  ASSERT_OK(locker->RunOne({"", "ROLLBACK", {}}, absl::Now() + absl::Seconds(5))
                .status());
  ASSERT_OK_AND_ASSIGN(BeginResult after, store->Begin(Begin("k")));
  EXPECT_EQ(after.outcome, BeginOutcome::kAcquired);
  store->DropSchema().IgnoreError();
}

TEST(PostgresStoreTest, DurabilityNotesSayWhatTheSettingsWeaken) {
  // The shared server has no synchronous standby.
  std::unique_ptr<PostgresStore> store =
      OpenOrDie(Options(Shared().uri(), nullptr));
  EXPECT_TRUE(absl::StrContains(absl::StrJoin(store->durability_notes(), "\n"),
                                "no synchronous standby"));
  store->DropSchema().IgnoreError();
  std::unique_ptr<PostgresStore> off = OpenOrDie(Options(
      Shared().uri() + "?options=-c%20synchronous_commit%3Doff", nullptr));
  EXPECT_TRUE(absl::StrContains(absl::StrJoin(off->durability_notes(), "\n"),
                                "synchronous_commit=off"));
  off->DropSchema().IgnoreError();
}

TEST(PostgresStoreTest, ADatabaseCrashIsUnavailableThenEverythingComesBack) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<LocalPostgres> pg,
                       LocalPostgres::Start());
  PostgresStoreOptions options = Options(pg->uri(), nullptr);
  options.connection.timeout = absl::Seconds(2);
  std::unique_ptr<PostgresStore> store = OpenOrDie(options);
  Announcements heard;
  std::unique_ptr<PostgresStore> other =
      OpenOrDie(Options(pg->uri(), nullptr, options.schema));
  other->WatchChanges([&](const KeyId& id) { heard.Add(id); });

  ASSERT_OK_AND_ASSIGN(BeginResult begun, store->Begin(Begin("before")));
  ASSERT_OK(store->Complete(Complete("before", begun.token, "kept")).status());

  pg->Crash();
  absl::StatusOr<BeginResult> during = store->Begin(Begin("during"));
  EXPECT_STATUS_CODE(during.status(), absl::StatusCode::kUnavailable);
  store->RunMaintenance();
  EXPECT_FALSE(store->Health().ok());
  EXPECT_STATUS_CODE(store->Lookup({"ns", "before"}).status(),
                     absl::StatusCode::kUnavailable);

  ASSERT_OK(pg->Restart());
  // A failed connect is not retried for 200 ms (calls fail fast while the
  // database is down), and the listeners' reconnects may have failed during
  // its recovery: wait that out, then the first call reconnects by itself.
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_OK_AND_ASSIGN(BeginResult replay, store->Begin(Begin("before")));
  EXPECT_EQ(replay.outcome, BeginOutcome::kCompleted);
  EXPECT_EQ(replay.result.body, "kept");
  ASSERT_OK_AND_ASSIGN(KeySnapshot snapshot, store->Lookup({"ns", "before"}));
  EXPECT_EQ(snapshot.state, KeyState::kCompleted);
  store->RunMaintenance();
  EXPECT_OK(store->Health());
  // The listener re-subscribed, told its owner to look again, and hears
  // new announcements.
  EXPECT_TRUE(heard.WaitFor("*", absl::Seconds(5)));
  ASSERT_OK_AND_ASSIGN(BeginResult after, store->Begin(Begin("after")));
  ASSERT_OK(store->Complete(Complete("after", after.token, "x")).status());
  EXPECT_TRUE(heard.WaitFor("after", absl::Seconds(2)));
  // Tokens kept growing across the crash.
  EXPECT_GT(after.token, begun.token);
}

// A primary whose every commit waits for `standby`, streaming from it.
void StartWithSynchronousStandby(std::unique_ptr<LocalPostgres>* primary,
                                 std::unique_ptr<LocalPostgres>* standby) {
  LocalPostgres::Options options;
  options.synchronous_standby = true;
  ASSERT_OK_AND_ASSIGN(*primary, LocalPostgres::Start(options));
  ASSERT_OK_AND_ASSIGN(*standby, LocalPostgres::StartStandby(**primary));
}

TEST(PostgresStoreTest, EveryAcknowledgedCompleteSurvivesAFailover) {
  std::unique_ptr<LocalPostgres> primary;
  std::unique_ptr<LocalPostgres> standby;
  ASSERT_NO_FATAL_FAILURE(StartWithSynchronousStandby(&primary, &standby));
  PostgresStoreOptions options = Options(primary->uri(), nullptr);
  options.connection.timeout = absl::Seconds(2);
  std::unique_ptr<PostgresStore> store = OpenOrDie(options);
  EXPECT_TRUE(store->durability_notes().empty())
      << absl::StrJoin(store->durability_notes(), "\n");
  // A standby is refused: it cannot take writes.
  EXPECT_STATUS_CODE(
      PostgresStore::Open(Options(standby->uri(), nullptr, options.schema))
          .status(),
      absl::StatusCode::kFailedPrecondition);

  // Writers Begin and Complete keys until the primary dies under them.
  absl::Mutex mu;
  std::map<std::string, std::string> acknowledged;
  std::atomic<bool> stop{false};
  std::atomic<int> completes{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 8; ++w) {
    writers.emplace_back([&, w] {
      for (int i = 0; !stop; ++i) {
        const std::string key = absl::StrCat("w", w, "-", i);
        absl::StatusOr<BeginResult> begun = store->Begin(Begin(key));
        if (!begun.ok() || begun->outcome != BeginOutcome::kAcquired) continue;
        const std::string body = absl::StrCat("result of ", key);
        if (store->Complete(Complete(key, begun->token, body)).ok()) {
          absl::MutexLock lock(&mu);
          acknowledged[key] = body;
          ++completes;
        }
      }
    });
  }
  while (completes < 300) absl::SleepFor(absl::Milliseconds(10));
  primary->Crash();
  absl::SleepFor(absl::Milliseconds(500));
  stop = true;
  for (std::thread& t : writers) t.join();
  store.reset();
  ASSERT_OK(standby->Promote());

  std::unique_ptr<PostgresStore> promoted =
      OpenOrDie(Options(standby->uri(), nullptr, options.schema));
  int found = 0;
  for (const auto& [key, body] : acknowledged) {
    ASSERT_OK_AND_ASSIGN(KeySnapshot snapshot, promoted->Lookup({"ns", key}));
    EXPECT_EQ(snapshot.state, KeyState::kCompleted) << key;
    EXPECT_EQ(snapshot.result.body, body) << key;
    if (snapshot.state == KeyState::kCompleted) ++found;
  }
  std::cout << "failover: " << acknowledged.size()
            << " acknowledged Completes, " << found
            << " on the promoted standby\n";
  EXPECT_EQ(found, static_cast<int>(acknowledged.size()));
}

// PostgreSQL answers a COMMIT whose wait for the synchronous standby was
// cancelled (pg_cancel_backend, an operator's tooling) with a warning and
// a success: committed on the primary, perhaps not on the standby. The
// store does not acknowledge it.
TEST(PostgresStoreTest, ACancelledWaitForTheStandbyIsNotAcknowledged) {
  std::unique_ptr<LocalPostgres> primary;
  std::unique_ptr<LocalPostgres> standby;
  ASSERT_NO_FATAL_FAILURE(StartWithSynchronousStandby(&primary, &standby));
  PostgresStoreOptions options = Options(primary->uri(), nullptr);
  options.connections = 1;
  std::unique_ptr<PostgresStore> store = OpenOrDie(options);
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store->Begin(Begin("k")));

  standby->Stop();  // Every commit now waits for it.
  absl::StatusOr<CompleteResult> completed;
  std::thread completer([&] {
    completed = store->Complete(Complete("k", begun.token, "maybe"));
  });
  std::string cancelled;
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (cancelled != "t" && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(100));
    cancelled =
        primary
            ->Sql(
                "SELECT coalesce(bool_or(pg_cancel_backend(pid)), false) "
                "FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            .value_or("");
  }
  completer.join();
  ASSERT_EQ(cancelled, "t") << "no commit waited for the standby";
  EXPECT_STATUS_CODE(completed.status(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(
      absl::StrContains(completed.status().message(), "synchronous standby"))
      << completed.status();
}

}  // namespace
}  // namespace idem::storage
