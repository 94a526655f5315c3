#include "storage/rocksdb/rocksdb_store.h"

#include <pthread.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/cache.h"
#include "rocksdb/compaction_filter.h"
#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"
#include "storage/finish_group.h"
#include "storage/key_state_machine.h"
#include "storage/list_pager.h"
#include "storage/record_codec.h"

namespace idem::storage {

// Drops records whose expiry has passed. RocksDB turns a removal into a
// deletion marker where older versions may lie below, so removing the newest
// version never resurrects an older one.
class TtlCompactionFilter final : public rocksdb::CompactionFilter {
 public:
  explicit TtlCompactionFilter(const Clock* clock) : clock_(clock) {}

  bool Filter(int /*level*/, const rocksdb::Slice& key,
              const rocksdb::Slice& existing_value, std::string* /*new_value*/,
              bool* /*value_changed*/) const override {
    absl::string_view k(key.data(), key.size());
    if (!IsRecordKey(k)) return false;
    std::optional<int64_t> expiry = PeekExpiryMicros(
        absl::string_view(existing_value.data(), existing_value.size()));
    // A value we cannot read is kept: never drop what we do not understand.
    if (!expiry.has_value() || absl::ToUnixMicros(clock_->Now()) < *expiry) {
      return false;
    }
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  const char* Name() const override { return "idem.TtlCompactionFilter"; }

  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  const Clock* const clock_;
  mutable std::atomic<uint64_t> dropped_{0};
};

namespace {

// The highest token that may have been handed out. Not a record key, so the
// TTL filter never touches it.
constexpr char kTokenReservedKey[] = "m/token_reserved";
// Written by recovery probes; like the counter, not a record key.
constexpr char kHealthProbeKey[] = "m/health_probe";

absl::Status FromRocks(const rocksdb::Status& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  // Disk full, I/O errors, corruption: the store cannot serve right now.
  return absl::UnavailableError(
      absl::StrCat("storage ", what, " failed: ", status.ToString()));
}

// What a call gets while a failed reopen left the database closed (until
// the next recovery attempt, within a second).
const rocksdb::Status& ClosedStatus() {
  static const rocksdb::Status* const closed = new rocksdb::Status(
      rocksdb::Status::IOError("the database is closed after a storage error "
                               "and is being reopened"));
  return *closed;
}

// Numbers the stores of this process, for their PeekHints.
uint64_t NextInstance() {
  static std::atomic<uint64_t> last{0};
  return last.fetch_add(1, std::memory_order_relaxed) + 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RocksDbStore>> RocksDbStore::Open(
    const RocksDbStoreOptions& options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("storage path is empty");
  }
  auto filter = std::make_unique<TtlCompactionFilter>(options.clock);

  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.compaction_filter = filter.get();
  db_options.periodic_compaction_seconds =
      options.periodic_compaction > absl::ZeroDuration()
          ? static_cast<uint64_t>(
                absl::ToInt64Seconds(options.periodic_compaction))
          : 0;
  db_options.write_buffer_size = options.write_buffer_bytes;
  db_options.max_background_jobs = 2;
  db_options.bytes_per_sync = 1 << 20;
  // Replay the WAL up to the first damaged entry (a torn last write after a
  // crash) instead of refusing to open.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  db_options.compression = rocksdb::kNoCompression;
  // Most Begins are for keys never seen: a bloom filter over the memtable's
  // keys answers those reads without searching the memtable's skip list.
  db_options.memtable_prefix_bloom_size_ratio = 0.02;
  db_options.memtable_whole_key_filtering = true;

  rocksdb::BlockBasedTableOptions table_options;
  table_options.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  table_options.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table_options.cache_index_and_filter_blocks = true;
  db_options.table_factory.reset(
      rocksdb::NewBlockBasedTableFactory(table_options));

  rocksdb::DB* raw_db = nullptr;
  rocksdb::Status opened = rocksdb::DB::Open(db_options, options.path, &raw_db);
  if (!opened.ok()) {
    return FromRocks(opened, absl::StrCat("open of ", options.path));
  }
  std::unique_ptr<RocksDbStore> store(
      new RocksDbStore(options, db_options, raw_db, std::move(filter)));
  if (absl::Status loaded = store->LoadTokenCounter(); !loaded.ok()) {
    return loaded;
  }
  RocksDbStore* writer = store.get();
  store->writer_ = std::thread([writer] { writer->WriterLoop(); });
  // Zero: periodic compaction is off, the thread only watches health.
  const absl::Duration compaction_tick =
      options.periodic_compaction > absl::ZeroDuration()
          ? std::clamp(options.periodic_compaction / 4, absl::Seconds(1),
                       absl::Hours(1))
          : absl::ZeroDuration();
  RocksDbStore* raw = store.get();
  store->maintenance_ = std::thread(
      [raw, compaction_tick] { raw->MaintenanceLoop(compaction_tick); });
  return store;
}

RocksDbStore::RocksDbStore(const RocksDbStoreOptions& options,
                           const rocksdb::Options& db_options, rocksdb::DB* db,
                           std::unique_ptr<TtlCompactionFilter> filter)
    : options_(options),
      db_options_(std::make_unique<const rocksdb::Options>(db_options)),
      filter_(std::move(filter)),
      db_(db),
      instance_(NextInstance()),
      recent_(options.recent_records, options.recent_record_bytes),
      free_space_floor_(options.min_free_disk_bytes) {}

RocksDbStore::~RocksDbStore() {
  {
    absl::MutexLock lock(&queue_mu_);
    closing_ = true;  // The writer finishes what is queued, then stops.
  }
  if (writer_.joinable()) writer_.join();
  {
    absl::MutexLock lock(&maintenance_mu_);
    stopping_ = true;
  }
  if (maintenance_.joinable()) maintenance_.join();
  if (db_ == nullptr) return;  // A reopen failed.
  rocksdb::CancelAllBackgroundWork(db_.get(), /*wait=*/true);
  db_->Close().PermitUncheckedError();
}

absl::Status RocksDbStore::LoadTokenCounter() {
  std::string value;
  rocksdb::Status got =
      db_->Get(rocksdb::ReadOptions(), kTokenReservedKey, &value);
  if (!got.ok() && !got.IsNotFound()) {
    return FromRocks(got, "read of the token counter");
  }
  if (got.ok() && value.size() != 8) {
    return absl::DataLossError("token counter is corrupt");
  }
  // Any token up to the stored reservation may have been handed out.
  reserved_token_ = got.ok() ? DecodeFixed64(value) : 0;
  next_token_ = reserved_token_ + 1;
  return absl::OkStatus();
}

absl::Status RocksDbStore::CheckFreeSpace(size_t bytes) {
  struct statvfs disk;
  if (statvfs(options_.path.c_str(), &disk) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot read the free space of ",
                                               options_.path, ": ",
                                               std::strerror(errno)));
  }
  const uint64_t free_bytes = uint64_t{disk.f_bavail} * disk.f_frsize;
  const uint64_t floor = free_space_floor_.load(std::memory_order_relaxed);
  if (free_bytes >= floor + bytes) return absl::OkStatus();
  free_space_floor_.store(
      options_.min_free_disk_bytes + options_.min_free_disk_bytes / 4,
      std::memory_order_relaxed);
  return absl::UnavailableError(absl::StrCat(
      "the data disk is full: ", free_bytes, " bytes free on ", options_.path,
      " and writes keep ", options_.min_free_disk_bytes,
      " in reserve (--min-free-disk-bytes); they resume once ",
      options_.min_free_disk_bytes + options_.min_free_disk_bytes / 4,
      " bytes are free"));
}

absl::StatusOr<uint64_t> RocksDbStore::NextToken() {
  if (next_token_ > reserved_token_) {
    const uint64_t reserve = reserved_token_ + kTokenBlock;
    rocksdb::WriteOptions write_options;
    write_options.sync = true;  // Always: a reused token breaks fencing.
    rocksdb::Status put;
    {
      absl::ReaderMutexLock lock(&db_mu_);
      put = db_ == nullptr ? ClosedStatus()
                           : db_->Put(write_options, kTokenReservedKey,
                                      EncodeFixed64(reserve));
    }
    if (!put.ok()) return StorageFailure(put, "write of the token counter");
    reserved_token_ = reserve;
  }
  return next_token_++;
}

void RocksDbStore::Apply(std::unique_ptr<Transition> transition) {
  PendingOp op;
  op.db_key = EncodeKey(transition->id());
  op.bytes = op.db_key.size() + transition->payload_bytes();
  op.transition = std::move(transition);
  {
    absl::MutexLock lock(&queue_mu_);
    // One change is always let in, however large (the server bounds bodies).
    if (queue_.size() < options_.max_pending_writes &&
        (queue_.empty() ||
         queued_bytes_ + op.bytes <= options_.max_pending_write_bytes)) {
      queued_bytes_ += op.bytes;
      queue_.push_back(std::move(op));
      return;
    }
  }
  op.transition->Finish(absl::ResourceExhaustedError(absl::StrCat(
      "the server is overloaded: more than ", options_.max_pending_writes,
      " changes or ", options_.max_pending_write_bytes,
      " bytes are waiting for the disk; retry with backoff")));
}

void RocksDbStore::WriterLoop() {
  pthread_setname_np(pthread_self(), "idem-writer");
  std::vector<PendingOp> batch;
  while (true) {
    {
      absl::MutexLock lock(&queue_mu_);
      queue_mu_.Await(absl::Condition(this, &RocksDbStore::HasQueuedOps));
      if (queue_.empty()) return;  // Closing, and nothing left.
      const auto end =
          static_cast<std::ptrdiff_t>(std::min(queue_.size(), kMaxBatch));
      batch.assign(std::make_move_iterator(queue_.begin()),
                   std::make_move_iterator(queue_.begin() + end));
      queue_.erase(queue_.begin(), queue_.begin() + end);
      for (const PendingOp& op : batch) queued_bytes_ -= op.bytes;
    }
    CommitBatch(batch);
    batch.clear();
  }
}

void RocksDbStore::CommitBatch(std::vector<PendingOp>& ops) {
  size_t batch_bytes = 0;
  for (const PendingOp& op : ops) batch_bytes += op.bytes;
  // Checked before any decision, so that not even a token block is written
  // to a full disk.
  if (absl::Status space = CheckFreeSpace(batch_bytes); !space.ok()) {
    NoteStorageError(space);
    FinishGroup group;
    for (PendingOp& op : ops) op.transition->Finish(space);
    return;
  }
  // recent_ holds the records as the operations decided so far leave them,
  // until the write fails.
  const uint64_t version = written_version_.load(std::memory_order_relaxed) + 1;
  recent_.StartBatch(version);
  std::vector<absl::Status> failures(ops.size());
  rocksdb::WriteBatch batch;
  for (size_t i = 0; i < ops.size(); ++i) {
    PendingOp& op = ops[i];
    const RecentRecords::Entry* entry = recent_.Find(op.db_key);
    const PeekHint& hint = op.transition->hint();
    if (entry == nullptr && hint.store_instance == instance_ &&
        recent_.AbsentStill(hint.absent_as_of)) {
      entry = recent_.Remember(op.db_key, std::nullopt, 0);
    } else if (entry == nullptr) {
      size_t bytes = 0;
      absl::StatusOr<std::optional<Record>> stored =
          ReadRecord(op.db_key, &bytes);
      writer_reads_.fetch_add(1, std::memory_order_relaxed);
      if (!stored.ok()) {
        failures[i] = stored.status();
        continue;
      }
      entry = recent_.Remember(op.db_key, *std::move(stored), bytes);
    }
    // The state machine cannot fail on a token; remember a storage error.
    absl::Status token_error;
    auto next_token = [&]() -> uint64_t {
      absl::StatusOr<uint64_t> token = NextToken();
      if (!token.ok()) {
        token_error = token.status();
        return 0;
      }
      return *token;
    };
    const Record* current =
        entry->record.has_value() ? &*entry->record : nullptr;
    absl::StatusOr<Change> change =
        op.transition->Decide(current, options_.clock->Now(), next_token);
    if (!token_error.ok()) {
      failures[i] = token_error;
      continue;
    }
    if (!change.ok()) continue;  // Refused: Finish gives the refusal.
    switch (change->kind) {
      case Change::Kind::kPut: {
        const std::string value = EncodeRecord(change->record);
        batch.Put(op.db_key, value);
        recent_.Remember(op.db_key, std::move(change->record), value.size());
        break;
      }
      case Change::Kind::kDelete:
        batch.Delete(op.db_key);
        recent_.Remember(op.db_key, std::nullopt, 0);
        break;
      case Change::Kind::kNone:
        break;
    }
  }
  absl::Status committed;
  if (batch.Count() > 0) {
    rocksdb::WriteOptions write_options;
    write_options.sync = options_.sync_writes;
    rocksdb::Status written;
    {
      absl::ReaderMutexLock lock(&db_mu_);
      written =
          db_ == nullptr ? ClosedStatus() : db_->Write(write_options, &batch);
    }
    if (!written.ok()) committed = StorageFailure(written, "write");
  }
  // RocksDB may or may not hold a failed batch's changes: read them again.
  if (!committed.ok()) recent_.Forget(version);
  written_version_.store(version, std::memory_order_release);
  // If the batch failed, every answer in it may rest on a lost change. One
  // group: a session gets all its answers from the batch in one message.
  FinishGroup group;
  for (size_t i = 0; i < ops.size(); ++i) {
    ops[i].transition->Finish(!committed.ok() ? committed : failures[i]);
  }
}

absl::StatusOr<std::optional<Record>> RocksDbStore::ReadRecord(
    const std::string& db_key, size_t* encoded_bytes) {
  std::string value;
  rocksdb::Status got;
  {
    absl::ReaderMutexLock lock(&db_mu_);
    got = db_ == nullptr ? ClosedStatus()
                         : db_->Get(rocksdb::ReadOptions(), db_key, &value);
  }
  if (got.IsNotFound()) return std::nullopt;
  if (!got.ok()) return StorageFailure(got, "read");
  if (encoded_bytes != nullptr) *encoded_bytes = value.size();
  absl::StatusOr<Record> record = DecodeRecord(value);
  if (!record.ok()) return record.status();
  return *std::move(record);
}

std::optional<absl::StatusOr<BeginResult>> RocksDbStore::PeekBegin(
    const BeginCommand& command, PeekHint* hint) {
  if (hint != nullptr) *hint = {};
  // Read before the record: the record is at least this recent.
  const uint64_t version = written_version_.load(std::memory_order_acquire);
  absl::StatusOr<std::optional<Record>> record =
      ReadRecord(EncodeKey(command.id));
  if (!record.ok()) return record.status();
  if (!record->has_value()) {  // Begin acquires: a write.
    if (hint != nullptr) *hint = {instance_, version};
    return std::nullopt;
  }
  bool wants_token = false;
  Decision<BeginResult> decision =
      DecideBegin(&**record, command, options_.clock->Now(), [&] {
        wants_token = true;
        return uint64_t{0};
      });
  if (wants_token || decision.write.has_value()) return std::nullopt;
  return std::move(decision.reply);
}

absl::StatusOr<KeySnapshot> RocksDbStore::Lookup(const KeyId& id) {
  absl::StatusOr<std::optional<Record>> record = ReadRecord(EncodeKey(id));
  if (!record.ok()) return record.status();
  return Snapshot(record->has_value() ? &**record : nullptr,
                  options_.clock->Now());
}

absl::Status RocksDbStore::CompactAll() {
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) return FromRocks(ClosedStatus(), "compaction");
  if (absl::Status flushed =
          FromRocks(db_->Flush(rocksdb::FlushOptions()), "flush");
      !flushed.ok()) {
    return flushed;
  }
  rocksdb::CompactRangeOptions compact_options;
  compact_options.bottommost_level_compaction =
      rocksdb::BottommostLevelCompaction::kForce;
  return FromRocks(db_->CompactRange(compact_options, nullptr, nullptr),
                   "compaction");
}

