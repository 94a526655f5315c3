// Server metrics in the Prometheus text format (version 0.0.4).
//
//   idem_rpc_total{method,outcome}             counter
//   idem_rpc_duration_seconds{method}          histogram
//   idem_lease_takeovers_total                 counter
//   idem_parked_waiters                        gauge
//   idem_keys_stored, idem_disk_bytes          gauges (from the store)
//   idem_expired_dropped_total                 counter (TTL compaction)
//   idem_storage_healthy                       gauge (1: writes work)
//   idem_auth_total{principal,result}          counter (with --policy;
//       result: allowed, permission_denied, unauthenticated)
//   idem_tls_reloads_total{result}             counter (installed, refused)
//   idem_tls_files_valid                       gauge (with TLS: 0 while the
//       files on disk are refused and an older set serves)
//   idem_sessions_open                         gauge (Session streams)
//   idem_session_messages_total{direction}     counter (received, sent)
//   idem_session_operations_total              counter (also counted in
//       idem_rpc_total under their own method)
//
// `outcome` is the Begin outcome (ACQUIRED, COMPLETED, IN_PROGRESS,
// MISMATCH), OK for other successful calls, or the gRPC code name of an
// error (INVALID_ARGUMENT, UNAVAILABLE, ...). Thread-safe.
#ifndef IDEM_SERVER_OPS_METRICS_H_
#define IDEM_SERVER_OPS_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/store.h"

namespace idem::server {

class Metrics {
 public:
  // Upper bounds of the latency buckets, in seconds.
  static constexpr std::array<double, 14> kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
      0.1,    0.25,  0.5,    1,     2.5,  5,     10};

  void RecordRpc(absl::string_view method, absl::string_view outcome,
                 absl::Duration latency);
  void RecordTakeover();
  // `principal` is "" for a caller with no identity.
  void RecordAuth(absl::string_view principal, absl::string_view result);
  // A change of the TLS files: installed, or refused (the old set serves).
  void RecordTlsReload(bool installed);
  // A Session stream opened (+1) or closed (-1); its messages and
  // operations. Lock-free: these run for every message.
  void RecordSessionOpen(int delta) { sessions_open_ += delta; }
  void RecordSessionMessages(uint64_t received, uint64_t sent) {
    session_messages_received_ += received;
    session_messages_sent_ += sent;
  }
  void RecordSessionOperations(uint64_t n) { session_operations_ += n; }

  // Values read at scrape time.
  struct Gauges {
    size_t parked_waiters = 0;
    storage::StoreStats store;
    bool storage_healthy = true;
    // The HTTP/JSON port's connections, when it is on.
    struct Http {
      uint64_t open_connections = 0;
      uint64_t refused = 0;
    };
    std::optional<Http> http;
  };
  std::string Render(const Gauges& gauges) const;

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> buckets = {};  // Not cumulative.
    uint64_t count = 0;
    double sum = 0;
  };
  struct RpcCount {
    std::string method;
    std::string outcome;
    uint64_t count = 0;
  };
  mutable absl::Mutex mu_;
  // Keyed by "method outcome"; looked up without allocating (this runs for
  // every RPC).
  absl::flat_hash_map<std::string, RpcCount> rpcs_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Histogram> latency_ ABSL_GUARDED_BY(mu_);
  uint64_t takeovers_ ABSL_GUARDED_BY(mu_) = 0;
  // Keyed by (principal, result); principals come from the policy file, so
  // the series are bounded.
  std::map<std::pair<std::string, std::string>, uint64_t> auth_
      ABSL_GUARDED_BY(mu_);
  uint64_t tls_installed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t tls_refused_ ABSL_GUARDED_BY(mu_) = 0;
  bool tls_valid_ ABSL_GUARDED_BY(mu_) = true;
  std::atomic<int64_t> sessions_open_{0};
  std::atomic<uint64_t> session_messages_received_{0};
  std::atomic<uint64_t> session_messages_sent_{0};
  std::atomic<uint64_t> session_operations_{0};
};

}  // namespace idem::server

#endif  // IDEM_SERVER_OPS_METRICS_H_
