#include "storage/rocksdb/recent_records.h"

#include <utility>

namespace idem::storage {

void RecentRecords::StartBatch(uint64_t version) {
  if (current_.size() <= max_entries_ && current_bytes_ <= max_bytes_) return;
  // previous_ covered (complete_since_, current_since_]: dropped.
  previous_ = std::move(current_);
  current_.clear();
  current_bytes_ = 0;
  complete_since_ = current_since_;
  current_since_ = version - 1;
}

const RecentRecords::Entry* RecentRecords::Find(const std::string& db_key) {
  if (auto it = current_.find(db_key); it != current_.end()) return &it->second;
  auto old = previous_.find(db_key);
  if (old == previous_.end()) return nullptr;
  // Touched again: it belongs to the current generation now, or dropping
  // the previous one would forget a key that a later batch touched.
  auto node = previous_.extract(old);
  current_bytes_ += node.key().size() + node.mapped().record_bytes;
  return &current_.insert(std::move(node)).position->second;
}

const RecentRecords::Entry* RecentRecords::Remember(
    const std::string& db_key, std::optional<Record> record,
    size_t record_bytes) {
  auto [it, inserted] = current_.try_emplace(db_key);
  Entry& entry = it->second;
  if (inserted) current_bytes_ += db_key.size();
  current_bytes_ = current_bytes_ - entry.record_bytes + record_bytes;
  entry.record = std::move(record);
  entry.record_bytes = record_bytes;
  return &entry;
}

void RecentRecords::Forget(uint64_t version) {
  current_.clear();
  previous_.clear();
  current_bytes_ = 0;
  current_since_ = version;
  complete_since_ = version;
}

}  // namespace idem::storage
