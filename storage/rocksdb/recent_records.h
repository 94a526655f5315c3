// The writer thread's memory of the records it read and wrote last, so that
// it reads RocksDB at most once for a key it touched a moment ago (the
// Complete after a Begin, a retry) and not at all for a key a Begin's peek
// found absent (PeekHint).
//
// Only the writer thread uses it, and only the writer thread changes
// records, so an entry holds exactly what RocksDB holds — as long as the
// writer calls Forget() when a write fails or the database is reopened.
// Records that expire meanwhile stay as they were written: the state
// machine treats an expired record as absent, as it treats the absence the
// compaction filter leaves behind.
//
// Two generations bound its memory: when the current one holds more than
// `max_entries` keys or `max_bytes` of keys and records, the batch that
// starts next turns it into the previous one and drops the one before.
//
// Versions: the writer numbers its batches 1, 2, ... A peek that saw the
// store at version V (every batch up to V written) and found a key absent
// can skip the writer's read if no later batch touched the key; the
// generations still hold every key of every batch since
// `complete_since()`, so for V at or after it, "not here" means "not
// written since".
#ifndef IDEM_STORAGE_ROCKSDB_RECENT_RECORDS_H_
#define IDEM_STORAGE_ROCKSDB_RECENT_RECORDS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "storage/record.pb.h"

namespace idem::storage {

class RecentRecords {
 public:
  struct Entry {
    std::optional<Record> record;  // nullopt: the key has no record.
    size_t record_bytes = 0;       // Encoded, for the bound.
  };

  RecentRecords(size_t max_entries, size_t max_bytes)
      : max_entries_(max_entries), max_bytes_(max_bytes) {}

  // Called before each batch, with its version (one more than the last).
  void StartBatch(uint64_t version);

  // The remembered record of `db_key`, or null. The pointer is valid until
  // the next Remember or StartBatch.
  const Entry* Find(const std::string& db_key);
  // Remembers `db_key`'s record as read or written in the current batch.
  const Entry* Remember(const std::string& db_key, std::optional<Record> record,
                        size_t record_bytes);

  // Whether a key found absent by a reader that had seen every batch up to
  // `version`, and not Found here, is absent still.
  bool AbsentStill(uint64_t version) const {
    return version != 0 && version >= complete_since_;
  }

  // Forgets everything after the write of the batch of `version` failed
  // (RocksDB may or may not hold its changes): only a reader that saw
  // that batch's outcome may rely on AbsentStill from here on.
  void Forget(uint64_t version);

  size_t size() const { return current_.size() + previous_.size(); }

 private:
  const size_t max_entries_;
  const size_t max_bytes_;
  absl::flat_hash_map<std::string, Entry> current_;
  absl::flat_hash_map<std::string, Entry> previous_;
  size_t current_bytes_ = 0;
  // The version before the first batch current_ covers: previous_ covers
  // from complete_since_ + 1 to here.
  uint64_t current_since_ = 0;
  // Every key of every batch after this version is remembered.
  uint64_t complete_since_ = 0;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_ROCKSDB_RECENT_RECORDS_H_
