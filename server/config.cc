#include "server/config.h"

#include <algorithm>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/open_store.h"
#include "server/ops/address.h"
#include "server/ops/log.h"

namespace idem::server {
namespace {

constexpr absl::string_view kRedisScheme = "redis-cluster://";
constexpr absl::string_view kPostgresSchemes[] = {"postgresql://",
                                                  "postgres://"};

bool HasPostgresScheme(absl::string_view store) {
  for (absl::string_view scheme : kPostgresSchemes) {
    if (absl::StartsWith(store, scheme)) return true;
  }
  return false;
}

absl::Status Bad(const std::string& flag, const std::string& value,
                 absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("invalid --", flag, "=\"", value, "\": ", why));
}

Setting StringSetting(const std::string& flag, std::string env,
                      std::string help, std::string ServerConfig::*field,
                      bool allow_empty) {
  return Setting{
      flag, std::move(env), std::move(help),
      [field](const ServerConfig& c) { return c.*field; },
      [flag, field, allow_empty](const std::string& v, ServerConfig& c) {
        if (v.empty() && !allow_empty) return Bad(flag, v, "must not be empty");
        c.*field = v;
        return absl::OkStatus();
      }};
}

// HOST:PORT (server/ops/address.h); `allow_empty` lets the empty value turn the
// listener off.
Setting AddressSetting(const std::string& flag, std::string env,
                       std::string help, std::string ServerConfig::*field,
                       bool allow_empty) {
  return Setting{
      flag, std::move(env), std::move(help),
      [field](const ServerConfig& c) { return c.*field; },
      [flag, field, allow_empty](const std::string& v, ServerConfig& c) {
        if (v.empty() && allow_empty) {
          c.*field = v;
          return absl::OkStatus();
        }
        absl::StatusOr<HostPort> address = ParseHostPort(v, PortZero::kAllowed);
        if (!address.ok()) return Bad(flag, v, address.status().message());
        c.*field = v;
        return absl::OkStatus();
      }};
}

Setting DurationSetting(
    const std::string& flag, std::string env, std::string help,
    const std::function<absl::Duration&(ServerConfig&)>& field,
    absl::Duration min, absl::Duration max) {
  return Setting{
      flag, std::move(env), std::move(help),
      [field](const ServerConfig& c) {
        ServerConfig copy = c;  // The accessor is shared with the setter.
        return absl::FormatDuration(field(copy));
      },
      [flag, field, min, max](const std::string& v, ServerConfig& c) {
        absl::Duration d;
        if (!absl::ParseDuration(v, &d)) {
          return Bad(flag, v, "not a duration (examples: 500ms, 30s, 5m, 24h)");
        }
        if (d < min || d > max) {
          return Bad(flag, v,
                     absl::StrCat("must be between ", absl::FormatDuration(min),
                                  " and ", absl::FormatDuration(max)));
        }
        field(c) = d;
        return absl::OkStatus();
      }};
}

Setting SizeSetting(const std::string& flag, std::string env, std::string help,
                    const std::function<size_t&(ServerConfig&)>& field,
                    size_t min, size_t max) {
  return Setting{
      flag, std::move(env), std::move(help),
      [field](const ServerConfig& c) {
        ServerConfig copy = c;  // The accessor is shared with the setter.
        return absl::StrCat(field(copy));
      },
      [flag, field, min, max](const std::string& v, ServerConfig& c) {
        uint64_t n = 0;
        if (!absl::SimpleAtoi(v, &n) || n < min || n > max) {
          return Bad(
              flag, v,
              absl::StrCat("must be a whole number from ", min, " to ", max));
        }
        field(c) = static_cast<size_t>(n);
        return absl::OkStatus();
      }};
}

Setting BoolSetting(const std::string& flag, std::string env, std::string help,
                    bool ServerConfig::*field) {
  return Setting{flag,
                 std::move(env),
                 std::move(help),
                 [field](const ServerConfig& c) {
                   return std::string(c.*field ? "true" : "false");
                 },
                 [flag, field](const std::string& v, ServerConfig& c) {
                   const std::string lower = absl::AsciiStrToLower(v);
                   if (lower == "true" || lower == "1" || lower.empty()) {
                     c.*field = true;
                   } else if (lower == "false" || lower == "0") {
                     c.*field = false;
                   } else {
                     return Bad(flag, v, "must be true or false");
                   }
                   return absl::OkStatus();
                 },
                 /*is_bool=*/true};
}

std::vector<Setting> MakeSettings() {
  constexpr absl::Duration kYear = absl::Hours(24 * 366);
  return {
      AddressSetting("listen", "IDEM_LISTEN",
                     "gRPC address HOST:PORT (port 0 picks a free port)",
                     &ServerConfig::listen, false),
      StringSetting("data-dir", "IDEM_DATA_DIR",
                    "RocksDB directory, created if missing",
                    &ServerConfig::data_dir, false),
      BoolSetting("sync-writes", "IDEM_SYNC_WRITES",
                  "fsync the WAL before acknowledging a change; false risks "
                  "losing the last acknowledged changes on power loss",
                  &ServerConfig::sync_writes),
      DurationSetting(
          "default-lease", "IDEM_DEFAULT_LEASE", "lease when Begin sets none",
          [](ServerConfig& c) -> absl::Duration& {
            return c.limits.default_lease;
          },
          Limits::kMinLease, kYear),
      DurationSetting(
          "max-lease", "IDEM_MAX_LEASE", "longest lease a caller may ask for",
          [](ServerConfig& c) -> absl::Duration& { return c.limits.max_lease; },
          Limits::kMinLease, kYear),
      DurationSetting(
          "default-retention", "IDEM_DEFAULT_RETENTION",
          "how long results are kept when Begin sets no retention",
          [](ServerConfig& c) -> absl::Duration& {
            return c.limits.default_retention;
          },
          Limits::kMinRetention, 10 * kYear),
      DurationSetting(
          "max-retention", "IDEM_MAX_RETENTION",
          "longest retention a caller may ask for",
          [](ServerConfig& c) -> absl::Duration& {
            return c.limits.max_retention;
          },
          Limits::kMinRetention, 10 * kYear),
      DurationSetting(
          "max-wait", "IDEM_MAX_WAIT",
          "longest time a Begin may wait for an attempt in progress",
          [](ServerConfig& c) -> absl::Duration& { return c.limits.max_wait; },
          absl::ZeroDuration(), absl::Hours(1)),
      SizeSetting(
          "max-parked-waiters", "IDEM_MAX_PARKED_WAITERS",
          "Begin calls that may wait at once; more are refused with "
          "RESOURCE_EXHAUSTED",
          [](ServerConfig& c) -> size_t& {
            return c.limits.max_parked_waiters;
          },
          0, size_t{1'000'000}),
      SizeSetting(
          "max-body-bytes", "IDEM_MAX_BODY_BYTES", "largest result body",
          [](ServerConfig& c) -> size_t& { return c.limits.max_body_bytes; }, 0,
          size_t{64} << 20),
      SizeSetting(
          "max-metadata-entries", "IDEM_MAX_METADATA_ENTRIES",
          "most result metadata entries",
          [](ServerConfig& c) -> size_t& {
            return c.limits.max_metadata_entries;
          },
          0, 4096),
      SizeSetting(
          "max-metadata-value-bytes", "IDEM_MAX_METADATA_VALUE_BYTES",
          "largest result metadata value (keys: 256 bytes)",
          [](ServerConfig& c) -> size_t& {
            return c.limits.max_metadata_value_bytes;
          },
          0, size_t{1} << 20),
      SizeSetting(
          "max-reply-bytes", "IDEM_MAX_REPLY_BYTES",
          "largest reply; a BeginBatch whose stored results would exceed it "
          "answers the rest with RESOURCE_EXHAUSTED (fetch them one by one)",
          [](ServerConfig& c) -> size_t& { return c.limits.max_reply_bytes; },
          size_t{1} << 20, size_t{1} << 30),
      DurationSetting(
          "periodic-compaction", "IDEM_PERIODIC_COMPACTION",
          "compact files older than this even without writes, dropping "
          "expired records (0 = off)",
          [](ServerConfig& c) -> absl::Duration& {
            return c.periodic_compaction;
          },
          absl::ZeroDuration(), 10 * kYear),
      SizeSetting(
          "block-cache-bytes", "IDEM_BLOCK_CACHE_BYTES",
          "RocksDB block cache size",
          [](ServerConfig& c) -> size_t& { return c.block_cache_bytes; },
          size_t{1} << 20, size_t{1} << 40),
      SizeSetting(
          "max-pending-writes", "IDEM_MAX_PENDING_WRITES",
          "changes waiting for the disk beyond this are refused with "
          "RESOURCE_EXHAUSTED",
          [](ServerConfig& c) -> size_t& { return c.max_pending_writes; }, 1,
          size_t{10'000'000}),
      SizeSetting(
          "max-pending-write-bytes", "IDEM_MAX_PENDING_WRITE_BYTES",
          "bytes of changes (bodies, metadata) waiting for the disk beyond "
          "this are refused with RESOURCE_EXHAUSTED",
          [](ServerConfig& c) -> size_t& { return c.max_pending_write_bytes; },
          size_t{1} << 20, size_t{1} << 40),
      SizeSetting(
          "max-grpc-memory-bytes", "IDEM_MAX_GRPC_MEMORY_BYTES",
          "memory gRPC may use for connections and messages in flight (its "
          "resource quota)",
          [](ServerConfig& c) -> size_t& { return c.max_grpc_memory_bytes; },
          size_t{16} << 20, size_t{1} << 40),
      SizeSetting(
          "min-free-disk-bytes", "IDEM_MIN_FREE_DISK_BYTES",
          "changes fail with UNAVAILABLE (and health is NOT_SERVING) while "
          "the data disk has less free space than this",
          [](ServerConfig& c) -> size_t& { return c.min_free_disk_bytes; }, 0,
          size_t{1} << 40),
      DurationSetting(
          "shutdown-grace", "IDEM_SHUTDOWN_GRACE",
          "on SIGTERM, how long in-flight calls may take before they are "
          "cancelled",
          [](ServerConfig& c) -> absl::Duration& { return c.shutdown_grace; },
          absl::ZeroDuration(), absl::Hours(1)),
      AddressSetting("metrics-listen", "IDEM_METRICS_LISTEN",
                     "/metrics and /healthz address HOST:PORT (port 0 picks "
                     "a free port); empty turns it off",
                     &ServerConfig::metrics_listen, true),
      AddressSetting("http-listen", "IDEM_HTTP_LISTEN",
                     "HTTP/JSON (Connect protocol) address HOST:PORT, with "
                     "the gRPC port's TLS and policy (port 0 picks a free "
                     "port); empty turns it off",
                     &ServerConfig::http_listen, true),
      Setting{"log-level", "IDEM_LOG_LEVEL", "debug, info, warning or error",
              [](const ServerConfig& c) { return c.log_level; },
              [](const std::string& v, ServerConfig& c) {
                LogLevel level;
                if (!ParseLogLevel(v, &level)) {
                  return Bad("log-level", v,
                             "must be debug, info, warning or error");
                }
                c.log_level = v;
                return absl::OkStatus();
              }},
      DurationSetting(
          "drain-delay", "IDEM_DRAIN_DELAY",
          "on SIGTERM, report NOT_SERVING this long before draining",
          [](ServerConfig& c) -> absl::Duration& { return c.drain_delay; },
          absl::ZeroDuration(), absl::Minutes(10)),
      StringSetting("port-file", "IDEM_PORT_FILE",
                    "write the bound ports to this file once serving",
                    &ServerConfig::port_file, true),
      StringSetting("tls-cert", "IDEM_TLS_CERT",
                    "PEM certificate chain for the gRPC port; empty: "
                    "plaintext",
                    &ServerConfig::tls_cert, true),
      StringSetting("tls-key", "IDEM_TLS_KEY", "PEM private key of --tls-cert",
                    &ServerConfig::tls_key, true),
      StringSetting("tls-client-ca", "IDEM_TLS_CLIENT_CA",
                    "PEM CA bundle; if set, clients must present a "
                    "certificate it verifies (mutual TLS)",
                    &ServerConfig::tls_client_ca, true),
      DurationSetting(
          "tls-refresh", "IDEM_TLS_REFRESH",
          "how often the TLS files are re-read (SIGHUP checks them at once)",
          [](ServerConfig& c) -> absl::Duration& { return c.tls_refresh; },
          absl::Seconds(1), absl::Hours(1)),
      StringSetting("policy", "IDEM_POLICY",
                    "authorization policy file (YAML); empty: every caller "
                    "may do everything",
                    &ServerConfig::policy, true),
      Setting{
          "store", "IDEM_STORE",
          "where keys live: rocksdb (embedded, in --data-dir), "
          "redis-cluster://HOST:PORT[,HOST:PORT...] (stateless replicas "
          "sharing a Redis Cluster) or postgresql://USER@HOST:PORT/DB?... "
          "(stateless replicas sharing a PostgreSQL database; a libpq URI)",
          [](const ServerConfig& c) { return StoreForLog(c); },
          [](const std::string& v, ServerConfig& c) {
            if (v == "rocksdb") {
              c.store = v;
              return absl::OkStatus();
            }
            if (HasPostgresScheme(v)) {
              // Never echoed: the URI may carry a password.
              absl::StatusOr<std::string> described = DescribePostgresUri(v);
              if (!described.ok()) {
                return absl::InvalidArgumentError(
                    absl::StrCat("invalid --store (PostgreSQL): ",
                                 described.status().message()));
              }
              c.store = v;
              return absl::OkStatus();
            }
            if (!absl::StartsWith(v, kRedisScheme)) {
              return Bad("store", v,
                         "expected rocksdb, "
                         "redis-cluster://HOST:PORT[,HOST:PORT...] or "
                         "postgresql://USER@HOST:PORT/DATABASE");
            }
            // Credentials in the URL would be logged with the
            // configuration: refused, and never echoed.
            if (v.find('@') != std::string::npos) {
              return absl::InvalidArgumentError(
                  "invalid --store: credentials (USER:PASSWORD@) do not "
                  "belong in the store URL, which is logged; use "
                  "--redis-user and --redis-password-file");
            }
            for (absl::string_view node : absl::StrSplit(
                     absl::string_view(v).substr(kRedisScheme.size()), ',')) {
              absl::StatusOr<HostPort> address =
                  ParseHostPort(node, PortZero::kRefused);
              if (!address.ok()) {
                return Bad("store", v,
                           absl::StrCat("Redis node \"", node,
                                        "\": ", address.status().message()));
              }
            }
            c.store = v;
            return absl::OkStatus();
          }},
      SizeSetting(
          "redis-wait-replicas", "IDEM_REDIS_WAIT_REPLICAS",
          "Redis Cluster: replicas that must acknowledge every change "
          "(WAIT) before it is answered; 0 answers once the master has it",
          [](ServerConfig& c) -> size_t& { return c.redis_wait_replicas; }, 0,
          16),
      DurationSetting(
          "redis-wait-timeout", "IDEM_REDIS_WAIT_TIMEOUT",
          "Redis Cluster: how long WAIT waits for the replicas; fewer "
          "acknowledgements fail the call with UNAVAILABLE",
          [](ServerConfig& c) -> absl::Duration& {
            return c.redis_wait_timeout;
          },
          absl::Milliseconds(10), absl::Minutes(1)),
      DurationSetting(
          "redis-timeout", "IDEM_REDIS_TIMEOUT",
          "Redis Cluster: how long one operation keeps retrying through "
          "failovers, redirects and lost connections",
          [](ServerConfig& c) -> absl::Duration& { return c.redis_timeout; },
          absl::Seconds(1), absl::Minutes(5)),
      SizeSetting(
          "redis-threads", "IDEM_REDIS_THREADS",
          "Redis Cluster: threads that run changes (each keeps its own "
          "connections to the nodes it uses)",
          [](ServerConfig& c) -> size_t& { return c.redis_threads; }, 1, 1024),
      DurationSetting(
          "redis-migration-warn-after", "IDEM_REDIS_MIGRATION_WARN_AFTER",
          "Redis Cluster: a slot migration open longer than this is logged "
          "as stuck (keys keep working; an interrupted reshard is what "
          "leaves one open)",
          [](ServerConfig& c) -> absl::Duration& {
            return c.redis_migration_warn_after;
          },
          absl::Seconds(1), absl::Hours(24)),
      DurationSetting(
          "redis-poll", "IDEM_REDIS_POLL",
          "Redis Cluster: a waiting Begin looks at its key at least this "
          "often, should another replica's change announcement be missed",
          [](ServerConfig& c) -> absl::Duration& { return c.redis_poll; },
          absl::Milliseconds(100), absl::Minutes(5)),
      StringSetting("redis-user", "IDEM_REDIS_USER",
                    "Redis Cluster: ACL user for AUTH (with "
                    "--redis-password-file); empty: the default user",
                    &ServerConfig::redis_user, true),
      StringSetting("redis-password-file", "IDEM_REDIS_PASSWORD_FILE",
                    "Redis Cluster: file holding the AUTH password (one "
                    "line); empty: no AUTH",
                    &ServerConfig::redis_password_file, true),
      BoolSetting("redis-accept-loss-on-restart",
                  "IDEM_REDIS_ACCEPT_LOSS_ON_RESTART",
                  "Redis Cluster: serve over masters without an append-only "
                  "file; a master restarted before failover then loses "
                  "acknowledged results (work runs twice) and tokens go "
                  "backwards",
                  &ServerConfig::redis_accept_loss_on_restart),
      StringSetting("postgres-password-file", "IDEM_POSTGRES_PASSWORD_FILE",
                    "PostgreSQL: file holding the password (one line); "
                    "empty: the URI's, PGPASSFILE's or none",
                    &ServerConfig::postgres_password_file, true),
      Setting{
          "postgres-schema", "IDEM_POSTGRES_SCHEMA",
          "PostgreSQL: the schema Idem's tables live in (created and "
          "migrated at start); replicas that share keys share it",
          [](const ServerConfig& c) { return c.postgres_schema; },
          [](const std::string& v, ServerConfig& c) {
            const bool valid =
                !v.empty() && v.size() <= 48 &&
                (absl::ascii_islower(static_cast<unsigned char>(v[0])) ||
                 v[0] == '_') &&
                std::all_of(v.begin(), v.end(), [](char ch) {
                  return absl::ascii_islower(static_cast<unsigned char>(ch)) ||
                         absl::ascii_isdigit(static_cast<unsigned char>(ch)) ||
                         ch == '_';
                });
            if (!valid) {
              return Bad("postgres-schema", v,
                         "must be a lower-case SQL name: a-z, 0-9 and _, "
                         "not starting with a digit, at most 48 "
                         "characters");
            }
            c.postgres_schema = v;
            return absl::OkStatus();
          }},
      SizeSetting(
          "postgres-connections", "IDEM_POSTGRES_CONNECTIONS",
          "PostgreSQL: writer connections (each applies batches of changes "
          "in one transaction); reads use up to as many more, plus one "
          "listening and one for maintenance",
          [](ServerConfig& c) -> size_t& { return c.postgres_connections; }, 1,
          256),
      DurationSetting(
          "postgres-timeout", "IDEM_POSTGRES_TIMEOUT",
          "PostgreSQL: bounds every connection attempt and statement "
          "(statement_timeout); a call that exceeds it fails UNAVAILABLE",
          [](ServerConfig& c) -> absl::Duration& { return c.postgres_timeout; },
          absl::Milliseconds(100), absl::Minutes(5)),
      DurationSetting(
          "postgres-poll", "IDEM_POSTGRES_POLL",
          "PostgreSQL: a waiting Begin looks at its key at least this "
          "often, should another replica's NOTIFY be missed",
          [](ServerConfig& c) -> absl::Duration& { return c.postgres_poll; },
          absl::Milliseconds(100), absl::Minutes(5)),
  };
}

absl::Status CheckConsistent(const ServerConfig& c) {
  if (c.limits.default_lease > c.limits.max_lease) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--default-lease (", absl::FormatDuration(c.limits.default_lease),
        ") exceeds --max-lease (", absl::FormatDuration(c.limits.max_lease),
        ")"));
  }
  if (c.limits.default_retention > c.limits.max_retention) {
    return absl::InvalidArgumentError(
        absl::StrCat("--default-retention (",
                     absl::FormatDuration(c.limits.default_retention),
                     ") exceeds --max-retention (",
                     absl::FormatDuration(c.limits.max_retention), ")"));
  }
  if (c.limits.MaxResultBytes() > c.limits.max_reply_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-reply-bytes (", c.limits.max_reply_bytes,
                     ") cannot hold the largest result the limits admit (",
                     c.limits.MaxResultBytes(),
                     " bytes: --max-body-bytes plus --max-metadata-entries of "
                     "--max-metadata-value-bytes); raise it or lower those"));
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: set both or neither");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)");
  }
  if (!c.policy.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--policy needs --tls-cert and --tls-key: client certificates and "
        "bearer tokens are only accepted over TLS");
  }
  return absl::OkStatus();
}

