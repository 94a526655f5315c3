// The limits and defaults the server applies to every request. Set from
// flags at start-up (see config.h); each has a documented default.
#ifndef IDEM_SERVER_RPC_LIMITS_H_
#define IDEM_SERVER_RPC_LIMITS_H_

#include <cstddef>

#include "absl/time/time.h"

namespace idem::server {

struct Limits {
  // Identity of a key: printable ASCII (0x20-0x7E), fixed by the API.
  static constexpr size_t kMaxNamespaceBytes = 128;
  static constexpr size_t kMaxKeyBytes = 255;
  static constexpr size_t kMaxFingerprintBytes = 64;
  static constexpr size_t kMaxOwnerBytes = 128;
  static constexpr size_t kMaxCheckpointBytes = size_t{64} << 10;
  static constexpr size_t kMaxReasonBytes = 512;
  static constexpr int kDefaultPageSize = 100;
  static constexpr int kMaxPageSize = 1000;
  static constexpr int kMaxBatchSize = 1000;
  // Shortest lease and retention a caller may ask for.
  static constexpr absl::Duration kMinLease = absl::Seconds(1);
  static constexpr absl::Duration kMinRetention = absl::Seconds(1);

  absl::Duration default_lease = absl::Seconds(30);
  absl::Duration max_lease = absl::Hours(1);
  absl::Duration default_retention = absl::Hours(24);
  absl::Duration max_retention = absl::Hours(24 * 30);
  absl::Duration max_wait = absl::Minutes(5);
  // A parked Begin looks at its key again at least this often (other
  // processes may change it without telling this one).
  absl::Duration wait_recheck = absl::InfiniteDuration();
  // Each parked Begin holds a gRPC call (a few KiB) until it is answered.
  size_t max_parked_waiters = 10'000;
  size_t max_body_bytes = size_t{1} << 20;
  size_t max_metadata_entries = 64;
  size_t max_metadata_key_bytes = 256;
  size_t max_metadata_value_bytes = 8192;
  // Bound on one reply: a BeginBatch replaying stored results (up to 1,000
  // of them, the same key any number of times) stops adding results here,
  // so that a 10 KB request cannot make the server build gigabytes.
  size_t max_reply_bytes = size_t{64} << 20;

  // The largest stored result the limits admit (body and metadata, with
  // room for protobuf framing): one Begin or Lookup reply carries at most
  // this, and --max-reply-bytes must hold it.
  size_t MaxResultBytes() const {
    return max_body_bytes +
           max_metadata_entries *
               (max_metadata_key_bytes + max_metadata_value_bytes + 16) +
           1024;
  }
};

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_LIMITS_H_