absl::Status RocksDbStore::NudgeCompaction() {
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) return FromRocks(ClosedStatus(), "compaction");
  if (absl::Status flushed =
          FromRocks(db_->Flush(rocksdb::FlushOptions()), "flush");
      !flushed.ok()) {
    return flushed;
  }
  // Re-applying an option installs a new version, and RocksDB then marks
  // the files older than the period and schedules their compaction.
  return FromRocks(
      db_->SetOptions(
          {{"periodic_compaction_seconds",
            std::to_string(db_->GetOptions().periodic_compaction_seconds)}}),
      "periodic compaction check");
}

void RocksDbStore::MaintenanceLoop(absl::Duration compaction_tick) {
  pthread_setname_np(pthread_self(), "idem-maintain");
  // Health is retried every second; compaction is nudged once per tick.
  constexpr absl::Duration kRecoveryTick = absl::Seconds(1);
  absl::Time next_compaction = absl::Now() + compaction_tick;
  absl::MutexLock lock(&maintenance_mu_);
  while (!maintenance_mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                                           kRecoveryTick)) {
    maintenance_mu_.Unlock();
    if (unhealthy_.load(std::memory_order_acquire)) TryRecover();
    // Not while unhealthy: a flush or compaction would write into the disk
    // space the reserve protects.
    if (compaction_tick > absl::ZeroDuration() &&
        absl::Now() >= next_compaction &&
        !unhealthy_.load(std::memory_order_acquire)) {
      // Failures surface on the next write or read; nothing to do here.
      NudgeCompaction().IgnoreError();
      next_compaction = absl::Now() + compaction_tick;
    }
    maintenance_mu_.Lock();
  }
}

