// The embedded store: one RocksDB database in a local directory.
//
// Each operation takes the key's lock stripe, reads the record, applies the
// key state machine and writes the result in one WriteBatch. With
// `sync_writes` (the default) the WAL is fsynced before an operation returns;
// RocksDB's write group lets concurrent writers share one fsync. Expired
// records are dropped by a compaction filter; `periodic_compaction` makes
// RocksDB rewrite old files even when nothing new is written. RocksDB 7.8
// only looks for such files when something changes, so a maintenance thread
// nudges it every quarter period (at most hourly): it flushes the memtable
// and re-applies the setting, which makes RocksDB re-evaluate every file.
//
// Fencing tokens come from one counter for the whole database. The counter
// is persisted in blocks (a synced write reserves the next block before any
// token of it is handed out), so a token is never issued twice, also across
// crashes, and a restart skips at most one block.
#ifndef IDEM_STORAGE_ROCKSDB_STORE_H_
#define IDEM_STORAGE_ROCKSDB_STORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/clock.h"
#include "storage/store.h"

namespace rocksdb {
class DB;
}  // namespace rocksdb

namespace idem::storage {

struct RocksDbStoreOptions {
  // The database directory; created if missing.
  std::string path;
  // Fsync the WAL before every state change is acknowledged. Without it a
  // change acknowledged in the last moments before power loss (not a process
  // crash) can be lost.
  bool sync_writes = true;
  // Files older than this are compacted (and expired records dropped) even
  // without new writes. Zero turns it off.
  absl::Duration periodic_compaction = absl::Hours(12);
  size_t block_cache_bytes = size_t{64} << 20;
  size_t write_buffer_bytes = size_t{32} << 20;
  // Not owned; must outlive the store.
  const Clock* clock = Clock::Real();
};

class TtlCompactionFilter;

class RocksDbStore final : public Store {
 public:
  // Opens (or creates) the database. Fails if another process has it open.
  static absl::StatusOr<std::unique_ptr<RocksDbStore>> Open(
      const RocksDbStoreOptions& options);
  ~RocksDbStore() override;

  RocksDbStore(const RocksDbStore&) = delete;
  RocksDbStore& operator=(const RocksDbStore&) = delete;

  absl::StatusOr<BeginResult> Begin(const BeginCommand& command) override;
  std::optional<absl::StatusOr<BeginResult>> PeekBegin(
      const BeginCommand& command) override;
  absl::StatusOr<CompleteResult> Complete(
      const CompleteCommand& command) override;
  absl::Status Release(const ReleaseCommand& command) override;
  absl::StatusOr<absl::Time> Extend(const ExtendCommand& command) override;
  absl::Status Checkpoint(const CheckpointCommand& command) override;
  absl::StatusOr<KeySnapshot> Lookup(const KeyId& id) override;
  absl::StatusOr<bool> Delete(const KeyId& id) override;
  absl::StatusOr<uint64_t> ForceRelease(const KeyId& id) override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<std::map<std::string, StateCounts>> CountKeys(
      const std::string& name_space) override;
  StoreStats Stats() override;

  // Flushes memtables and compacts everything, dropping expired records.
  absl::Status CompactAll();
  // What the maintenance thread does each tick: flushes the memtable and
  // makes RocksDB look for files due for periodic compaction.
  absl::Status NudgeCompaction();

 private:
  static constexpr size_t kLockStripes = 1024;
  static constexpr uint64_t kTokenBlock = uint64_t{1} << 16;

  RocksDbStore(const RocksDbStoreOptions& options, rocksdb::DB* db,
               std::unique_ptr<TtlCompactionFilter> filter);

  // Reads the record of `id`, calls `decide(record_or_null, now, next_token)`
  // and writes the record it returns, all under the key's lock.
  template <typename Reply, typename DecideFn>
  absl::StatusOr<Reply> Apply(const KeyId& id, DecideFn decide);
  absl::Status LoadTokenCounter();
  absl::StatusOr<uint64_t> NextToken();
  absl::Mutex& StripeFor(const std::string& encoded_key);
  void MaintenanceLoop(absl::Duration tick);

  const RocksDbStoreOptions options_;
  // Declared before db_: the database refers to the filter until closed.
  std::unique_ptr<TtlCompactionFilter> filter_;
  std::unique_ptr<rocksdb::DB> db_;
  std::array<absl::Mutex, kLockStripes> stripes_;

  absl::Mutex token_mu_;
  uint64_t next_token_ ABSL_GUARDED_BY(token_mu_) = 1;
  // Tokens up to and including this value may be handed out.
  uint64_t reserved_token_ ABSL_GUARDED_BY(token_mu_) = 0;

  absl::Mutex maintenance_mu_;
  bool stopping_ ABSL_GUARDED_BY(maintenance_mu_) = false;
  std::thread maintenance_;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_ROCKSDB_STORE_H_
