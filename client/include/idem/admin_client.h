// The operator's client of the idem.v1.Admin service: list, inspect, delete
// and force-release keys, and count them. Separate from Client because the
// Admin service is authorized separately; application services never need
// it.
//
//   auto admin = idem::client::AdminClient::Connect({.target = "idem:50051"});
//   auto stuck = (*admin)->List("payments", {.state = KeyState::kInProgress,
//                                            .lease_lapsed = true});
#ifndef IDEM_CLIENT_INCLUDE_IDEM_ADMIN_CLIENT_H_
#define IDEM_CLIENT_INCLUDE_IDEM_ADMIN_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "idem/client.h"

namespace idem::client {

struct KeySummary {
  std::string key;
  KeyState state = KeyState::kAbsent;
  absl::Time lease_expires_at = absl::InfinitePast();
  bool lease_lapsed = false;
  absl::Time created_at = absl::InfinitePast();
  absl::Time expires_at = absl::InfinitePast();
  uint32_t attempt = 0;
  int32_t result_code = 0;
};

struct ListOptions {
  // Only keys in this state (kInProgress or kCompleted); nullopt: both.
  std::optional<KeyState> state;
  // Only in-progress keys whose lease lapsed.
  bool lease_lapsed = false;
  // 1 to 1000; 0 means the server's default (100).
  int page_size = 0;
  std::string page_token;
};

struct KeyPage {
  std::vector<KeySummary> keys;
  // Empty after the last page.
  std::string next_page_token;
};

struct NamespaceCounts {
  std::string name_space;
  uint64_t in_progress = 0;
  uint64_t lease_lapsed = 0;
  uint64_t completed = 0;
};

struct StoreReport {
  std::vector<NamespaceCounts> namespaces;
  uint64_t estimated_keys = 0;
  uint64_t disk_bytes = 0;
  uint64_t expired_dropped = 0;
  // Expired records waiting for removal, where the store tells
  // (PostgreSQL).
  std::optional<uint64_t> expired_backlog;
};

class AdminClient {
 public:
  static absl::StatusOr<std::unique_ptr<AdminClient>> Connect(
      const ClientOptions& options);
  ~AdminClient();
  AdminClient(const AdminClient&) = delete;
  AdminClient& operator=(const AdminClient&) = delete;

  // Returns whether a live record existed. `reason` is required and logged.
  absl::StatusOr<bool> Delete(absl::string_view name_space,
                              absl::string_view key, absl::string_view reason);
  // Returns the fencing token the key now carries. Not retried: a repeat
  // after a lost reply would fail as the key is no longer in progress.
  absl::StatusOr<uint64_t> ForceRelease(absl::string_view name_space,
                                        absl::string_view key,
                                        absl::string_view reason);
  absl::StatusOr<KeyPage> List(absl::string_view name_space,
                               const ListOptions& options);
  // Counts of one namespace, or of all when `name_space` is empty.
  absl::StatusOr<StoreReport> Stats(absl::string_view name_space = "");

 private:
  class Impl;
  explicit AdminClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace idem::client

#endif  // IDEM_CLIENT_INCLUDE_IDEM_ADMIN_CLIENT_H_
