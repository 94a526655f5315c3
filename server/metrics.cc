#include "server/metrics.h"

#include "absl/strings/str_cat.h"

namespace idem::server {

void Metrics::RecordRpc(absl::string_view method, absl::string_view outcome,
                        absl::Duration latency) {
  const double seconds = absl::ToDoubleSeconds(latency);
  absl::MutexLock lock(&mu_);
  ++rpcs_[{std::string(method), std::string(outcome)}];
  Histogram& h = latency_[std::string(method)];
  ++h.count;
  h.sum += seconds;
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) {
      ++h.buckets[i];
      break;
    }
  }
}

void Metrics::RecordTakeover() {
  absl::MutexLock lock(&mu_);
  ++takeovers_;
}

std::string Metrics::Render(const Gauges& gauges) const {
  std::string out;
  absl::MutexLock lock(&mu_);
  absl::StrAppend(&out,
                  "# HELP idem_rpc_total RPCs answered, by method and outcome "
                  "(Begin outcome, OK, or gRPC error code).\n"
                  "# TYPE idem_rpc_total counter\n");
  for (const auto& [labels, count] : rpcs_) {
    absl::StrAppend(&out, "idem_rpc_total{method=\"", labels.first,
                    "\",outcome=\"", labels.second, "\"} ", count, "\n");
  }
  absl::StrAppend(&out,
                  "# HELP idem_rpc_duration_seconds Time to answer an RPC, "
                  "including any Begin wait.\n"
                  "# TYPE idem_rpc_duration_seconds histogram\n");
  for (const auto& [method, h] : latency_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      cumulative += h.buckets[i];
      absl::StrAppend(&out, "idem_rpc_duration_seconds_bucket{method=\"",
                      method, "\",le=\"", kBuckets[i], "\"} ", cumulative,
                      "\n");
    }
    absl::StrAppend(&out, "idem_rpc_duration_seconds_bucket{method=\"", method,
                    "\",le=\"+Inf\"} ", h.count, "\n",
                    "idem_rpc_duration_seconds_sum{method=\"", method, "\"} ",
                    h.sum, "\n", "idem_rpc_duration_seconds_count{method=\"",
                    method, "\"} ", h.count, "\n");
  }
  absl::StrAppend(
      &out,
      "# HELP idem_lease_takeovers_total Keys acquired from a holder whose "
      "lease lapsed.\n# TYPE idem_lease_takeovers_total counter\n"
      "idem_lease_takeovers_total ",
      takeovers_,
      "\n# HELP idem_parked_waiters Begin calls waiting for an attempt in "
      "progress.\n# TYPE idem_parked_waiters gauge\nidem_parked_waiters ",
      gauges.parked_waiters,
      "\n# HELP idem_keys_stored Records on disk (an estimate that includes "
      "expired records not yet compacted).\n# TYPE idem_keys_stored gauge\n"
      "idem_keys_stored ",
      gauges.store.estimated_keys,
      "\n# HELP idem_disk_bytes Bytes of data files and write-ahead logs.\n"
      "# TYPE idem_disk_bytes gauge\nidem_disk_bytes ",
      gauges.store.disk_bytes,
      "\n# HELP idem_expired_dropped_total Expired records removed by TTL "
      "compaction since start.\n# TYPE idem_expired_dropped_total counter\n"
      "idem_expired_dropped_total ",
      gauges.store.expired_dropped, "\n");
  return out;
}

}  // namespace idem::server
