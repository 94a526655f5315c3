#include "server/config.h"

#include <map>
#include <string>

#include "gtest/gtest.h"

namespace idem::server {
namespace {

absl::StatusOr<ServerConfig> Parse(
    const std::vector<std::string>& args,
    std::map<std::string, std::string> env = {}) {
  return ParseConfig(args, [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(ConfigTest, DefaultsMatchTheDocumentedOnes) {
  absl::StatusOr<ServerConfig> config = Parse({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "127.0.0.1:50051");
  EXPECT_EQ(config->data_dir, "./idem-data");
  EXPECT_TRUE(config->sync_writes);
  EXPECT_EQ(config->limits.default_lease, absl::Seconds(30));
  EXPECT_EQ(config->limits.default_retention, absl::Hours(24));
  EXPECT_EQ(config->limits.max_retention, absl::Hours(24 * 30));
  EXPECT_EQ(config->limits.max_body_bytes, size_t{1} << 20);
}

TEST(ConfigTest, EnvironmentSetsAndFlagsOverride) {
  absl::StatusOr<ServerConfig> config =
      Parse({"--listen=0.0.0.0:7000", "--max-wait", "30s"},
            {{"IDEM_LISTEN", "127.0.0.1:1"},
             {"IDEM_DATA_DIR", "/var/lib/idem"},
             {"IDEM_SYNC_WRITES", "false"}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "0.0.0.0:7000");
  EXPECT_EQ(config->data_dir, "/var/lib/idem");
  EXPECT_FALSE(config->sync_writes);
  EXPECT_EQ(config->limits.max_wait, absl::Seconds(30));
  config = Parse({"--sync-writes"}, {{"IDEM_SYNC_WRITES", "false"}});
  EXPECT_TRUE(config->sync_writes);
}

TEST(ConfigTest, StoreIsRocksDbByDefaultOrARedisClusterNodeList) {
  absl::StatusOr<ServerConfig> config = Parse({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->store, "rocksdb");
  EXPECT_TRUE(RedisSeeds(*config).empty());
  config = Parse(
      {}, {{"IDEM_STORE", "redis-cluster://10.0.0.1:6379,redis-0.redis:7000"},
           {"IDEM_REDIS_WAIT_REPLICAS", "1"}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(RedisSeeds(*config),
            (std::vector<std::string>{"10.0.0.1:6379", "redis-0.redis:7000"}));
  EXPECT_EQ(config->redis_wait_replicas, 1u);
  EXPECT_EQ(config->redis_poll, absl::Seconds(1));
}

TEST(ConfigTest, APostgresUriIsAcceptedAndItsPasswordNeverShown) {
  absl::StatusOr<ServerConfig> config =
      Parse({"--store=postgresql://idem:s3cret@db.internal:5433/orders"
             "?sslmode=require",
             "--postgres-connections=16", "--postgres-schema=idem_eu"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(IsPostgres(*config));
  EXPECT_TRUE(RedisSeeds(*config).empty());
  EXPECT_EQ(config->postgres_connections, 16u);
  EXPECT_EQ(config->postgres_schema, "idem_eu");
  EXPECT_EQ(config->postgres_poll, absl::Seconds(1));
  const std::string logged = Describe(*config);
  EXPECT_EQ(logged.find("s3cret"), std::string::npos) << logged;
  EXPECT_NE(logged.find("host=db.internal"), std::string::npos) << logged;
  EXPECT_NE(logged.find("port=5433"), std::string::npos) << logged;
  EXPECT_NE(logged.find("password=****"), std::string::npos) << logged;
  EXPECT_EQ(StoreForLog(*config).find("s3cret"), std::string::npos);
  // The short scheme too; a bad URI's error does not echo it.
  EXPECT_TRUE(Parse({"--store=postgres://idem@localhost/idem"}).ok());
  absl::StatusOr<ServerConfig> bad =
      Parse({"--store=postgresql://u:s3cret@h:port/db"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().find("s3cret"), std::string::npos)
      << bad.status();
}

TEST(ConfigTest, BadSettingsFailWithOneLineNamingThem) {
  struct Case {
    std::vector<std::string> args;
    std::map<std::string, std::string> env;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"--max-lease=forever"}, {}, "--max-lease"},
      {{"--max-body-bytes=-1"}, {}, "--max-body-bytes"},
      {{"--sync-writes=maybe"}, {}, "--sync-writes"},
      {{"--nope=1"}, {}, "unknown flag --nope"},
      {{"stray"}, {}, "unexpected argument"},
      {{"--data-dir="}, {}, "--data-dir"},
      {{"--listen"}, {}, "needs a value"},
      {{"--store=redis://h:1"}, {}, "--store"},
      {{"--store=redis-cluster://"}, {}, "--store"},
      {{"--store=redis-cluster://h:1,h"}, {}, "--store"},
      {{"--store=redis-cluster://h:99999"}, {}, "--store"},
      {{"--redis-wait-replicas=17"}, {}, "--redis-wait-replicas"},
      {{"--redis-poll=1ms"}, {}, "--redis-poll"},
      {{"--store=postgresql://h:notaport/db"}, {}, "--store (PostgreSQL)"},
      {{"--store=postgres://h/db?nosuchoption=1"}, {}, "--store (PostgreSQL)"},
      {{"--postgres-schema=Idem"}, {}, "--postgres-schema"},
      {{"--postgres-schema=1st"}, {}, "--postgres-schema"},
      {{"--postgres-schema=a;drop"}, {}, "--postgres-schema"},
      {{"--postgres-connections=0"}, {}, "--postgres-connections"},
      {{"--postgres-timeout=1ms"}, {}, "--postgres-timeout"},
      {{"--postgres-poll=forever"}, {}, "--postgres-poll"},
      {{}, {{"IDEM_DEFAULT_LEASE", "0s"}}, "$IDEM_DEFAULT_LEASE"},
      {{"--default-lease=2h"}, {}, "exceeds --max-lease"},
      {{"--max-retention=1h"}, {}, "exceeds --max-retention"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ServerConfig> config = Parse(c.args, c.env);
    ASSERT_FALSE(config.ok()) << c.expected;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find(c.expected), std::string::npos)
        << config.status();
    EXPECT_EQ(config.status().message().find('\n'), std::string::npos);
  }
}

TEST(ConfigTest, HelpListsEveryFlagWithItsVariable) {
  absl::StatusOr<ServerConfig> help = Parse({"--help"});
  ASSERT_EQ(help.status().code(), absl::StatusCode::kNotFound);
  for (const Setting& s : Settings()) {
    EXPECT_NE(help.status().message().find("--" + s.flag), std::string::npos);
    EXPECT_NE(help.status().message().find(s.env), std::string::npos);
  }
}

TEST(ConfigTest, TheReplyLimitMustHoldTheLargestAdmittedResult) {
  absl::StatusOr<ServerConfig> config = Parse({"--max-body-bytes=67108864"});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("--max-reply-bytes"),
            std::string::npos)
      << config.status();
  EXPECT_TRUE(
      Parse({"--max-body-bytes=67108864", "--max-reply-bytes=134217728"}).ok());
  EXPECT_FALSE(Parse({"--max-reply-bytes=2147483648"}).ok());  // > 1 GiB.
}

TEST(ConfigTest, CredentialsInTheStoreUrlAreRefusedAndNeverEchoed) {
  absl::StatusOr<ServerConfig> config =
      Parse({"--store=redis-cluster://admin:s3cret@127.0.0.1:7000"});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("--redis-password-file"),
            std::string::npos)
      << config.status();
  EXPECT_EQ(config.status().message().find("s3cret"), std::string::npos)
      << config.status();
  absl::StatusOr<ServerConfig> from_env =
      Parse({}, {{"IDEM_STORE", "redis-cluster://:s3cret@127.0.0.1:7000"}});
  ASSERT_FALSE(from_env.ok());
  EXPECT_EQ(from_env.status().message().find("s3cret"), std::string::npos);
}

}  // namespace
}  // namespace idem::server
