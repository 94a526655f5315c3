// Unit tests of the client's pure parts. Everything that talks to a server
// is tested against the real idem-server in tests/integration.
#include "idem/client.h"

#include <set>

#include "absl/strings/cord.h"
#include "gtest/gtest.h"
#include "idem/keys.h"

namespace idem::client {
namespace {

TEST(KeysTest, NewKeyIsARandomVersion4Uuid) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    const std::string key = NewKey();
    ASSERT_EQ(key.size(), 36u) << key;
    EXPECT_EQ(key[8], '-');
    EXPECT_EQ(key[13], '-');
    EXPECT_EQ(key[14], '4');
    EXPECT_NE(std::string("89ab").find(key[19]), std::string::npos) << key;
    seen.insert(key);
  }
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(KeysTest, FingerprintPartsIsLengthPrefixed) {
  EXPECT_EQ(FingerprintParts({"POST", "/v1/orders", "{}"}),
            Fingerprint("4:POST10:/v1/orders2:{}"));
  EXPECT_NE(FingerprintParts({"ab", "c"}), FingerprintParts({"a", "bc"}));
  EXPECT_EQ(FingerprintParts({}), Fingerprint(""));
}

TEST(KeysTest, FingerprintIsTheRawSha256Digest) {
  EXPECT_EQ(ToHex(Fingerprint("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(ToHex(Fingerprint("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Fingerprint("abc").size(), 32u);
}

TEST(BackoffTest, GrowsExponentiallyUpToTheCapWithEqualJitter) {
  RetryPolicy policy;
  policy.initial_backoff = absl::Milliseconds(50);
  policy.max_backoff = absl::Seconds(1);
  EXPECT_EQ(Backoff(policy, 1, 0.0), absl::Milliseconds(25));
  EXPECT_EQ(Backoff(policy, 1, 1.0), absl::Milliseconds(50));
  EXPECT_EQ(Backoff(policy, 2, 0.5), absl::Milliseconds(75));
  EXPECT_EQ(Backoff(policy, 3, 0.0), absl::Milliseconds(100));
  EXPECT_EQ(Backoff(policy, 10, 0.0), absl::Milliseconds(500));
  EXPECT_EQ(Backoff(policy, 1000, 1.0), absl::Seconds(1));
  // The defaults pause 7.5 s at the least over their 11 retries.
  absl::Duration least;
  for (int retry = 1; retry < RetryPolicy().max_attempts; ++retry) {
    least += Backoff(RetryPolicy(), retry, 0.0);
  }
  EXPECT_GE(least, absl::Milliseconds(7500));
}

TEST(ErrorKindTest, PlainStatusesHaveNoKind) {
  EXPECT_EQ(ErrorKindOf(absl::OkStatus()), ErrorKind::kOther);
  EXPECT_EQ(ErrorKindOf(absl::UnavailableError("down")), ErrorKind::kOther);
  absl::Status odd = absl::AbortedError("x");
  odd.SetPayload("type.idem.dev/idem.client.ErrorKind", absl::Cord("weird"));
  EXPECT_EQ(ErrorKindOf(odd), ErrorKind::kOther);
}

TEST(ResultTest, SameResponseIgnoresCompletionTime) {
  Result a{201, "body", {{"h", "v"}}, absl::Now()};
  Result b = a;
  b.completed_at = absl::InfinitePast();
  EXPECT_TRUE(SameResponse(a, b));
  b.metadata["h"] = "w";
  EXPECT_FALSE(SameResponse(a, b));
}

TEST(NamesTest, OutcomesAndStatesHaveTheirProtoNames) {
  EXPECT_EQ(OutcomeName(Outcome::kAcquired), "ACQUIRED");
  EXPECT_EQ(OutcomeName(Outcome::kMismatch), "MISMATCH");
  EXPECT_EQ(KeyStateName(KeyState::kInProgress), "IN_PROGRESS");
}

TEST(ConnectTest, EmptyTargetIsRejected) {
  ClientOptions options;
  options.target = "";
  EXPECT_EQ(Client::Connect(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace idem::client
