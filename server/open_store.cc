#include "server/open_store.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "server/ops/log.h"
#include "server/ops/read_file.h"
#include "storage/postgres/pg_connection.h"
#include "storage/postgres/postgres_store.h"
#include "storage/redis/redis_cluster_store.h"
#include "storage/rocksdb/rocksdb_store.h"

namespace idem::server {

namespace {

constexpr char kRocksDbSettings[] =
    "--data-dir, --sync-writes, --periodic-compaction, --block-cache-bytes, "
    "--min-free-disk-bytes, --max-pending-write-bytes (RocksDB settings)";

absl::StatusOr<std::unique_ptr<storage::Store>> OpenPostgres(
    const ServerConfig& config) {
  Log(LogLevel::kInfo, "store",
      {{"kind", "postgresql"},
       {"connection", StoreForLog(config)},
       {"schema", config.postgres_schema},
       {"connections", absl::StrCat(config.postgres_connections)},
       {"ignored",
        "--data-dir, --sync-writes, --periodic-compaction, "
        "--block-cache-bytes, --min-free-disk-bytes (RocksDB settings)"}});
  storage::PostgresStoreOptions options;
  options.connection.conninfo = config.store;
  options.connection.timeout = config.postgres_timeout;
  if (!config.postgres_password_file.empty()) {
    absl::StatusOr<std::string> password =
        ReadFile(config.postgres_password_file, "PostgreSQL password");
    if (!password.ok()) return password.status();
    // One line; the newline an editor or `echo` leaves is not part of it.
    options.connection.password =
        std::string(absl::StripTrailingAsciiWhitespace(*password));
    if (options.connection.password.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the PostgreSQL password file ",
                       config.postgres_password_file, " is empty"));
    }
  }
  options.schema = config.postgres_schema;
  options.connections = static_cast<int>(config.postgres_connections);
  options.max_pending = config.max_pending_writes;
  options.max_pending_bytes = config.max_pending_write_bytes;
  absl::StatusOr<std::unique_ptr<storage::PostgresStore>> opened =
      storage::PostgresStore::Open(std::move(options));
  if (!opened.ok()) return opened.status();
  for (const std::string& note : (*opened)->durability_notes()) {
    Log(LogLevel::kWarning, "store", {{"durability", note}});
  }
  return std::unique_ptr<storage::Store>(*std::move(opened));
}

}  // namespace

absl::StatusOr<std::string> DescribePostgresUri(const std::string& uri) {
  return storage::DescribeConninfo(uri);
}

absl::StatusOr<std::unique_ptr<storage::Store>> OpenStore(
    const ServerConfig& config) {
  if (IsPostgres(config)) return OpenPostgres(config);
  const std::vector<std::string> seeds = RedisSeeds(config);
  if (!seeds.empty()) {
    Log(LogLevel::kInfo, "store",
        {{"kind", "redis-cluster"},
         {"nodes", absl::StrJoin(seeds, ",")},
         {"wait_replicas", absl::StrCat(config.redis_wait_replicas)},
         {"ignored", kRocksDbSettings}});
    if (config.redis_wait_replicas == 0) {
      Log(LogLevel::kWarning, "store",
          {{"durability",
            "--redis-wait-replicas=0: a change is answered once the Redis "
            "master has it; a failover before it reaches a replica loses it "
            "(docs/cluster.md)"}});
    }
    storage::RedisClusterStoreOptions options;
    options.cluster.seeds = seeds;
    options.cluster.user = config.redis_user;
    if (!config.redis_password_file.empty()) {
      absl::StatusOr<std::string> password =
          ReadFile(config.redis_password_file, "Redis password");
      if (!password.ok()) return password.status();
      // One line; the newline an editor or `echo` leaves is not part of it.
      options.cluster.password =
          std::string(absl::StripTrailingAsciiWhitespace(*password));
      if (options.cluster.password.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the Redis password file ", config.redis_password_file,
                         " is empty"));
      }
    }
    options.cluster.retry_deadline = config.redis_timeout;
    options.wait_replicas = static_cast<int>(config.redis_wait_replicas);
    options.wait_timeout = config.redis_wait_timeout;
    options.threads = static_cast<int>(config.redis_threads);
    options.max_pending = config.max_pending_writes;
    options.accept_loss_on_restart = config.redis_accept_loss_on_restart;
    options.migration_stuck_after = config.redis_migration_warn_after;
    options.on_slot_migration = [](const storage::SlotMigrationReport& report) {
      const std::string open_seconds =
          absl::StrCat(absl::ToInt64Seconds(report.open_for));
      const storage::SlotMigration& m = report.migration;
      if (report.closed) {
        Log(LogLevel::kInfo, "redis_slot_migration_closed",
            {{"slot", absl::StrCat(m.slot)},
             {"from", m.from},
             {"to", m.to},
             {"open_seconds", open_seconds}});
        return;
      }
      Log(LogLevel::kWarning, "redis_slot_migration_stuck",
          {{"slot", absl::StrCat(m.slot)},
           {"from", m.from},
           {"to", m.to},
           {"open_seconds", open_seconds},
           {"effect",
            "keys of the slot keep working, with extra round trips; finish "
            "the migration with redis-cli --cluster fix (docs/cluster.md)"}});
    };
    absl::StatusOr<std::unique_ptr<storage::RedisClusterStore>> opened =
        storage::RedisClusterStore::Open(std::move(options));
    if (!opened.ok()) return opened.status();
    for (const std::string& note : (*opened)->durability_notes()) {
      Log(LogLevel::kWarning, "store", {{"durability", note}});
    }
    return std::unique_ptr<storage::Store>(*std::move(opened));
  }
  Log(LogLevel::kInfo, "store",
      {{"kind", "rocksdb"}, {"data_dir", config.data_dir}});
  storage::RocksDbStoreOptions options;
  options.path = config.data_dir;
  options.sync_writes = config.sync_writes;
  options.periodic_compaction = config.periodic_compaction;
  options.block_cache_bytes = config.block_cache_bytes;
  options.max_pending_writes = config.max_pending_writes;
  options.max_pending_write_bytes = config.max_pending_write_bytes;
  options.min_free_disk_bytes = config.min_free_disk_bytes;
  absl::StatusOr<std::unique_ptr<storage::RocksDbStore>> opened =
      storage::RocksDbStore::Open(options);
  if (!opened.ok()) return opened.status();
  return std::unique_ptr<storage::Store>(*std::move(opened));
}

}  // namespace idem::server
