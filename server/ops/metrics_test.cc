#include "server/ops/metrics.h"

#include "gtest/gtest.h"

namespace idem::server {
namespace {

TEST(MetricsTest, RendersCountersAndCumulativeHistograms) {
  Metrics metrics;
  metrics.RecordRpc("Begin", "ACQUIRED", absl::Microseconds(300));
  metrics.RecordRpc("Begin", "ACQUIRED", absl::Milliseconds(3));
  metrics.RecordRpc("Begin", "INVALID_ARGUMENT", absl::Seconds(30));
  metrics.RecordTakeover();
  storage::StoreStats stats;
  stats.estimated_keys = 100;
  stats.disk_bytes = 4096;
  stats.expired_dropped = 3;
  stats.expired_backlog = 5;
  const std::string text = metrics.Render({7, stats, true, std::nullopt});
  // Long lines are split into adjacent literals on purpose.
  // NOLINTBEGIN(bugprone-suspicious-missing-comma)
  const char* const kLines[] = {
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
      "idem_expired_backlog 5\n",
  };
  // NOLINTEND(bugprone-suspicious-missing-comma)
  for (const char* line : kLines) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\nin:\n" << text;
  }
  // Slot migrations are a sharded store's; RocksDB has none to report.
  EXPECT_EQ(text.find("idem_redis_slots_migrating"), std::string::npos);
}

TEST(MetricsTest, RendersSlotMigrationsOfAShardedStore) {
  Metrics metrics;
  storage::StoreStats stats;
  stats.slot_migrations = {2, absl::Seconds(95)};
  const std::string text = metrics.Render({0, stats, true, std::nullopt});
  EXPECT_NE(text.find("\nidem_redis_slots_migrating 2\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("\nidem_redis_slot_migration_oldest_seconds 95\n"),
            std::string::npos)
      << text;
}

TEST(MetricsTest, TheHttpPortsFiguresShowOnlyWhenItIsOn) {
  Metrics metrics;
  const std::string off =
      metrics.Render({0, storage::StoreStats(), true, std::nullopt});
  EXPECT_EQ(off.find("idem_connect_http"), std::string::npos);
  const std::string on = metrics.Render(
      {0, storage::StoreStats(), true, Metrics::Gauges::Http{12, 3}});
  EXPECT_NE(on.find("\nidem_connect_http_connections 12\n"), std::string::npos);
  EXPECT_NE(on.find("\nidem_connect_http_refused_total 3\n"),
            std::string::npos);
}

}  // namespace
}  // namespace idem::server