absl::Status RocksDbStore::StorageFailure(const rocksdb::Status& status,
                                          absl::string_view what) {
  absl::Status error = FromRocks(status, what);
  NoteStorageError(error, status.IsCorruption());
  return error;
}

void RocksDbStore::NoteStorageError(const absl::Status& error, bool corrupt) {
  absl::MutexLock lock(&health_mu_);
  if (corrupt && !corrupt_.exchange(true)) {
    health_ = absl::UnavailableError(
        absl::StrCat("a data file is corrupt (restart to re-check, restore "
                     "from a backup if it persists): ",
                     error.message()));
  }
  if (health_.ok()) health_ = error;  // Keep the first cause.
  ++error_generation_;
  unhealthy_.store(true, std::memory_order_release);
}

rocksdb::Status RocksDbStore::Probe(bool resume) {
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) return ClosedStatus();
  // Clears RocksDB's background error if its cause is gone (space freed);
  // it fails harmlessly when there is nothing to resume.
  if (resume) db_->Resume().PermitUncheckedError();
  rocksdb::WriteOptions write_options;
  write_options.sync = true;
  return db_->Put(
      write_options, kHealthProbeKey,
      EncodeFixed64(static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()))));
}

absl::Status RocksDbStore::Reopen() {
  absl::WriterMutexLock lock(&db_mu_);
  if (db_ != nullptr) {
    rocksdb::CancelAllBackgroundWork(db_.get(), /*wait=*/true);
    db_->Close().PermitUncheckedError();
    db_.reset();
  }
  rocksdb::DB* raw_db = nullptr;
  rocksdb::Status opened =
      rocksdb::DB::Open(*db_options_, options_.path, &raw_db);
  if (opened.ok()) {
    db_.reset(raw_db);
    return absl::OkStatus();
  }
  // Still failing (no descriptors yet): every call fails UNAVAILABLE until
  // the next tick tries again.
  return FromRocks(opened, "reopen");
}

