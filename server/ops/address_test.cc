#include "server/ops/address.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace idem::server {
namespace {

TEST(ParseHostPortTest, AcceptsNamesIpv4AndBracketedIpv6) {
  absl::StatusOr<HostPort> a =
      ParseHostPort("localhost:50051", PortZero::kAllowed);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "localhost");
  EXPECT_EQ(a->port, 50051);

  a = ParseHostPort("127.0.0.1:1", PortZero::kRefused);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 1);

  a = ParseHostPort("[::1]:65535", PortZero::kRefused);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, 65535);

  a = ParseHostPort("redis-0.redis_svc.local:6379", PortZero::kRefused);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "redis-0.redis_svc.local");
}

TEST(ParseHostPortTest, PortZeroOnlyWhereAllowed) {
  EXPECT_TRUE(ParseHostPort("127.0.0.1:0", PortZero::kAllowed).ok());
  absl::StatusOr<HostPort> refused =
      ParseHostPort("127.0.0.1:0", PortZero::kRefused);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParseHostPortTest, RefusesWhatTheResolverWouldReinterpret) {
  for (const char* bad :
       {"127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:",
        "127.0.0.1", ":50051", "127.0.0.1:50051x", "127.0.0.1:+80", "::1:50051",
        "[::1]", "[::1:50051", "host name:80", "a/b:80", ""}) {
    absl::StatusOr<HostPort> parsed = ParseHostPort(bad, PortZero::kAllowed);
    EXPECT_FALSE(parsed.ok()) << "accepted \"" << bad << "\"";
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_FALSE(parsed.status().message().empty());
    }
  }
}

TEST(ParseHostPortTest, TheErrorSaysWhatIsWrongWithThePort) {
  absl::StatusOr<HostPort> parsed =
      ParseHostPort("127.0.0.1:99999", PortZero::kAllowed);
  ASSERT_FALSE(parsed.ok());
  EXPECT_TRUE(absl::StrContains(parsed.status().message(), "99999"))
      << parsed.status();
}

}  // namespace
}  // namespace idem::server
