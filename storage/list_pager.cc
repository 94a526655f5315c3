#include "storage/list_pager.h"

#include <algorithm>

namespace idem::storage {

ListPager::ListPager(const ListQuery& query)
    : query_(query),
      page_size_(std::max<size_t>(1, query.page_size)),
      scan_limit_(std::max<size_t>(1000, page_size_ * 10)) {}

bool ListPager::Matches(const KeySnapshot& snapshot) const {
  if (snapshot.state == KeyState::kAbsent) return false;
  if (query_.state != KeyState::kAbsent && snapshot.state != query_.state) {
    return false;
  }
  return !query_.lease_lapsed_only || snapshot.lease_lapsed;
}

bool ListPager::Offer(const std::string& key, const KeySnapshot* snapshot) {
  if (scanned_ == scan_limit_) {
    // Out of budget: the next page goes on after the last key read.
    page_.next_page_token = last_scanned_;
    return false;
  }
  ++scanned_;
  last_scanned_ = key;
  if (snapshot == nullptr || !Matches(*snapshot)) return true;
  if (page_.keys.size() == page_size_) {
    // A matching key follows a full page: there is a next page, and it
    // starts after this page's last key.
    page_.next_page_token = page_.keys.back().key;
    return false;
  }
  page_.keys.push_back(KeyListing{key, *snapshot});
  return true;
}

}  // namespace idem::storage