void RocksDbStore::TryRecover() {
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&health_mu_);
    if (corrupt_.load(std::memory_order_acquire)) return;
    generation = error_generation_;
  }
  // A probe write to a full disk would fail, or worse (see CheckFreeSpace).
  if (!CheckFreeSpace(0).ok()) return;
  rocksdb::Status probe = Probe(/*resume=*/true);
  if (!probe.ok()) {
    // Resume() cannot clear a fatal background error (a memtable switch
    // that failed with EMFILE is one): reopening the database can, once the
    // cause is gone. Its log holds every acknowledged change.
    if (absl::Status reopened = Reopen(); reopened.ok()) {
      probe = Probe(/*resume=*/false);
    }
  }
  absl::MutexLock lock(&health_mu_);
  // An error that happened while probing is newer than the probe's proof.
  if (probe.ok() && generation == error_generation_ &&
      !corrupt_.load(std::memory_order_acquire)) {
    free_space_floor_.store(options_.min_free_disk_bytes,
                            std::memory_order_relaxed);
    health_ = absl::OkStatus();
    unhealthy_.store(false, std::memory_order_release);
  }
}

absl::Status RocksDbStore::Health() {
  if (!unhealthy_.load(std::memory_order_acquire)) return absl::OkStatus();
  absl::MutexLock lock(&health_mu_);
  return health_;
}

