#include "server/rpc/proto_conversions.h"

#include "gtest/gtest.h"

namespace idem::server {
namespace {

const absl::Time kT = absl::FromUnixMillis(1'800'000'000'123);

TEST(SetTimestampTest, KeepsNanosecondsAndNormalizesTimesBeforeTheEpoch) {
  google::protobuf::Timestamp ts;
  SetTimestamp(absl::FromUnixNanos(1'500'000'001), &ts);
  EXPECT_EQ(ts.seconds(), 1);
  EXPECT_EQ(ts.nanos(), 500'000'001);

  // Protobuf wants 0 <= nanos < 1e9 with seconds rounded down.
  SetTimestamp(absl::FromUnixNanos(-1), &ts);
  EXPECT_EQ(ts.seconds(), -1);
  EXPECT_EQ(ts.nanos(), 999'999'999);
}

TEST(FillBeginTest, AcquiredCarriesTheLeaseAttemptAndCheckpoint) {
  storage::BeginResult begun;
  begun.outcome = storage::BeginOutcome::kAcquired;
  begun.token = 42;
  begun.lease_expires_at = kT;
  begun.attempt = 3;
  begun.checkpoint = "step-2";
  v1::BeginResponse out;
  FillBegin(begun, &out);
  EXPECT_EQ(out.outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  EXPECT_EQ(out.lease().token(), 42u);
  EXPECT_EQ(out.lease().expires_at().seconds(), 1'800'000'000);
  EXPECT_EQ(out.lease().expires_at().nanos(), 123'000'000);
  EXPECT_EQ(out.attempt(), 3u);
  EXPECT_EQ(out.checkpoint(), "step-2");
  EXPECT_FALSE(out.has_result());
}

TEST(FillBeginTest, CompletedCarriesTheResultAndNoLease) {
  storage::BeginResult begun;
  begun.outcome = storage::BeginOutcome::kCompleted;
  begun.token = 42;  // Never shown for a completed key.
  begun.result = {201, "body", {{"content-type", "text/plain"}}};
  begun.completed_at = kT;
  begun.expires_at = kT + absl::Hours(24);
  begun.attempt = 1;
  v1::BeginResponse out;
  FillBegin(begun, &out);
  EXPECT_EQ(out.outcome(), v1::BeginResponse::OUTCOME_COMPLETED);
  EXPECT_FALSE(out.has_lease());
  EXPECT_EQ(out.result().code(), 201);
  EXPECT_EQ(out.result().body(), "body");
  EXPECT_EQ(out.result().metadata().at("content-type"), "text/plain");
  EXPECT_EQ(out.result().completed_at().seconds(), 1'800'000'000);
  EXPECT_EQ(out.expires_at().seconds(), 1'800'000'000 + 24 * 3600);
}

TEST(FillBeginTest, InProgressShowsTheHoldersExpiryButNoToken) {
  storage::BeginResult begun;
  begun.outcome = storage::BeginOutcome::kInProgress;
  begun.token = 9;
  begun.lease_expires_at = kT;
  v1::BeginResponse out;
  FillBegin(begun, &out);
  EXPECT_EQ(out.outcome(), v1::BeginResponse::OUTCOME_IN_PROGRESS);
  EXPECT_EQ(out.lease().token(), 0u);
  EXPECT_EQ(out.lease().expires_at().seconds(), 1'800'000'000);
}

TEST(FillBeginTest, MismatchSaysNothingAboutTheStoredRequest) {
  storage::BeginResult begun;
  begun.outcome = storage::BeginOutcome::kMismatch;
  begun.result.body = "someone else's response";
  v1::BeginResponse out;
  FillBegin(begun, &out);
  EXPECT_EQ(out.outcome(), v1::BeginResponse::OUTCOME_MISMATCH);
  EXPECT_FALSE(out.has_result());
  EXPECT_FALSE(out.has_lease());
}

TEST(FillLookupTest, AnAbsentKeyHasNoTimes) {
  v1::LookupResponse out;
  FillLookup(storage::KeySnapshot{}, &out);
  EXPECT_EQ(out.state(), v1::LookupResponse::STATE_ABSENT);
  EXPECT_FALSE(out.has_expires_at());
  EXPECT_FALSE(out.has_created_at());
  EXPECT_FALSE(out.has_lease());
}

TEST(FillLookupTest, AKeyInProgressShowsItsLeaseAndHistory) {
  storage::KeySnapshot seen;
  seen.state = storage::KeyState::kInProgress;
  seen.fingerprint = "fp";
  seen.lease_expires_at = kT + absl::Seconds(30);
  seen.created_at = kT;
  seen.expires_at = kT + absl::Hours(1);
  seen.attempt = 2;
  seen.checkpoint = "half";
  v1::LookupResponse out;
  FillLookup(seen, &out);
  EXPECT_EQ(out.state(), v1::LookupResponse::STATE_IN_PROGRESS);
  EXPECT_EQ(out.lease().expires_at().seconds(), 1'800'000'030);
  EXPECT_EQ(out.fingerprint(), "fp");
  EXPECT_EQ(out.created_at().seconds(), 1'800'000'000);
  EXPECT_EQ(out.expires_at().seconds(), 1'800'003'600);
  EXPECT_EQ(out.attempt(), 2u);
  EXPECT_EQ(out.checkpoint(), "half");
  EXPECT_FALSE(out.has_result());
}

TEST(FillLookupTest, ACompletedKeyShowsItsResult) {
  storage::KeySnapshot seen;
  seen.state = storage::KeyState::kCompleted;
  seen.result = {200, "ok", {}};
  seen.completed_at = kT;
  seen.expires_at = kT + absl::Hours(1);
  seen.attempt = 1;
  v1::LookupResponse out;
  FillLookup(seen, &out);
  EXPECT_EQ(out.state(), v1::LookupResponse::STATE_COMPLETED);
  EXPECT_EQ(out.result().code(), 200);
  EXPECT_EQ(out.result().body(), "ok");
  EXPECT_EQ(out.result().completed_at().seconds(), 1'800'000'000);
  EXPECT_FALSE(out.has_lease());
}

}  // namespace
}  // namespace idem::server
