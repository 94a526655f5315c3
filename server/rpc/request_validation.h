// Turns API requests into storage commands, enforcing every limit. A request
// that breaks one gets INVALID_ARGUMENT (malformed) or RESOURCE_EXHAUSTED
// (too large), with a message that names the field and the limit, before any
// storage is touched.
#ifndef IDEM_SERVER_RPC_REQUEST_VALIDATION_H_
#define IDEM_SERVER_RPC_REQUEST_VALIDATION_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "idem/v1/admin.pb.h"
#include "idem/v1/idempotency.pb.h"
#include "server/rpc/limits.h"
#include "storage/store.h"

namespace idem::server {

struct ValidBegin {
  storage::BeginCommand command;
  // How long the call may be held open while another attempt is in progress.
  absl::Duration wait;
};

absl::StatusOr<ValidBegin> ValidateBegin(const v1::BeginRequest& request,
                                         const Limits& limits);
absl::StatusOr<storage::CompleteCommand> ValidateComplete(
    const v1::CompleteRequest& request, const Limits& limits);
absl::StatusOr<storage::ReleaseCommand> ValidateRelease(
    const v1::ReleaseRequest& request);
absl::StatusOr<storage::ExtendCommand> ValidateExtend(
    const v1::ExtendRequest& request, const Limits& limits);
absl::StatusOr<storage::KeyId> ValidateLookup(const v1::LookupRequest& request);
absl::StatusOr<storage::CheckpointCommand> ValidateCheckpoint(
    const v1::CheckpointRequest& request);
// A Session operation's `timeout`: InfiniteDuration when unset, else 1 ms
// to 24 h.
absl::StatusOr<absl::Duration> ValidateSessionTimeout(const v1::SessionOp& op);

// Admin requests.
struct AdminAction {
  storage::KeyId id;
  std::string reason;
};
absl::StatusOr<AdminAction> ValidateAdminAction(absl::string_view name_space,
                                                absl::string_view key,
                                                absl::string_view reason);
absl::StatusOr<storage::ListQuery> ValidateList(const v1::ListRequest& request);
// The namespace to count, or empty for all.
absl::StatusOr<std::string> ValidateStats(const v1::StatsRequest& request);

// The raw 32-byte SHA-256 digest of `request`, the fingerprint the server
// computes when a caller sends its request instead of a fingerprint.
std::string Sha256(absl::string_view request);

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_REQUEST_VALIDATION_H_