StoreStats RocksDbStore::Stats() {
  StoreStats stats;
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) return stats;
  uint64_t sst_bytes = 0;
  db_->GetIntProperty(rocksdb::DB::Properties::kTotalSstFilesSize, &sst_bytes);
  uint64_t wal_bytes = 0;
  rocksdb::VectorLogPtr wal_files;
  if (db_->GetSortedWalFiles(wal_files).ok()) {
    for (const auto& wal : wal_files) wal_bytes += wal->SizeFileBytes();
  }
  stats.disk_bytes = sst_bytes + wal_bytes;
  db_->GetIntProperty(rocksdb::DB::Properties::kEstimateNumKeys,
                      &stats.estimated_keys);
  stats.expired_dropped = filter_->dropped();
  return stats;
}

absl::StatusOr<ListPage> RocksDbStore::List(const ListQuery& query) {
  const std::string prefix = NamespacePrefix(query.name_space);
  const absl::Time now = options_.clock->Now();
  const std::string start = prefix + query.page_token;
  ListPager pager(query);
  // The iterator is made and used under db_mu_: a reopen replaces db_.
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) return FromRocks(ClosedStatus(), "scan");
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(start); it->Valid() && it->key().starts_with(prefix);
       it->Next()) {
    const absl::string_view db_key(it->key().data(), it->key().size());
    if (!query.page_token.empty() && db_key == start) continue;
    absl::StatusOr<Record> record =
        DecodeRecord(absl::string_view(it->value().data(), it->value().size()));
    // An undecodable record is skipped (Lookup reports it as DATA_LOSS).
    const KeySnapshot snapshot =
        record.ok() ? Snapshot(&*record, now) : KeySnapshot{};
    if (!pager.Offer(std::string(db_key.substr(prefix.size())),
                     record.ok() ? &snapshot : nullptr)) {
      break;
    }
  }
  if (!it->status().ok()) return FromRocks(it->status(), "scan");
  return pager.Take();
}

absl::StatusOr<std::map<std::string, StateCounts>> RocksDbStore::CountKeys(
    const std::string& name_space) {
  const std::string prefix =
      name_space.empty() ? std::string(1, 'k') : NamespacePrefix(name_space);
  const absl::Time now = options_.clock->Now();
  std::map<std::string, StateCounts> counts;
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) return FromRocks(ClosedStatus(), "scan");
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix);
       it->Next()) {
    std::optional<KeyId> id =
        DecodeKey(absl::string_view(it->key().data(), it->key().size()));
    absl::StatusOr<Record> record =
        DecodeRecord(absl::string_view(it->value().data(), it->value().size()));
    if (!id.has_value() || !record.ok()) continue;
    counts[id->name_space].Add(Snapshot(&*record, now));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "scan");
  return counts;
}

}  // namespace idem::storage
