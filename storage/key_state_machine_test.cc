// Exhaustive tests of the key state machine: every stored state crossed with
// every operation and its variants, plus the invariants that hold for all.
#include "storage/key_state_machine.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace idem::storage {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);
constexpr absl::Duration kLease = absl::Seconds(30);
constexpr absl::Duration kRetention = absl::Hours(24);
constexpr uint64_t kHolderToken = 7;

int64_t Us(absl::Time t) { return absl::ToUnixMicros(t); }

// The stored states a key can be in at kNow.
enum class Stored {
  kAbsent,
  kExpired,
  kInProgress,
  kLapsed,
  kCompleted,
  kReleased
};

std::vector<Stored> AllStored() {
  return {Stored::kAbsent, Stored::kExpired,   Stored::kInProgress,
          Stored::kLapsed, Stored::kCompleted, Stored::kReleased};
}

std::string Name(Stored s) {
  switch (s) {
    case Stored::kAbsent:
      return "absent";
    case Stored::kExpired:
      return "expired";
    case Stored::kInProgress:
      return "in progress";
    case Stored::kLapsed:
      return "lapsed";
    case Stored::kCompleted:
      return "completed";
    case Stored::kReleased:
      return "released";
  }
  return "?";
}

// A record in state `s` as seen at kNow, begun with fingerprint "fp" by owner
// "holder" under kHolderToken.
std::optional<Record> Make(Stored s) {
  if (s == Stored::kAbsent) return std::nullopt;
  Record r;
  r.set_fingerprint("fp");
  r.set_token(kHolderToken);
  r.set_owner("holder");
  r.set_created_at_us(Us(kNow - absl::Minutes(1)));
  r.set_retention_us(absl::ToInt64Microseconds(kRetention));
  r.set_attempt(3);
  switch (s) {
    case Stored::kInProgress:
      r.set_state(Record::STATE_IN_PROGRESS);
      r.set_lease_expires_at_us(Us(kNow + absl::Seconds(10)));
      r.set_expires_at_us(Us(kNow + absl::Seconds(10) + kRetention));
      break;
    case Stored::kLapsed:
      r.set_state(Record::STATE_IN_PROGRESS);
      r.set_lease_expires_at_us(Us(kNow - absl::Seconds(1)));
      r.set_expires_at_us(Us(kNow - absl::Seconds(1) + kRetention));
      break;
    case Stored::kCompleted:
      r.set_state(Record::STATE_COMPLETED);
      r.set_completed_at_us(Us(kNow - absl::Seconds(30)));
      r.set_expires_at_us(Us(kNow - absl::Seconds(30) + kRetention));
      r.mutable_result()->set_code(201);
      r.mutable_result()->set_body("stored");
      break;
    case Stored::kReleased:
      r.set_state(Record::STATE_RELEASED);
      r.set_expires_at_us(Us(kNow + kRetention));
      break;
    case Stored::kExpired:  // A completed record exactly at its expiry.
      r.set_state(Record::STATE_COMPLETED);
      r.set_completed_at_us(Us(kNow - kRetention));
      r.set_expires_at_us(Us(kNow));
      r.mutable_result()->set_body("old");
      break;
    case Stored::kAbsent:
      break;
  }
  return r;
}

const Record* Ptr(const std::optional<Record>& r) {
  return r.has_value() ? &*r : nullptr;
}

BeginCommand Begin(std::string fingerprint, std::string owner = "") {
  return BeginCommand{{"ns", "k"},
                      std::move(fingerprint),
                      std::move(owner),
                      kLease,
                      kRetention};
}

uint64_t NextToken() { return 100; }

// --- Begin -----------------------------------------------------------------

