// One page of an operator's key listing (Store::List), built the same way by
// every store: the store offers the namespace's keys in key order, the pager
// keeps those that match the query, and it decides when the page is done.
//
// A next_page_token is set only when a matching key is known to follow (or
// the scan budget ran out first), so that the last page never carries a
// token (AIP-158): a client loops "while token not empty" without an extra,
// empty call.
//
//   ListPager pager(query);
//   for (each key in order)
//     if (!pager.Offer(key, snapshot_or_null)) break;
//   return pager.Take();
#ifndef IDEM_STORAGE_LIST_PAGER_H_
#define IDEM_STORAGE_LIST_PAGER_H_

#include <string>

#include "absl/time/time.h"
#include "storage/store.h"

namespace idem::storage {

class ListPager {
 public:
  explicit ListPager(const ListQuery& query);

  // The next key of the namespace, in key order, after the query's page
  // token; `snapshot` is null for a record that cannot be read. Returns
  // false once the page is decided: stop scanning.
  bool Offer(const std::string& key, const KeySnapshot* snapshot);

  // The page; its token is empty unless Offer returned false for a reason
  // other than running out of keys.
  ListPage Take() { return std::move(page_); }

 private:
  bool Matches(const KeySnapshot& snapshot) const;

  const ListQuery& query_;
  const size_t page_size_;
  // Filters may skip most records: one call reads at most this many.
  const size_t scan_limit_;
  size_t scanned_ = 0;
  std::string last_scanned_;
  ListPage page_;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_LIST_PAGER_H_
