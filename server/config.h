// Server configuration: every setting is a command-line flag and an
// environment variable (the flag wins), with a default, in one table.
// Invalid configuration fails at start-up with one clear line.
#ifndef IDEM_SERVER_CONFIG_H_
#define IDEM_SERVER_CONFIG_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/rpc/limits.h"

namespace idem::server {

struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  std::string data_dir = "./idem-data";
  bool sync_writes = true;
  absl::Duration periodic_compaction = absl::Hours(12);
  absl::Duration shutdown_grace = absl::Seconds(10);
  size_t block_cache_bytes = size_t{64} << 20;
  // Changes waiting for the disk beyond this are refused (overload).
  size_t max_pending_writes = 100'000;
  size_t max_pending_write_bytes = size_t{256} << 20;
  size_t max_grpc_memory_bytes = size_t{1} << 30;
  size_t min_free_disk_bytes = size_t{256} << 20;
  // If set, the bound port is written here once the server serves (useful
  // with --listen=HOST:0).
  std::string port_file;
  // Prometheus endpoint HOST:PORT; empty turns it off.
  std::string metrics_listen = "127.0.0.1:9464";
  // The Connect protocol (HTTP/1.1, JSON or binary protobuf) HOST:PORT;
  // empty turns it off. Same TLS and policy as the gRPC port.
  std::string http_listen = "127.0.0.1:8080";
  // debug, info, warning or error.
  std::string log_level = "info";
  // On SIGTERM, how long to report NOT_SERVING before draining, so that load
  // balancers stop sending new calls first.
  absl::Duration drain_delay = absl::ZeroDuration();
  // TLS (see server/auth/tls.h): all empty means plaintext.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // How often the TLS files are checked for changes.
  absl::Duration tls_refresh = absl::Seconds(1);
  // Authorization policy (see server/auth/auth_policy.h); empty: open.
  std::string policy;
  // "rocksdb" (embedded, in --data-dir),
  // "redis-cluster://HOST:PORT[,HOST:PORT...]" or a libpq connection URI
  // "postgresql://..." (stateless replicas). May hold a password: log
  // StoreForLog(), never this.
  std::string store = "rocksdb";
  // Redis Cluster mode only (see storage/redis/redis_cluster_store.h).
  size_t redis_wait_replicas = 0;
  absl::Duration redis_wait_timeout = absl::Seconds(1);
  absl::Duration redis_timeout = absl::Seconds(10);
  size_t redis_threads = 16;
  // Parked Begins look at their key at least this often, in case the
  // change announcement from another replica was missed.
  absl::Duration redis_poll = absl::Seconds(1);
  // A slot migration open longer than this is logged as stuck.
  absl::Duration redis_migration_warn_after = absl::Minutes(1);
  // AUTH: the password is read from this file (never from a flag, so that
  // it does not show in `ps`); the user is for Redis 6+ ACLs.
  std::string redis_user;
  std::string redis_password_file;
  // Serve over masters without an append-only file (see
  // storage/redis/redis_cluster_store.h): their restart loses acknowledged
  // data.
  bool redis_accept_loss_on_restart = false;
  // PostgreSQL mode only (see storage/postgres/postgres_store.h).
  // The password, if not in the URI or PGPASSFILE, is read from this file.
  std::string postgres_password_file;
  std::string postgres_schema = "idem";
  size_t postgres_connections = 8;
  // Bounds every connection attempt and statement.
  absl::Duration postgres_timeout = absl::Seconds(10);
  // As redis_poll: parked Begins look at their key at least this often.
  absl::Duration postgres_poll = absl::Seconds(1);
  Limits limits;
};

// The Redis nodes of a "redis-cluster://..." --store; empty for RocksDB.
std::vector<std::string> RedisSeeds(const ServerConfig& config);

// Whether --store names a PostgreSQL database ("postgresql://" or
// "postgres://").
bool IsPostgres(const ServerConfig& config);

// --store as it may be logged: a PostgreSQL connection string's password
// is masked.
std::string StoreForLog(const ServerConfig& config);

// One configurable setting.
struct Setting {
  std::string flag;  // Without the leading "--".
  std::string env;
  std::string help;
  std::function<std::string(const ServerConfig&)> show;
  std::function<absl::Status(const std::string&, ServerConfig&)> set;
  // A boolean flag may stand alone ("--sync-writes" means true).
  bool is_bool = false;
};

// Every setting, in the order docs/operations.md documents them.
const std::vector<Setting>& Settings();

// Reads settings from `environ` (name=value pairs) then from the command
// line. Returns INVALID_ARGUMENT with one line naming the bad setting.
// `--help` yields a NOT_FOUND status whose message is the usage text.
absl::StatusOr<ServerConfig> ParseConfig(
    const std::vector<std::string>& args,
    const std::function<const char*(const char*)>& get_env);

// The effective configuration, as one key=value line for the start-up log.
std::string Describe(const ServerConfig& config);

}  // namespace idem::server

#endif  // IDEM_SERVER_CONFIG_H_
