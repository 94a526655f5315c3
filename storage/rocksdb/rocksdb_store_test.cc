#include "storage/rocksdb/rocksdb_store.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "storage/record_codec.h"
#include "storage/testing/store_conformance.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace idem::storage {
namespace {

class RocksDbHarness final : public StoreHarness {
 public:
  RocksDbHarness(const Clock* clock, bool sync_writes) {
    options_.path = dir_.Sub("db");
    options_.sync_writes = sync_writes;
    options_.clock = clock;
    Reopen();
  }
  Store& store() override { return *store_; }
  void Reopen() override {
    store_.reset();
    absl::StatusOr<std::unique_ptr<RocksDbStore>> opened =
        RocksDbStore::Open(options_);
    if (!opened.ok()) {
      ADD_FAILURE() << opened.status();
      std::abort();
    }
    store_ = *std::move(opened);
  }

 private:
  testing::TempDir dir_;
  RocksDbStoreOptions options_;
  std::unique_ptr<RocksDbStore> store_;
};

INSTANTIATE_TEST_SUITE_P(
    RocksDb, StoreConformanceTest,
    ::testing::Values(StoreBackend{"SyncWrites",
                                   [](const Clock* clock) {
                                     return std::make_unique<RocksDbHarness>(
                                         clock, true);
                                   },
                                   true, true},
                      StoreBackend{"UnsyncedWrites",
                                   [](const Clock* clock) {
                                     return std::make_unique<RocksDbHarness>(
                                         clock, false);
                                   },
                                   true, true}),
    [](const ::testing::TestParamInfo<StoreBackend>& info) {
      return info.param.name;
    });

class RocksDbStoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<RocksDbStore> Open(bool sync_writes = true) {
    RocksDbStoreOptions options;
    options.path = dir_.Sub("db");
    options.clock = &clock_;
    options.sync_writes = sync_writes;
    absl::StatusOr<std::unique_ptr<RocksDbStore>> store =
        RocksDbStore::Open(options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  FakeClock clock_;
  testing::TempDir dir_;
};

TEST_F(RocksDbStoreTest, TtlCompactionGivesBackDiskSpaceAndKeys) {
  std::unique_ptr<RocksDbStore> store = Open(/*sync_writes=*/false);
  ASSERT_NE(store, nullptr);
  constexpr int kKeys = 2000;
  const std::string body(4096, 'x');
  for (int i = 0; i < kKeys; ++i) {
    BeginCommand begin{{"orders", "key-" + std::to_string(i)},
                       "fp",
                       "",
                       absl::Seconds(30),
                       absl::Minutes(10)};
    ASSERT_OK_AND_ASSIGN(BeginResult begun, store->Begin(begin));
    ASSERT_OK(store->Complete(
        {begin.id, begun.token, Result{200, body, {}}, std::nullopt}));
  }
  // One key that is kept much longer must survive the compaction.
  BeginCommand keeper{
      {"orders", "keeper"}, "fp", "", absl::Seconds(30), absl::Hours(24)};
  ASSERT_OK_AND_ASSIGN(BeginResult kept, store->Begin(keeper));
  ASSERT_OK(store->Complete(
      {keeper.id, kept.token, Result{200, "kept", {}}, std::nullopt}));

  ASSERT_OK(store->CompactAll());  // Nothing expired yet: nothing dropped.
  const StoreStats before = store->Stats();
  EXPECT_GT(before.disk_bytes, uint64_t{kKeys} * 4096);
  EXPECT_GE(before.estimated_keys, uint64_t{kKeys});
  EXPECT_EQ(before.expired_dropped, 0u);

  clock_.Advance(absl::Minutes(11));
  ASSERT_OK(store->CompactAll());
  const StoreStats after = store->Stats();
  EXPECT_EQ(after.expired_dropped, uint64_t{kKeys});
  EXPECT_LT(after.disk_bytes, before.disk_bytes / 20);
  EXPECT_LE(after.estimated_keys, 2u);  // The keeper and the token counter.

  ASSERT_OK_AND_ASSIGN(KeySnapshot survivor, store->Lookup(keeper.id));
  EXPECT_EQ(survivor.state, KeyState::kCompleted);
  EXPECT_EQ(survivor.result.body, "kept");
}

// Real time: RocksDB measures file age with its own clock.
TEST_F(RocksDbStoreTest, PeriodicCompactionDropsExpiredRecordsWithoutWrites) {
  RocksDbStoreOptions options;
  options.path = dir_.Sub("db");
  options.sync_writes = false;
  options.periodic_compaction = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<RocksDbStore>> opened =
      RocksDbStore::Open(options);
  ASSERT_OK(opened);
  RocksDbStore& store = **opened;
  constexpr int kKeys = 500;
  for (int i = 0; i < kKeys; ++i) {
    BeginCommand begin{{"orders", "key-" + std::to_string(i)},
                       "fp",
                       "",
                       absl::Seconds(1),
                       absl::Seconds(1)};
    ASSERT_OK_AND_ASSIGN(BeginResult begun, store.Begin(begin));
    ASSERT_OK(store.Complete(
        {begin.id, begun.token, Result{200, "x", {}}, std::nullopt}));
  }
  // From here on nothing is written: only the maintenance thread acts.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  // The filter counts drops during a compaction; the key estimate follows
  // when the compaction's result is installed.
  while ((store.Stats().expired_dropped < kKeys ||
          store.Stats().estimated_keys > 1) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  // Versions, not keys: a key whose Begin and Complete were flushed to
  // different files is dropped twice (this once read 501 for 500 keys).
  EXPECT_GE(store.Stats().expired_dropped, uint64_t{kKeys});
  EXPECT_LE(store.Stats().estimated_keys, 1u);  // The token counter.
}

TEST_F(RocksDbStoreTest, AFullWriteQueueRefusesChangesInsteadOfGrowing) {
  RocksDbStoreOptions options;
  options.path = dir_.Sub("db");
  options.clock = &clock_;
  options.max_pending_writes = 2;
  absl::StatusOr<std::unique_ptr<RocksDbStore>> opened =
      RocksDbStore::Open(options);
  ASSERT_OK(opened);
  RocksDbStore& store = **opened;
  constexpr int kOps = 2000;
  std::atomic<int> answered{0}, refused{0}, acquired{0};
  for (int i = 0; i < kOps; ++i) {
    store.BeginAsync(
        {{"flood", "k" + std::to_string(i)},
         "fp",
         "",
         absl::Seconds(30),
         absl::Hours(1)},
        [&](absl::StatusOr<BeginResult> r) {
          if (r.status().code() == absl::StatusCode::kResourceExhausted) {
            EXPECT_NE(r.status().message().find("overloaded"),
                      std::string::npos);
            refused++;
          } else if (r.ok() && r->outcome == BeginOutcome::kAcquired) {
            acquired++;
          }
          answered++;
        });
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (answered.load() < kOps && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(answered.load(), kOps);  // Every change answered exactly once.
  EXPECT_GT(refused.load(), 0);
  EXPECT_EQ(acquired.load() + refused.load(), kOps);
}

BeginCommand NewKey(const std::string& key, const std::string& owner = "") {
  return {{"reads", key}, "fp", owner, absl::Seconds(30), absl::Hours(1)};
}

// The path of a request on a new key, as the server drives it: one read
// (the peek) from Begin to Complete, none by the writer.
TEST_F(RocksDbStoreTest, TheWriterReadsNothingANewKeysPeekAlreadyRead) {
  std::unique_ptr<RocksDbStore> store = Open();
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 50; ++i) {
    BeginCommand begin = NewKey("k" + std::to_string(i));
    ASSERT_FALSE(store->PeekBegin(begin, &begin.hint).has_value());
    ASSERT_OK_AND_ASSIGN(BeginResult begun, store->Begin(begin));
    ASSERT_EQ(begun.outcome, BeginOutcome::kAcquired);
    ASSERT_OK(store->Complete(
        {begin.id, begun.token, Result{200, "ok", {}}, std::nullopt}));
  }
  EXPECT_EQ(store->writer_reads(), 0u);
  // Without a hint the writer reads the key once, then remembers it.
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store->Begin(NewKey("unpeeked")));
  ASSERT_OK(store->Complete({NewKey("unpeeked").id, begun.token,
                             Result{200, "ok", {}}, std::nullopt}));
  EXPECT_EQ(store->writer_reads(), 1u);
  ASSERT_OK_AND_ASSIGN(KeySnapshot seen, store->Lookup(NewKey("k7").id));
  EXPECT_EQ(seen.state, KeyState::kCompleted);
}

// The writer remembers a bounded number of keys; a hint older than what it
// still remembers must send it back to RocksDB.
TEST_F(RocksDbStoreTest, AHintOlderThanTheWritersMemoryIsNotTrusted) {
  RocksDbStoreOptions options;
  options.path = dir_.Sub("db");
  options.clock = &clock_;
  options.recent_records = 4;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksDbStore> store,
                       RocksDbStore::Open(options));
  BeginCommand late = NewKey("k", "owner-b");
  ASSERT_FALSE(store->PeekBegin(late, &late.hint).has_value());
  ASSERT_OK_AND_ASSIGN(BeginResult first, store->Begin(NewKey("k", "a")));
  ASSERT_EQ(first.outcome, BeginOutcome::kAcquired);
  for (int i = 0; i < 20; ++i) {  // One batch each: the memory turns over.
    ASSERT_OK(store->Begin(NewKey("other-" + std::to_string(i))));
  }
  const uint64_t reads = store->writer_reads();
  ASSERT_OK_AND_ASSIGN(BeginResult busy, store->Begin(late));
  EXPECT_EQ(busy.outcome, BeginOutcome::kInProgress);
  EXPECT_EQ(store->writer_reads(), reads + 1);
}

TEST_F(RocksDbStoreTest, SecondOpenOfTheSameDirectoryFails) {
  std::unique_ptr<RocksDbStore> store = Open();
  ASSERT_NE(store, nullptr);
  RocksDbStoreOptions options;
  options.path = dir_.Sub("db");
  absl::StatusOr<std::unique_ptr<RocksDbStore>> second =
      RocksDbStore::Open(options);
  EXPECT_STATUS_CODE(second, absl::StatusCode::kUnavailable);
}

TEST_F(RocksDbStoreTest, CorruptRecordIsDataLossAndIsNotOverwritten) {
  {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir_.Sub("db"), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(),
                        EncodeKey({"orders", "broken"}), "\x07garbage")
                    .ok());
  }
  std::unique_ptr<RocksDbStore> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_STATUS_CODE(store->Lookup({"orders", "broken"}),
                     absl::StatusCode::kDataLoss);
  EXPECT_STATUS_CODE(
      store->Begin(
          {{"orders", "broken"}, "fp", "", absl::Seconds(30), absl::Hours(1)}),
      absl::StatusCode::kDataLoss);
  EXPECT_STATUS_CODE(store->Lookup({"orders", "broken"}),
                     absl::StatusCode::kDataLoss);
}

