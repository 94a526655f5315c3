#include "server/metrics.h"

#include "gtest/gtest.h"

namespace idem::server {
namespace {

TEST(MetricsTest, RendersCountersAndCumulativeHistograms) {
  Metrics metrics;
  metrics.RecordRpc("Begin", "ACQUIRED", absl::Microseconds(300));
  metrics.RecordRpc("Begin", "ACQUIRED", absl::Milliseconds(3));
  metrics.RecordRpc("Begin", "INVALID_ARGUMENT", absl::Seconds(30));
  metrics.RecordTakeover();
  const std::string text = metrics.Render({7, {100, 4096, 3}});
  for (const char* line : {
           "idem_rpc_total{method=\"Begin\",outcome=\"ACQUIRED\"} 2\n",
           "idem_rpc_total{method=\"Begin\",outcome=\"INVALID_ARGUMENT\"} 1\n",
           "idem_rpc_duration_seconds_bucket{method=\"Begin\",le=\"0.0005\"} "
           "1\n",
           "idem_rpc_duration_seconds_bucket{method=\"Begin\",le=\"0.005\"} "
           "2\n",
           "idem_rpc_duration_seconds_bucket{method=\"Begin\",le=\"10\"} 2\n",
           "idem_rpc_duration_seconds_bucket{method=\"Begin\",le=\"+Inf\"} 3\n",
           "idem_rpc_duration_seconds_count{method=\"Begin\"} 3\n",
           "idem_lease_takeovers_total 1\n",
           "idem_parked_waiters 7\n",
           "idem_keys_stored 100\n",
           "idem_disk_bytes 4096\n",
           "idem_expired_dropped_total 3\n",
       }) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\nin:\n" << text;
  }
}

}  // namespace
}  // namespace idem::server
