#include "server/ops/metrics.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"

namespace idem::server {
namespace {

// A Prometheus label value: backslash, double quote and newline escaped
// (principal names come from the policy file).
std::string LabelValue(absl::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace

void Metrics::RecordRpc(absl::string_view method, absl::string_view outcome,
                        absl::Duration latency) {
  const double seconds = absl::ToDoubleSeconds(latency);
  // "method outcome", built on the stack: names are short and fixed.
  char buffer[128];
  std::string long_key;
  absl::string_view key;
  if (method.size() + outcome.size() + 1 <= sizeof(buffer)) {
    std::copy(method.begin(), method.end(), buffer);
    buffer[method.size()] = ' ';
    std::copy(outcome.begin(), outcome.end(), buffer + method.size() + 1);
    key = absl::string_view(buffer, method.size() + outcome.size() + 1);
  } else {
    long_key = absl::StrCat(method, " ", outcome);
    key = long_key;
  }
  absl::MutexLock lock(&mu_);
  auto counter = rpcs_.find(key);
  if (counter == rpcs_.end()) {
    counter = rpcs_
                  .emplace(std::string(key),
                           RpcCount{std::string(method), std::string(outcome)})
                  .first;
  }
  ++counter->second.count;
  auto histogram = latency_.find(method);
  if (histogram == latency_.end()) {
    histogram = latency_.emplace(std::string(method), Histogram()).first;
  }
  Histogram& h = histogram->second;
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

void Metrics::RecordAuth(absl::string_view principal,
                         absl::string_view result) {
  absl::MutexLock lock(&mu_);
  ++auth_[{std::string(principal), std::string(result)}];
}

void Metrics::RecordTlsReload(bool installed) {
  absl::MutexLock lock(&mu_);
  ++(installed ? tls_installed_ : tls_refused_);
  tls_valid_ = installed;
}

std::string Metrics::Render(const Gauges& gauges) const {
  std::string out;
  absl::MutexLock lock(&mu_);
  absl::StrAppend(&out,
                  "# HELP idem_rpc_total RPCs answered, by method and outcome "
                  "(Begin outcome, OK, or gRPC error code).\n"
                  "# TYPE idem_rpc_total counter\n");
  // Sorted, so that scrapes list series in a stable order.
  std::map<absl::string_view, const RpcCount*> rpcs;
  for (const auto& [key, counter] : rpcs_) rpcs[key] = &counter;
  for (const auto& [key, counter] : rpcs) {
    absl::StrAppend(&out, "idem_rpc_total{method=\"", counter->method,
                    "\",outcome=\"", counter->outcome, "\"} ", counter->count,
                    "\n");
  }
  absl::StrAppend(&out,
                  "# HELP idem_rpc_duration_seconds Time to answer an RPC, "
                  "including any Begin wait.\n"
                  "# TYPE idem_rpc_duration_seconds histogram\n");
  std::map<absl::string_view, const Histogram*> histograms;
  for (const auto& [method, h] : latency_) histograms[method] = &h;
  for (const auto& [method, histogram] : histograms) {
    const Histogram& h = *histogram;
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
      "\n# HELP idem_expired_dropped_total Stored versions of expired "
      "records removed by TTL compaction since start (one key may count "
      "once per version).\n# TYPE idem_expired_dropped_total counter\n"
      "idem_expired_dropped_total ",
      gauges.store.expired_dropped,
      "\n# HELP idem_storage_healthy 1 while the store takes writes, 0 after "
      "a storage error until it recovers.\n# TYPE idem_storage_healthy "
      "gauge\nidem_storage_healthy ",
      gauges.storage_healthy ? 1 : 0, "\n");
  if (gauges.store.expired_backlog.has_value()) {
    absl::StrAppend(
        &out,
        "# HELP idem_expired_backlog Expired records still stored, waiting "
        "for the reaper (at most 1000000 counted).\n# TYPE "
        "idem_expired_backlog gauge\nidem_expired_backlog ",
        *gauges.store.expired_backlog, "\n");
  }
  if (gauges.http.has_value()) {
    absl::StrAppend(
        &out,
        "# HELP idem_connect_http_connections HTTP/JSON (--http-listen) "
        "connections open.\n# TYPE idem_connect_http_connections gauge\n"
        "idem_connect_http_connections ",
        gauges.http->open_connections,
        "\n# HELP idem_connect_http_refused_total HTTP/JSON connections and "
        "requests refused by the HTTP layer: too many connections, a head "
        "or body too large, too slow, malformed.\n# TYPE "
        "idem_connect_http_refused_total counter\n"
        "idem_connect_http_refused_total ",
        gauges.http->refused, "\n");
  }
  if (gauges.store.slot_migrations.has_value()) {
    absl::StrAppend(
        &out,
        "# HELP idem_redis_slots_migrating Redis Cluster slots being moved "
        "between masters (MIGRATING or IMPORTING on a master), checked every "
        "5 s.\n# TYPE idem_redis_slots_migrating gauge\n"
        "idem_redis_slots_migrating ",
        gauges.store.slot_migrations->open,
        "\n# HELP idem_redis_slot_migration_oldest_seconds How long the "
        "oldest open slot migration has been open (0: none).\n# TYPE "
        "idem_redis_slot_migration_oldest_seconds gauge\n"
        "idem_redis_slot_migration_oldest_seconds ",
        absl::ToInt64Seconds(gauges.store.slot_migrations->oldest), "\n");
  }
  if (tls_installed_ + tls_refused_ > 0) {
    absl::StrAppend(
        &out,
        "# HELP idem_tls_reloads_total Changes of the TLS files, installed "
        "or refused (a refused set never reaches gRPC; the last good one "
        "serves).\n# TYPE idem_tls_reloads_total counter\n"
        "idem_tls_reloads_total{result=\"installed\"} ",
        tls_installed_, "\nidem_tls_reloads_total{result=\"refused\"} ",
        tls_refused_,
        "\n# HELP idem_tls_files_valid 0 while the TLS files on disk are "
        "refused and an older set serves.\n# TYPE idem_tls_files_valid "
        "gauge\nidem_tls_files_valid ",
        tls_valid_ ? 1 : 0, "\n");
  }
  absl::StrAppend(
      &out,
      "# HELP idem_sessions_open Session streams open.\n"
      "# TYPE idem_sessions_open gauge\nidem_sessions_open ",
      sessions_open_.load(),
      "\n# HELP idem_session_messages_total Session stream messages, "
      "received (operations) and sent (answers).\n"
      "# TYPE idem_session_messages_total counter\n"
      "idem_session_messages_total{direction=\"received\"} ",
      session_messages_received_.load(),
      "\nidem_session_messages_total{direction=\"sent\"} ",
      session_messages_sent_.load(),
      "\n# HELP idem_session_operations_total Operations received over "
      "Session streams (each is also in idem_rpc_total).\n"
      "# TYPE idem_session_operations_total counter\n"
      "idem_session_operations_total ",
      session_operations_.load(), "\n");
  if (!auth_.empty()) {
    absl::StrAppend(&out,
                    "# HELP idem_auth_total Authorization decisions, by "
                    "principal (policy name; empty: no identity) and result.\n"
                    "# TYPE idem_auth_total counter\n");
    for (const auto& [labels, count] : auth_) {
      absl::StrAppend(&out, "idem_auth_total{principal=\"",
                      LabelValue(labels.first), "\",result=\"", labels.second,
                      "\"} ", count, "\n");
    }
  }
  return out;
}

}  // namespace idem::server
