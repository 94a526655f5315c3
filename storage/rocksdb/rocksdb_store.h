// The embedded store: one RocksDB database in a local directory.
//
// Changes go through one writer thread: it takes every queued operation,
// reads each key's record, applies the key state machine (later operations
// on a key see what earlier ones in the batch decided), writes the whole
// batch as one WriteBatch and, with `sync_writes` (the default), one WAL
// fsync, then reports every outcome. Callers never wait for the disk on
// their own thread, and all changes queued during one fsync share the next.
// The writer remembers the records it touched last (RecentRecords), so that
// the Complete after a Begin does not read RocksDB again, and a Begin whose
// peek found the key absent, unchanged since, does not read it at all.
// Reads (Lookup, PeekBegin, List) go to RocksDB directly and see only
// committed changes. Expired
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
#ifndef IDEM_STORAGE_ROCKSDB_ROCKSDB_STORE_H_
#define IDEM_STORAGE_ROCKSDB_ROCKSDB_STORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/clock.h"
#include "storage/record.pb.h"
#include "storage/rocksdb/recent_records.h"
#include "storage/store.h"
#include "storage/transition.h"

namespace rocksdb {
class DB;
struct Options;
class Status;
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
  // Changes waiting for the writer beyond this are refused at once with
  // RESOURCE_EXHAUSTED, so that a flood cannot grow memory without bound.
  size_t max_pending_writes = 100'000;
  // The same bound on the bytes those changes carry (bodies, metadata,
  // checkpoints), so that large results cannot exhaust memory either.
  size_t max_pending_write_bytes = size_t{256} << 20;
  // Writes are refused (UNAVAILABLE, store unhealthy) while the data disk has
  // less free space than this, before RocksDB itself runs out: space for
  // memtable flushes and compactions, and never a half-written WAL record.
  size_t min_free_disk_bytes = size_t{256} << 20;
  size_t write_buffer_bytes = size_t{32} << 20;
  // How much the writer remembers of the records it touched last (twice
  // this at most: see RecentRecords).
  size_t recent_records = 16384;
  size_t recent_record_bytes = size_t{16} << 20;
  // Not owned; must outlive the store.
  const Clock* clock = Clock::Real();
};

class TtlCompactionFilter;

class RocksDbStore final : public TransitionStore {
 public:
  // Opens (or creates) the database. Fails if another process has it open.
  static absl::StatusOr<std::unique_ptr<RocksDbStore>> Open(
      const RocksDbStoreOptions& options);
  // Finishes every queued change, then closes the database.
  ~RocksDbStore() override;

  RocksDbStore(const RocksDbStore&) = delete;
  RocksDbStore& operator=(const RocksDbStore&) = delete;

  std::optional<absl::StatusOr<BeginResult>> PeekBegin(
      const BeginCommand& command, PeekHint* hint) override;
  absl::StatusOr<KeySnapshot> Lookup(const KeyId& id) override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<std::map<std::string, StateCounts>> CountKeys(
      const std::string& name_space) override;
  StoreStats Stats() override;
  absl::Status Health() override;

  // Flushes memtables and compacts everything, dropping expired records.
  absl::Status CompactAll();
  // What the maintenance thread does each tick: flushes the memtable and
  // makes RocksDB look for files due for periodic compaction.
  absl::Status NudgeCompaction();
  // Records the writer thread has read from RocksDB so far: what its
  // memory of recent records and the peek hints did not save.
  uint64_t writer_reads() const {
    return writer_reads_.load(std::memory_order_relaxed);
  }

 private:
  static constexpr uint64_t kTokenBlock = uint64_t{1} << 16;
  // Most changes committed with one WriteBatch and one fsync.
  static constexpr size_t kMaxBatch = 1024;

  // One queued change and its key as RocksDB stores it.
  struct PendingOp {
    std::string db_key;
    size_t bytes = 0;  // What the change carries, for the queue's bound.
    std::unique_ptr<Transition> transition;
  };

  RocksDbStore(const RocksDbStoreOptions& options,
               const rocksdb::Options& db_options, rocksdb::DB* db,
               std::unique_ptr<TtlCompactionFilter> filter);