std::string Usage() {
  std::string usage =
      "usage: idem-server [--flag=value ...]\n"
      "Every flag can also be set by its environment variable; the flag "
      "wins.\n\n";
  const ServerConfig defaults;
  for (const Setting& s : Settings()) {
    absl::StrAppend(&usage, "  --", s.flag, " (", s.env, ", default \"",
                    s.show(defaults), "\")\n      ", s.help, "\n");
  }
  return usage;
}

}  // namespace

std::vector<std::string> RedisSeeds(const ServerConfig& config) {
  if (!absl::StartsWith(config.store, kRedisScheme)) return {};
  // Each node was checked by --store's setter.
  return absl::StrSplit(config.store.substr(kRedisScheme.size()), ',');
}

bool IsPostgres(const ServerConfig& config) {
  return HasPostgresScheme(config.store);
}

std::string StoreForLog(const ServerConfig& config) {
  if (!IsPostgres(config)) return config.store;
  absl::StatusOr<std::string> described = DescribePostgresUri(config.store);
  return described.ok() ? absl::StrCat("postgresql(", *described, ")")
                        : "postgresql(unparsable)";
}

const std::vector<Setting>& Settings() {
  static const std::vector<Setting>* const settings =
      new std::vector<Setting>(MakeSettings());
  return *settings;
}

absl::StatusOr<ServerConfig> ParseConfig(
    const std::vector<std::string>& args,
    const std::function<const char*(const char*)>& get_env) {
  ServerConfig config;
  for (const Setting& s : Settings()) {
    if (const char* value = get_env(s.env.c_str()); value != nullptr) {
      absl::Status set = s.set(value, config);
      if (!set.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("from $", s.env, ": ", set.message()));
      }
    }
  }
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") return absl::NotFoundError(Usage());
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\" (see --help)"));
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
      has_value = true;
    }
    const Setting* setting = nullptr;
    for (const Setting& s : Settings()) {
      if (s.flag == name) setting = &s;
    }
    if (setting == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see --help)"));
    }
    // "--flag value"; a boolean flag alone means true.
    if (!has_value && !setting->is_bool) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    }
    if (absl::Status set = setting->set(value, config); !set.ok()) return set;
  }
  if (absl::Status s = CheckConsistent(config); !s.ok()) return s;
  return config;
}

std::string Describe(const ServerConfig& config) {
  std::vector<std::string> parts;
  for (const Setting& s : Settings()) {
    parts.push_back(absl::StrCat(s.flag, "=", s.show(config)));
  }
  return absl::StrJoin(parts, " ");
}

}  // namespace idem::server