TEST(DecideBeginTest, OutcomeForEveryStoredStateAndRequest) {
  struct Case {
    Stored stored;
    std::string fingerprint;
    std::string owner;
    BeginOutcome outcome;
    uint64_t token;  // Expected token in the reply.
    bool writes;
  };
  const std::vector<Case> cases = {
      // Free keys are acquired with a new token, whatever the fingerprint.
      {Stored::kAbsent, "fp", "", BeginOutcome::kAcquired, 100, true},
      {Stored::kAbsent, "other", "x", BeginOutcome::kAcquired, 100, true},
      {Stored::kExpired, "other", "", BeginOutcome::kAcquired, 100, true},
      {Stored::kReleased, "fp", "", BeginOutcome::kAcquired, 100, true},
      {Stored::kReleased, "other", "holder", BeginOutcome::kAcquired, 100,
       true},
      // A held key: others wait, the holder gets its token back.
      {Stored::kInProgress, "fp", "", BeginOutcome::kInProgress, 0, false},
      {Stored::kInProgress, "fp", "someone", BeginOutcome::kInProgress, 0,
       false},
      {Stored::kInProgress, "fp", "holder", BeginOutcome::kAcquired,
       kHolderToken, true},
      {Stored::kInProgress, "other", "", BeginOutcome::kMismatch, 0, false},
      {Stored::kInProgress, "other", "holder", BeginOutcome::kMismatch, 0,
       false},
      // A lapsed lease is taken over with a higher token.
      {Stored::kLapsed, "fp", "", BeginOutcome::kAcquired, 100, true},
      {Stored::kLapsed, "fp", "holder", BeginOutcome::kAcquired, kHolderToken,
       true},
      {Stored::kLapsed, "other", "", BeginOutcome::kMismatch, 0, false},
      // A completed key is replayed, or refused with another fingerprint.
      {Stored::kCompleted, "fp", "", BeginOutcome::kCompleted, 0, false},
      {Stored::kCompleted, "fp", "holder", BeginOutcome::kCompleted, 0, false},
      {Stored::kCompleted, "other", "", BeginOutcome::kMismatch, 0, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(Name(c.stored) + " fp=" + c.fingerprint + " owner=" + c.owner);
    std::optional<Record> current = Make(c.stored);
    int tokens_issued = 0;
    Decision<BeginResult> d =
        DecideBegin(Ptr(current), Begin(c.fingerprint, c.owner), kNow, [&] {
          ++tokens_issued;
          return NextToken();
        });
    ASSERT_OK(d.reply);
    EXPECT_EQ(d.reply->outcome, c.outcome);
    EXPECT_EQ(d.reply->token, c.token);
    EXPECT_EQ(d.write.has_value(), c.writes);
    EXPECT_EQ(tokens_issued, c.token == 100 ? 1 : 0);
    if (c.outcome == BeginOutcome::kAcquired) {
      ASSERT_TRUE(d.write.has_value());
      EXPECT_EQ(d.write->state(), Record::STATE_IN_PROGRESS);
      EXPECT_EQ(d.write->token(), c.token);
      EXPECT_EQ(d.write->owner(), c.owner);
      EXPECT_GE(d.reply->lease_expires_at, kNow + kLease);
      EXPECT_EQ(d.reply->lease_expires_at,
                absl::FromUnixMicros(d.write->lease_expires_at_us()));
      // Kept for the retention past the lease, so a late Complete can land.
      EXPECT_EQ(d.write->expires_at_us(),
                d.write->lease_expires_at_us() +
                    absl::ToInt64Microseconds(kRetention));
    }
    if (c.outcome != BeginOutcome::kCompleted) {
      EXPECT_EQ(d.reply->result, Result{});
    }
  }
}

TEST(DecideBeginTest, AttemptsCountAcquisitionsButNotSameOwnerRetries) {
  auto attempt_after = [](Stored s, const std::string& owner) {
    std::optional<Record> current = Make(s);
    return DecideBegin(Ptr(current), Begin("fp", owner), kNow, NextToken)
        .reply->attempt;
  };
  EXPECT_EQ(attempt_after(Stored::kAbsent, ""), 1u);
  EXPECT_EQ(attempt_after(Stored::kExpired, ""), 1u);
  EXPECT_EQ(attempt_after(Stored::kReleased, ""), 4u);
  EXPECT_EQ(attempt_after(Stored::kLapsed, ""), 4u);
  EXPECT_EQ(attempt_after(Stored::kInProgress, "holder"), 3u);
  EXPECT_EQ(attempt_after(Stored::kCompleted, ""), 3u);
}

TEST(DecideBeginTest, InProgressRevealsOnlyTheLeaseExpiry) {
  std::optional<Record> current = Make(Stored::kInProgress);
  Decision<BeginResult> d =
      DecideBegin(Ptr(current), Begin("fp"), kNow, NextToken);
  EXPECT_EQ(d.reply->lease_expires_at, kNow + absl::Seconds(10));
  EXPECT_EQ(d.reply->token, 0u);
  EXPECT_EQ(d.reply->attempt, 0u);
}

TEST(DecideBeginTest, CompletedReplaysTheStoredResultAndItsRetention) {
  std::optional<Record> current = Make(Stored::kCompleted);
  Decision<BeginResult> d =
      DecideBegin(Ptr(current), Begin("fp"), kNow, NextToken);
  EXPECT_EQ(d.reply->result.code, 201);
  EXPECT_EQ(d.reply->result.body, "stored");
  EXPECT_EQ(d.reply->completed_at, kNow - absl::Seconds(30));
  EXPECT_EQ(d.reply->expires_at, kNow - absl::Seconds(30) + kRetention);
}

TEST(DecideBeginTest, SameOwnerRetryNeverShortensTheLease) {
  std::optional<Record> current = Make(Stored::kInProgress);
  BeginCommand short_lease = Begin("fp", "holder");
  short_lease.lease = absl::Seconds(1);
  Decision<BeginResult> d =
      DecideBegin(Ptr(current), short_lease, kNow, NextToken);
  EXPECT_EQ(d.reply->lease_expires_at, kNow + absl::Seconds(10));
}

TEST(DecideBeginTest, ReacquiringAReleasedKeyKeepsItsCreationTime) {
  std::optional<Record> current = Make(Stored::kReleased);
  Decision<BeginResult> d =
      DecideBegin(Ptr(current), Begin("new-fp"), kNow, NextToken);
  EXPECT_EQ(d.write->created_at_us(), current->created_at_us());
  EXPECT_EQ(d.write->fingerprint(), "new-fp");
  std::optional<Record> expired = Make(Stored::kExpired);
  d = DecideBegin(Ptr(expired), Begin("fp"), kNow, NextToken);
  EXPECT_EQ(d.write->created_at_us(), Us(kNow));
}

// --- Complete, Release, Extend -----------------------------------------------

struct TokenCase {
  Stored stored;
  uint64_t token;
  absl::StatusCode code;
  bool writes;
};

TEST(DecideCompleteTest, OnlyTheNewestTokenCompletes) {
  const Result result{200, "done", {{"h", "v"}}};
  const std::vector<TokenCase> cases = {
      {Stored::kAbsent, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kExpired, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kInProgress, kHolderToken, absl::StatusCode::kOk, true},
      {Stored::kInProgress, kHolderToken - 1,
       absl::StatusCode::kFailedPrecondition, false},
      {Stored::kInProgress, kHolderToken + 1,
       absl::StatusCode::kFailedPrecondition, false},
      {Stored::kLapsed, kHolderToken, absl::StatusCode::kOk, true},
      {Stored::kLapsed, 1, absl::StatusCode::kFailedPrecondition, false},
      {Stored::kReleased, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      // Completed under this token with another result: refused, kept.
      {Stored::kCompleted, kHolderToken, absl::StatusCode::kAlreadyExists,
       false},
      {Stored::kCompleted, 1, absl::StatusCode::kFailedPrecondition, false},
  };
  for (const TokenCase& c : cases) {
    SCOPED_TRACE(Name(c.stored) + " token=" + std::to_string(c.token));
    std::optional<Record> current = Make(c.stored);
    Decision<CompleteResult> d = DecideComplete(
        Ptr(current), {{"ns", "k"}, c.token, result, std::nullopt}, kNow);
    EXPECT_EQ(d.reply.status().code(), c.code) << d.reply.status();
    EXPECT_EQ(d.write.has_value(), c.writes);
    if (c.code == absl::StatusCode::kFailedPrecondition) {
      const bool never_issued = c.token > kHolderToken;
      EXPECT_NE(d.reply.status().message().find(never_issued ? "never issued"
                                                             : "lease lost"),
                std::string::npos)
          << d.reply.status();
    }
    if (c.writes) {
      EXPECT_EQ(d.write->state(), Record::STATE_COMPLETED);
      EXPECT_EQ(FromStored(d.write->result()), result);
      EXPECT_EQ(d.write->completed_at_us(), Us(kNow));
      EXPECT_EQ(d.write->expires_at_us(), Us(kNow + kRetention));
      EXPECT_EQ(d.reply->expires_at, kNow + kRetention);
    }
  }
}

TEST(LeaseLostTest, ATokenAboveTheKeysNewestIsNeverIssuedNotStale) {
  for (Stored stored : {Stored::kInProgress, Stored::kLapsed, Stored::kReleased,
                        Stored::kCompleted}) {
    SCOPED_TRACE(Name(stored));
    std::optional<Record> current = Make(stored);
    const absl::Status extend =
        DecideExtend(Ptr(current), {{"ns", "k"}, kHolderToken + 5, kLease},
                     kNow)
            .reply.status();
    EXPECT_EQ(extend.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(extend.message().find("was never issued for this key"),
              std::string::npos)
        << extend;
    EXPECT_EQ(extend.message().find("stale"), std::string::npos) << extend;
  }
}

TEST(LeaseLostTest, ExtendByTheTokenThatCompletedSaysItCompleted) {
  std::optional<Record> current = Make(Stored::kCompleted);
  const absl::Status extend =
      DecideExtend(Ptr(current), {{"ns", "k"}, kHolderToken, kLease}, kNow)
          .reply.status();
  EXPECT_EQ(extend.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(extend.message().find("already completed under this token"),
            std::string::npos)
      << extend;
  const absl::Status checkpoint =
      DecideCheckpoint(Ptr(current), {{"ns", "k"}, kHolderToken, "step"}, kNow)
          .reply.status();
  EXPECT_NE(checkpoint.message().find("already completed under this token"),
            std::string::npos)
      << checkpoint;
  // An older token was taken over: that one is stale.
  const absl::Status older =
      DecideExtend(Ptr(current), {{"ns", "k"}, kHolderToken - 1, kLease}, kNow)
          .reply.status();
  EXPECT_NE(older.message().find("completed by another attempt"),
            std::string::npos)
      << older;
}

TEST(LeaseLostTest, TheHolderOfAForceReleasedKeyHearsAnOperatorDidIt) {
  std::optional<Record> current = Make(Stored::kInProgress);
  uint64_t next = 100;
  auto tokens = [&next] { return ++next; };
  Decision<uint64_t> forced = DecideForceRelease(Ptr(current), kNow, tokens);
  ASSERT_TRUE(forced.write.has_value());
  Record released = *forced.write;
  const absl::Status complete =
      DecideComplete(
          &released,
          {{"ns", "k"}, kHolderToken, Result{200, "x", {}}, std::nullopt}, kNow)
          .reply.status();
  EXPECT_EQ(complete.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(complete.message().find("an operator force-released the key"),
            std::string::npos)
      << complete;
  // Still so after another attempt acquired the key.
  Decision<BeginResult> again = DecideBegin(
      &released, {{"ns", "k"}, "fp", "", kLease, kRetention}, kNow, tokens);
  ASSERT_TRUE(again.write.has_value());
  const absl::Status extend =
      DecideExtend(&*again.write, {{"ns", "k"}, kHolderToken, kLease}, kNow)
          .reply.status();
  EXPECT_NE(extend.message().find("an operator force-released the key"),
            std::string::npos)
      << extend;
}

TEST(DecideCompleteTest, RepeatingTheSameResultIsOkAndWritesNothing) {
  std::optional<Record> current = Make(Stored::kCompleted);
  Decision<CompleteResult> d = DecideComplete(
      Ptr(current),
      {{"ns", "k"}, kHolderToken, Result{201, "stored", {}}, std::nullopt},
      kNow);
  ASSERT_OK(d.reply);
  EXPECT_FALSE(d.write.has_value());
  EXPECT_EQ(d.reply->completed_at, kNow - absl::Seconds(30));
}

TEST(DecideCompleteTest, RetentionOverrideCountsFromCompletion) {
  std::optional<Record> current = Make(Stored::kInProgress);
  Decision<CompleteResult> d = DecideComplete(
      Ptr(current), {{"ns", "k"}, kHolderToken, Result{}, absl::Seconds(5)},
      kNow);
  EXPECT_EQ(d.reply->expires_at, kNow + absl::Seconds(5));
  EXPECT_EQ(d.write->retention_us(), 5'000'000);
}

TEST(DecideReleaseTest, OnlyTheHolderReleasesAndRetriesAreOk) {
  const std::vector<TokenCase> cases = {
      {Stored::kAbsent, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kExpired, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kInProgress, kHolderToken, absl::StatusCode::kOk, true},
      {Stored::kInProgress, 1, absl::StatusCode::kFailedPrecondition, false},
      {Stored::kLapsed, kHolderToken, absl::StatusCode::kOk, true},
      {Stored::kReleased, kHolderToken, absl::StatusCode::kOk, false},
      {Stored::kReleased, 1, absl::StatusCode::kFailedPrecondition, false},
      {Stored::kCompleted, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
  };
  for (const TokenCase& c : cases) {
    SCOPED_TRACE(Name(c.stored) + " token=" + std::to_string(c.token));
    std::optional<Record> current = Make(c.stored);
    Decision<NoReply> d =
        DecideRelease(Ptr(current), {{"ns", "k"}, c.token}, kNow);
    EXPECT_EQ(d.reply.status().code(), c.code) << d.reply.status();
    EXPECT_EQ(d.write.has_value(), c.writes);
    if (c.writes) {
      EXPECT_EQ(d.write->state(), Record::STATE_RELEASED);
      EXPECT_EQ(d.write->token(), kHolderToken);
    }
  }
}

TEST(DecideExtendTest, OnlyTheNewestInProgressTokenExtends) {
  const std::vector<TokenCase> cases = {
      {Stored::kAbsent, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kInProgress, kHolderToken, absl::StatusCode::kOk, true},
      {Stored::kInProgress, 1, absl::StatusCode::kFailedPrecondition, false},
      {Stored::kLapsed, kHolderToken, absl::StatusCode::kOk, true},
      {Stored::kReleased, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kCompleted, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kExpired, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
  };
  for (const TokenCase& c : cases) {
    SCOPED_TRACE(Name(c.stored) + " token=" + std::to_string(c.token));
    std::optional<Record> current = Make(c.stored);
    Decision<absl::Time> d = DecideExtend(
        Ptr(current), {{"ns", "k"}, c.token, absl::Minutes(2)}, kNow);
    EXPECT_EQ(d.reply.status().code(), c.code) << d.reply.status();
    EXPECT_EQ(d.write.has_value(), c.writes);
    if (c.writes) {
      EXPECT_EQ(*d.reply, kNow + absl::Minutes(2));
      EXPECT_EQ(d.write->expires_at_us(),
                Us(kNow + absl::Minutes(2) + kRetention));
    }
  }
}

TEST(DecideCheckpointTest, OnlyTheNewestInProgressTokenRecordsProgress) {
  const std::vector<TokenCase> cases = {
      {Stored::kAbsent, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kInProgress, kHolderToken, absl::StatusCode::kOk, true},
      {Stored::kInProgress, 1, absl::StatusCode::kFailedPrecondition, false},
      {Stored::kLapsed, kHolderToken, absl::StatusCode::kOk, true},
      {Stored::kReleased, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
      {Stored::kCompleted, kHolderToken, absl::StatusCode::kFailedPrecondition,
       false},
  };
  for (const TokenCase& c : cases) {
    SCOPED_TRACE(Name(c.stored) + " token=" + std::to_string(c.token));
    std::optional<Record> current = Make(c.stored);
    Decision<NoReply> d =
        DecideCheckpoint(Ptr(current), {{"ns", "k"}, c.token, "step-2"}, kNow);
    EXPECT_EQ(d.reply.status().code(), c.code) << d.reply.status();
    EXPECT_EQ(d.write.has_value(), c.writes);
    if (c.writes) {
      EXPECT_EQ(d.write->checkpoint(), "step-2");
      EXPECT_EQ(d.write->lease_expires_at_us(), current->lease_expires_at_us());
    }
  }
}

TEST(DecideCheckpointTest, NextHolderOfTheSameRequestReceivesTheCheckpoint) {
  for (Stored s : {Stored::kLapsed, Stored::kReleased, Stored::kInProgress}) {
    SCOPED_TRACE(Name(s));
    std::optional<Record> current = Make(s);
    current->set_checkpoint("step-2");
    const std::string owner = s == Stored::kInProgress ? "holder" : "";
    Decision<BeginResult> same =
        DecideBegin(Ptr(current), Begin("fp", owner), kNow, NextToken);
    EXPECT_EQ(same.reply->checkpoint, "step-2");
    EXPECT_EQ(same.write->checkpoint(), "step-2");
  }
  // A released key taken by a different request starts from scratch.
  std::optional<Record> released = Make(Stored::kReleased);
  released->set_checkpoint("step-2");
  Decision<BeginResult> other =
      DecideBegin(Ptr(released), Begin("other"), kNow, NextToken);
  EXPECT_EQ(other.reply->checkpoint, "");
  // So does a key whose record expired.
  std::optional<Record> expired = Make(Stored::kExpired);
  expired->set_checkpoint("step-2");
  EXPECT_EQ(
      DecideBegin(Ptr(expired), Begin("fp"), kNow, NextToken).reply->checkpoint,
      "");
}

TEST(DecideForceReleaseTest, FreesOnlyInProgressKeysUnderANewToken) {
  for (Stored s : AllStored()) {
    SCOPED_TRACE(Name(s));
    std::optional<Record> current = Make(s);
    Decision<uint64_t> d = DecideForceRelease(Ptr(current), kNow, NextToken);
    const bool in_progress = s == Stored::kInProgress || s == Stored::kLapsed;
    EXPECT_EQ(d.reply.ok(), in_progress) << d.reply.status();
    EXPECT_EQ(d.write.has_value(), in_progress);
    if (in_progress) {
      EXPECT_EQ(*d.reply, 100u);
      EXPECT_EQ(d.write->state(), Record::STATE_RELEASED);
      EXPECT_EQ(d.write->token(), 100u);
      EXPECT_EQ(d.write->owner(), "");
      // The old holder is now fenced out.
      EXPECT_FALSE(
          DecideComplete(&*d.write,
                         {{"ns", "k"}, kHolderToken, Result{}, std::nullopt},
                         kNow)
              .reply.ok());
    } else {
      EXPECT_EQ(d.reply.status().code(), absl::StatusCode::kFailedPrecondition);
    }
  }
}

// --- Lookup and invariants ---------------------------------------------------

TEST(SnapshotTest, ReportsEachStoredState) {
  EXPECT_EQ(Snapshot(nullptr, kNow).state, KeyState::kAbsent);
  std::optional<Record> expired = Make(Stored::kExpired);
  EXPECT_EQ(Snapshot(Ptr(expired), kNow).state, KeyState::kAbsent);
  EXPECT_EQ(Snapshot(Ptr(expired), kNow).result, Result{});
  std::optional<Record> released = Make(Stored::kReleased);
  EXPECT_EQ(Snapshot(Ptr(released), kNow).state, KeyState::kAbsent);
  EXPECT_EQ(Snapshot(Ptr(released), kNow).attempt, 3u);
  std::optional<Record> lapsed = Make(Stored::kLapsed);
  KeySnapshot s = Snapshot(Ptr(lapsed), kNow);
  EXPECT_EQ(s.state, KeyState::kInProgress);
  EXPECT_EQ(s.lease_expires_at, kNow - absl::Seconds(1));
  std::optional<Record> completed = Make(Stored::kCompleted);
  s = Snapshot(Ptr(completed), kNow);
  EXPECT_EQ(s.state, KeyState::kCompleted);
  EXPECT_EQ(s.result.body, "stored");
  EXPECT_EQ(s.fingerprint, "fp");
  EXPECT_EQ(s.created_at, kNow - absl::Minutes(1));
}

TEST(InvariantsTest, RefusalsNeverWriteAndNewTokensAreNeverReused) {
  for (Stored s : AllStored()) {
    SCOPED_TRACE(Name(s));
    std::optional<Record> current = Make(s);
    for (uint64_t token : {uint64_t{1}, kHolderToken, uint64_t{100}}) {
      auto complete = DecideComplete(
          Ptr(current), {{"ns", "k"}, token, Result{}, std::nullopt}, kNow);
      auto release = DecideRelease(Ptr(current), {{"ns", "k"}, token}, kNow);
      auto extend =
          DecideExtend(Ptr(current), {{"ns", "k"}, token, kLease}, kNow);
      if (!complete.reply.ok()) {
        EXPECT_FALSE(complete.write.has_value());
      }
      if (!release.reply.ok()) {
        EXPECT_FALSE(release.write.has_value());
      }
      if (!extend.reply.ok()) {
        EXPECT_FALSE(extend.write.has_value());
      }
      // A write never changes who holds the key.
      for (const std::optional<Record>* w :
           {&complete.write, &release.write, &extend.write}) {
        if (w->has_value()) {
          EXPECT_EQ((*w)->token(), current->token());
        }
      }
    }
    for (const char* owner : {"", "holder", "x"}) {
      for (const char* fp : {"fp", "other"}) {
        auto begin =
            DecideBegin(Ptr(current), Begin(fp, owner), kNow, NextToken);
        if (begin.write.has_value() && current.has_value() &&
            begin.write->token() != current->token()) {
          EXPECT_GT(begin.write->token(), current->token());
        }
      }
    }
  }
}

}  // namespace
}  // namespace idem::storage