  // Queues `transition` for the writer thread, or finishes it with
  // RESOURCE_EXHAUSTED if the queue is full.
  void Apply(std::unique_ptr<Transition> transition) override;
  // The writer thread: takes the queued operations in order, decides each
  // against the records as the earlier ones in the batch left them, commits
  // the batch with one synced write and then reports every outcome.
  void WriterLoop();
  void CommitBatch(std::vector<PendingOp>& ops);
  bool HasQueuedOps() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
    return !queue_.empty() || closing_;
  }
  // The stored record of `db_key`; nullopt when there is none. DATA_LOSS
  // when it cannot be decoded, UNAVAILABLE when RocksDB fails.
  // `encoded_bytes`, if not null, receives the stored size.
  absl::StatusOr<std::optional<Record>> ReadRecord(
      const std::string& db_key, size_t* encoded_bytes = nullptr);
  absl::Status LoadTokenCounter();
  absl::StatusOr<uint64_t> NextToken();
  // UNAVAILABLE when writing `bytes` would leave less than
  // min_free_disk_bytes free on the data disk.
  absl::Status CheckFreeSpace(size_t bytes);
  void MaintenanceLoop(absl::Duration compaction_tick);
  // Marks the store unhealthy after a storage error (not a decode error).
  // A corrupt file makes it unhealthy for good: only an operator can mend
  // that, and a server that answers some keys wrongly must not look ready.
  void NoteStorageError(const absl::Status& error, bool corrupt = false);
  // A failed RocksDB call: noted as above, returned as UNAVAILABLE.
  absl::Status StorageFailure(const rocksdb::Status& status,
                              absl::string_view what);
  // While unhealthy: asks RocksDB to resume, then makes a synced probe
  // write; if that fails too, reopens the database and probes again;
  // healthy again once a probe lands.
  void TryRecover();
  // A synced write of the health probe key (after Resume() if `resume`).
  rocksdb::Status Probe(bool resume);
  // Closes and opens the database again: clears background errors that
  // Resume() cannot. Leaves db_ null if the open fails.
  absl::Status Reopen();

  const RocksDbStoreOptions options_;
  // What the database was opened with, for Reopen (it points to filter_).
  const std::unique_ptr<const rocksdb::Options> db_options_;
  // Declared before db_: the database refers to the filter until closed.
  std::unique_ptr<TtlCompactionFilter> filter_;
  // Every use holds db_mu_ shared; Reopen swaps the database exclusively.
  // Null only between a failed reopen and the next attempt.
  absl::Mutex db_mu_;
  std::unique_ptr<rocksdb::DB> db_ ABSL_GUARDED_BY(db_mu_);

  absl::Mutex queue_mu_;
  std::deque<PendingOp> queue_ ABSL_GUARDED_BY(queue_mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(queue_mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread writer_;

  // Tells this store's PeekHints from another's.
  const uint64_t instance_;
  // Batches the writer has written (or tried to), plus one: a peek that
  // reads this before its read knows the record as of that version.
  std::atomic<uint64_t> written_version_{1};
  std::atomic<uint64_t> writer_reads_{0};

  // Used by the writer thread only.
  RecentRecords recent_;
  uint64_t next_token_ = 1;
  // Tokens up to and including this value may be handed out.
  uint64_t reserved_token_ = 0;

  absl::Mutex health_mu_;
  absl::Status health_ ABSL_GUARDED_BY(health_mu_);
  // Counts storage errors, so that a recovery probe only clears the errors
  // that happened before it.
  uint64_t error_generation_ ABSL_GUARDED_BY(health_mu_) = 0;
  std::atomic<bool> unhealthy_{false};
  std::atomic<bool> corrupt_{false};
  // Free space a write must leave: min_free_disk_bytes, raised by a quarter
  // after a refusal until the store recovers, so that health does not flap
  // around the threshold.
  std::atomic<uint64_t> free_space_floor_;

  absl::Mutex maintenance_mu_;
  bool stopping_ ABSL_GUARDED_BY(maintenance_mu_) = false;
  std::thread maintenance_;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_ROCKSDB_ROCKSDB_STORE_H_