TEST_F(RocksDbStoreTest, ACorruptDataFileFailsReadsAndKeepsTheStoreUnhealthy) {
  {
    std::unique_ptr<RocksDbStore> store = Open();
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 200; ++i) {
      ASSERT_OK(store->Begin({{"orders", "k" + std::to_string(i)},
                              "fp",
                              "",
                              absl::Seconds(30),
                              absl::Hours(1)}));
    }
    ASSERT_OK(store->CompactAll());
    EXPECT_OK(store->Health());
  }
  // Damage the start of every data file: the data blocks, not the footer.
  int damaged = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(dir_.Sub("db"))) {
    if (entry.path().extension() != ".sst") continue;
    std::fstream file(entry.path(),
                      std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(16);
    file << std::string(512, '\xff');
    ++damaged;
  }
  ASSERT_GT(damaged, 0);

  std::unique_ptr<RocksDbStore> store = Open();
  ASSERT_NE(store, nullptr);
  const absl::StatusOr<KeySnapshot> read = store->Lookup({"orders", "k1"});
  EXPECT_STATUS_CODE(read, absl::StatusCode::kUnavailable);
  EXPECT_NE(read.status().message().find("orrupt"), std::string::npos)
      << read.status();
  // Unlike a full disk, a corrupt file does not heal: still unhealthy after
  // the recovery loop (once a second) has had its chances.
  absl::SleepFor(absl::Milliseconds(2500));
  const absl::Status health = store->Health();
  EXPECT_EQ(health.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(health.message().find("a data file is corrupt"), std::string::npos)
      << health;
}

TEST_F(RocksDbStoreTest, LargeQueuedChangesAreBoundedByBytes) {
  RocksDbStoreOptions options;
  options.path = dir_.Sub("db");
  options.clock = &clock_;
  options.max_pending_write_bytes = size_t{1} << 20;
  absl::StatusOr<std::unique_ptr<RocksDbStore>> opened =
      RocksDbStore::Open(options);
  ASSERT_OK(opened);
  RocksDbStore& store = **opened;
  std::vector<uint64_t> tokens;
  for (int i = 0; i < 64; ++i) {
    absl::StatusOr<BeginResult> begun =
        store.Begin({{"big", "k" + std::to_string(i)},
                     "fp",
                     "",
                     absl::Hours(1),
                     absl::Hours(1)});
    ASSERT_OK(begun);
    tokens.push_back(begun->token);
  }
  // 64 Completes of 256 KiB each (16 MiB) queued at once: past 1 MiB queued,
  // they are refused rather than held in memory.
  std::atomic<int> answered{0}, refused{0}, stored{0};
  for (int i = 0; i < 64; ++i) {
    CompleteCommand complete;
    complete.id = {"big", "k" + std::to_string(i)};
    complete.token = tokens[i];
    complete.result.body = std::string(size_t{256} << 10, 'x');
    store.CompleteAsync(complete, [&](const absl::StatusOr<CompleteResult>& r) {
      if (r.status().code() == absl::StatusCode::kResourceExhausted) {
        refused++;
      } else if (r.ok()) {
        stored++;
      }
      answered++;
    });
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (answered.load() < 64 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(answered.load(), 64);
  EXPECT_GT(refused.load(), 0);
  EXPECT_GT(stored.load(), 0);
  EXPECT_EQ(stored.load() + refused.load(), 64);
}

TEST_F(RocksDbStoreTest, OpenFailsClearlyOnAnUnusablePath) {
  std::ofstream(dir_.Sub("file")) << "not a directory";
  RocksDbStoreOptions options;
  options.path = dir_.Sub("file") + "/db";
  absl::StatusOr<std::unique_ptr<RocksDbStore>> store =
      RocksDbStore::Open(options);
  EXPECT_STATUS_CODE(store, absl::StatusCode::kUnavailable);
  EXPECT_NE(store.status().message().find(options.path), std::string::npos);
}

}  // namespace
}  // namespace idem::storage
