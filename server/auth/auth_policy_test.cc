#include "server/auth/auth_policy.h"

#include <string>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"

namespace idem::server {
namespace {

constexpr char kPolicy[] = R"yaml(
principals:
  - name: payments-api
    match: {uri_san: "spiffe://cluster.local/ns/pay/sa/api"}
    namespaces: ["payments/*", "refunds"]
    admin: false
  - name: refunds-batch
    match: {dns_san: "batch.refunds.svc"}
    namespaces: ["refunds/*"]
  - name: operator
    match: {common_name: "oncall"}
    admin: true
  # sha256("s3cret-token")
  - name: ci-bot
    match: {token_sha256: "a81e611a041b13f078bf8ebe5dab4d4fd63fcc5594661c918bec093a2f416a7e"}
    namespaces: ["*"]
)yaml";

CallerIdentity Uri(std::string uri) {
  CallerIdentity id;
  id.has_certificate = true;
  id.uri_sans.push_back(std::move(uri));
  return id;
}

TEST(AuthPolicyTest, GrantsExactNamesAndPrefixes) {
  absl::StatusOr<AuthPolicy> policy = AuthPolicy::Parse(kPolicy);
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ(policy->size(), 4u);
  const Access api =
      policy->Resolve(Uri("spiffe://cluster.local/ns/pay/sa/api"));
  EXPECT_EQ(api.principals(), "payments-api");
  EXPECT_TRUE(api.MayUseNamespace("payments/eu"));
  EXPECT_TRUE(api.MayUseNamespace("refunds"));
  EXPECT_FALSE(api.MayUseNamespace("payments"));  // "payments/*" is a prefix.
  EXPECT_FALSE(api.MayUseNamespace("payments-evil"));
  EXPECT_FALSE(api.MayUseNamespace("refunds-evil"));
  EXPECT_FALSE(api.MayUseNamespace("refunds/2024"));
  EXPECT_FALSE(api.MayUseNamespace("orders"));
  EXPECT_FALSE(api.admin());
}

TEST(AuthPolicyTest, ACallerMatchingSeveralPrincipalsGetsTheUnion) {
  absl::StatusOr<AuthPolicy> policy = AuthPolicy::Parse(kPolicy);
  ASSERT_TRUE(policy.ok()) << policy.status();
  CallerIdentity both = Uri("spiffe://cluster.local/ns/pay/sa/api");
  both.dns_sans.emplace_back("batch.refunds.svc");
  both.common_name = "oncall";
  const Access access = policy->Resolve(both);
  EXPECT_EQ(access.principals(), "payments-api,refunds-batch,operator");
  EXPECT_TRUE(access.MayUseNamespace("payments/x"));
  EXPECT_TRUE(access.MayUseNamespace("refunds/2024"));
  EXPECT_TRUE(access.admin());
}

TEST(AuthPolicyTest, MatchesTokensByDigest) {
  absl::StatusOr<AuthPolicy> policy = AuthPolicy::Parse(kPolicy);
  ASSERT_TRUE(policy.ok()) << policy.status();
  CallerIdentity token;
  token.token_sha256 = absl::HexStringToBytes(
      "a81e611a041b13f078bf8ebe5dab4d4fd63fcc5594661c918bec093a2f416a7e");
  const Access access = policy->Resolve(token);
  EXPECT_EQ(access.principals(), "ci-bot");
  EXPECT_TRUE(access.MayUseNamespace("anything"));
  CallerIdentity wrong;
  wrong.token_sha256 = std::string(32, '\0');
  EXPECT_FALSE(policy->Resolve(wrong).matched());
  EXPECT_TRUE(policy->uses_tokens());
  EXPECT_TRUE(policy->uses_certificates());
}

TEST(AuthPolicyTest, UnknownCallersGetNothing) {
  absl::StatusOr<AuthPolicy> policy = AuthPolicy::Parse(kPolicy);
  ASSERT_TRUE(policy.ok()) << policy.status();
  const Access nobody = policy->Resolve(Uri("spiffe://elsewhere"));
  EXPECT_FALSE(nobody.matched());
  EXPECT_FALSE(nobody.MayUseNamespace("payments/x"));
  EXPECT_FALSE(nobody.admin());
  // A common name is only trusted from a certificate.
  CallerIdentity no_cert;
  no_cert.common_name = "oncall";
  EXPECT_FALSE(policy->Resolve(no_cert).admin());
}

TEST(AuthPolicyTest, RejectsMistakesWithTheLine) {
  struct Case {
    const char* yaml;
    const char* mentions;
  };
  const Case cases[] = {
      {"principals: []", "no principals"},
      {"principal: []", "'principals'"},
      {"principals:\n  - name: a\n    match: {uri_san: x}\n    namspaces: []",
       "line 4: unknown principal setting 'namspaces'"},
      {"principals:\n  - match: {uri_san: x}", "needs a 'name'"},
      {"principals:\n  - name: a", "needs a 'match'"},
      {"principals:\n  - name: a\n    match: {uri_san: x, dns_san: y}",
       "exactly one"},
      {"principals:\n  - name: a\n    match: {ip_san: x}", "unknown match"},
      {"principals:\n  - name: a\n    match: {token_sha256: abc}",
       "64 lowercase hex"},
      {"principals:\n  - name: a\n    match: {uri_san: x}\n"
       "    namespaces: [\"a*b\"]",
       "'prefix/*'"},
      {"principals:\n  - name: a\n    match: {uri_san: x}\n"
       "  - name: a\n    match: {uri_san: y}",
       "defined twice"},
      {"principals:\n  - name: a\n    match: {uri_san: x}\n    admin: maybe",
       "line 4"},
      {"principals: [", "not valid YAML"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<AuthPolicy> policy = AuthPolicy::Parse(c.yaml);
    ASSERT_FALSE(policy.ok()) << c.yaml;
    EXPECT_EQ(policy.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(policy.status().message().find(c.mentions), std::string::npos)
        << c.yaml << " -> " << policy.status();
  }
}

TEST(AuthPolicyTest, ConstantTimeEqualsComparesWholeValues) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "xbc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(
      ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0b", 3)));
  EXPECT_FALSE(
      ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
}

}  // namespace
}  // namespace idem::server
