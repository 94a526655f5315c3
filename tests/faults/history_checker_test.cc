#include "tests/faults/history_checker.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace idem::faults {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::IsEmpty;

constexpr int64_t kLease = 1'000'000;  // 1 s, in microseconds.
constexpr int64_t kRetentionEnd = 1'000'000'000;

// Builders for hand-made histories; times are microseconds.
HistoryEvent Acquired(const std::string& key, uint64_t token, int64_t at) {
  HistoryEvent e;
  e.set_op(HistoryEvent::OP_BEGIN);
  e.set_key(key);
  e.set_invoked_us(at);
  e.set_returned_us(at + 10);
  e.set_lease_us(kLease);
  e.set_result(HistoryEvent::RESULT_OK);
  e.set_outcome(HistoryEvent::OUTCOME_ACQUIRED);
  e.set_reply_token(token);
  e.set_lease_expires_at_us(at + 5 + kLease);  // Server "now" = at + 5.
  return e;
}

HistoryEvent Call(HistoryEvent::Op op, const std::string& key, uint64_t token,
                  int64_t at, HistoryEvent::Result result) {
  HistoryEvent e;
  e.set_op(op);
  e.set_key(key);
  e.set_token(token);
  e.set_invoked_us(at);
  e.set_returned_us(at + 10);
  e.set_result(result);
  return e;
}

HistoryEvent Completed(const std::string& key, uint64_t token, int64_t at,
                       const std::string& body,
                       HistoryEvent::Result result = HistoryEvent::RESULT_OK) {
  HistoryEvent e = Call(HistoryEvent::OP_COMPLETE, key, token, at, result);
  e.set_body(body);
  if (result == HistoryEvent::RESULT_OK) {
    e.set_result_expires_at_us(kRetentionEnd);
  }
  return e;
}

HistoryEvent Replayed(HistoryEvent::Op op, const std::string& key, int64_t at,
                      const std::string& body) {
  HistoryEvent e = Call(op, key, 0, at, HistoryEvent::RESULT_OK);
  e.set_outcome(HistoryEvent::OUTCOME_COMPLETED);
  e.set_reply_body(body);
  return e;
}

HistoryEvent Extended(const std::string& key, uint64_t token, int64_t at) {
  HistoryEvent e =
      Call(HistoryEvent::OP_EXTEND, key, token, at, HistoryEvent::RESULT_OK);
  e.set_lease_us(kLease);
  e.set_lease_expires_at_us(at + 5 + kLease);
  return e;
}

std::vector<std::string> Rules(const HistoryReport& report) {
  std::vector<std::string> rules;
  for (const Violation& v : report.violations) rules.push_back(v.rule);
  return rules;
}

TEST(HistoryCheckerTest, AcceptsACorrectHistory) {
  const std::vector<HistoryEvent> history = {
      Acquired("a", 1, 0),
      Extended("a", 1, 500'000),
      Completed("a", 1, 900'000, "done-1"),
      Replayed(HistoryEvent::OP_BEGIN, "a", 1'000'000, "done-1"),
      Replayed(HistoryEvent::OP_LOOKUP, "a", 5'000'000, "done-1"),
      // Key b: the first holder lapses, a second takes over and completes.
      Acquired("b", 2, 0),
      Acquired("b", 7, 2'000'000),
      Completed("b", 7, 2'500'000, "done-7"),
      Replayed(HistoryEvent::OP_BEGIN, "b", 3'000'000, "done-7"),
  };
  const HistoryReport report = CheckHistory(history);
  EXPECT_THAT(report.violations, IsEmpty());
  EXPECT_EQ(report.keys, 2);
  EXPECT_EQ(report.acquisitions, 3);
  EXPECT_EQ(report.completions, 2);
  EXPECT_EQ(report.replays, 3);
}

TEST(HistoryCheckerTest, CatchesTwoLiveLeases) {
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0), Acquired("a", 2, 400'000)});
  EXPECT_THAT(Rules(report), ElementsAre("exclusive-leases"));
  EXPECT_THAT(report.violations, ElementsAre(Field(&Violation::key, "a")));
}

TEST(HistoryCheckerTest, CatchesAnExtendThatOverlapsANewerLease) {
  // Token 1 lapsed at 1 s, token 2 took over at 1.2 s; an Extend of token 1
  // accepted at 1.5 s gives two holders (and a superseded token accepted).
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0), Acquired("a", 2, 1'200'000),
                    Extended("a", 1, 1'500'000)});
  EXPECT_THAT(Rules(report),
              ElementsAre("exclusive-leases", "no-superseded-complete"));
}

TEST(HistoryCheckerTest, AReleaseEndsTheLease) {
  // Released at 0.3 s (reply lost, so it may have happened): a new holder
  // at 0.4 s is fine.
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0),
                    Call(HistoryEvent::OP_RELEASE, "a", 1, 300'000,
                         HistoryEvent::RESULT_UNKNOWN),
                    Acquired("a", 2, 400'000)});
  EXPECT_THAT(report.violations, IsEmpty());
  EXPECT_EQ(report.unknown_results, 1);
}

TEST(HistoryCheckerTest, ARefusedReleaseDoesNotEndTheLease) {
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0),
                    Call(HistoryEvent::OP_RELEASE, "a", 1, 300'000,
                         HistoryEvent::RESULT_FAILED),
                    Acquired("a", 2, 400'000)});
  EXPECT_THAT(Rules(report), ElementsAre("exclusive-leases"));
}

TEST(HistoryCheckerTest, ReacquiringTheSameTokenIsNotTwoHolders) {
  HistoryEvent again = Acquired("a", 1, 600'000);
  const HistoryReport report = CheckHistory({Acquired("a", 1, 0), again});
  EXPECT_THAT(report.violations, IsEmpty());
}

TEST(HistoryCheckerTest, CatchesTokensGoingBackwards) {
  // Token 5 lapsed; the next acquisition got a smaller token.
  const HistoryReport report =
      CheckHistory({Acquired("a", 5, 0), Acquired("a", 3, 2'000'000)});
  EXPECT_THAT(Rules(report), ElementsAre("increasing-tokens"));
}

TEST(HistoryCheckerTest, CatchesALostCompletion) {
  // Acknowledged, then (say, after a restart) the key is free again.
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0), Completed("a", 1, 100'000, "r"),
                    Acquired("a", 2, 3'000'000)});
  EXPECT_THAT(Rules(report), ElementsAre("durable-completion"));
}

TEST(HistoryCheckerTest, CatchesALookupThatNoLongerSeesTheResult) {
  HistoryEvent absent =
      Call(HistoryEvent::OP_LOOKUP, "a", 0, 200'000, HistoryEvent::RESULT_OK);
  absent.set_outcome(HistoryEvent::OUTCOME_ABSENT);
  const HistoryReport report = CheckHistory(
      {Acquired("a", 1, 0), Completed("a", 1, 100'000, "r"), absent});
  EXPECT_THAT(Rules(report), ElementsAre("durable-completion"));
}

TEST(HistoryCheckerTest, DoesNotHoldResultsPastTheirRetention) {
  HistoryEvent absent = Call(HistoryEvent::OP_LOOKUP, "a", 0, kRetentionEnd + 1,
                             HistoryEvent::RESULT_OK);
  absent.set_outcome(HistoryEvent::OUTCOME_ABSENT);
  const HistoryReport report = CheckHistory(
      {Acquired("a", 1, 0), Completed("a", 1, 100'000, "r"), absent});
  EXPECT_THAT(report.violations, IsEmpty());
}

TEST(HistoryCheckerTest, CatchesAChangedResult) {
  const HistoryReport report = CheckHistory(
      {Acquired("a", 1, 0), Completed("a", 1, 100'000, "r"),
       Completed("a", 1, 100'000, "r"),  // A retry: the same result is fine.
       Replayed(HistoryEvent::OP_BEGIN, "a", 200'000, "something else")});
  // Each acknowledged Complete is contradicted, and the body was never sent.
  EXPECT_THAT(Rules(report),
              ElementsAre("durable-completion", "durable-completion",
                          "replay-matches-stored"));
}

TEST(HistoryCheckerTest, CatchesAReplayOfAResultNeverSent) {
  // The Complete was refused, yet its body is replayed.
  const HistoryReport report = CheckHistory(
      {Acquired("a", 1, 0),
       Completed("a", 1, 100'000, "r", HistoryEvent::RESULT_FAILED),
       Replayed(HistoryEvent::OP_LOOKUP, "a", 200'000, "r")});
  EXPECT_THAT(Rules(report), ElementsAre("replay-matches-stored"));
}

TEST(HistoryCheckerTest, AcceptsAReplayOfACompleteWhoseReplyWasLost) {
  const HistoryReport report = CheckHistory(
      {Acquired("a", 1, 0),
       Completed("a", 1, 100'000, "r", HistoryEvent::RESULT_UNKNOWN),
       Replayed(HistoryEvent::OP_LOOKUP, "a", 200'000, "r")});
  EXPECT_THAT(report.violations, IsEmpty());
}

TEST(HistoryCheckerTest, CatchesTwoDifferentAcknowledgedResults) {
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0), Completed("a", 1, 100'000, "first"),
                    Completed("a", 1, 200'000, "second")});
  EXPECT_THAT(Rules(report), ElementsAre("durable-completion"));
}

TEST(HistoryCheckerTest, CatchesACompleteWithASupersededToken) {
  // Token 1 lapsed, token 2 took over; token 1's late Complete must fail.
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0), Acquired("a", 2, 1'500'000),
                    Completed("a", 1, 1'600'000, "late")});
  EXPECT_THAT(Rules(report), ElementsAre("no-superseded-complete"));
}

TEST(HistoryCheckerTest, ALapsedHolderMayCompleteIfNobodyTookOver) {
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0), Completed("a", 1, 1'600'000, "late")});
  EXPECT_THAT(report.violations, IsEmpty());
}

TEST(HistoryCheckerTest, AnExtendMayShortenTheLease) {
  // Extended at 0.1 s to 0.1 s + 0.2 s: the key is free from 0.3 s on.
  HistoryEvent shorter = Extended("a", 1, 100'000);
  shorter.set_lease_us(200'000);
  shorter.set_lease_expires_at_us(100'005 + 200'000);
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0), shorter, Acquired("a", 2, 400'000)});
  EXPECT_THAT(report.violations, IsEmpty());
}

TEST(HistoryCheckerTest, CatchesALostAcquisition) {
  // Acquired at 0 for 1 s; at 0.5 s its Complete is refused as lease lost
  // although nobody else touched the key (say, the acquisition was not on
  // disk when the server restarted).
  HistoryEvent refused =
      Completed("a", 1, 500'000, "r", HistoryEvent::RESULT_FAILED);
  refused.set_grpc_code(9);
  const HistoryReport report = CheckHistory({Acquired("a", 1, 0), refused});
  EXPECT_THAT(Rules(report), ElementsAre("durable-acquisition"));
  // The same refusal after another Begin whose reply was lost is explained.
  HistoryEvent lost_begin = Call(HistoryEvent::OP_BEGIN, "a", 0, 400'000,
                                 HistoryEvent::RESULT_UNKNOWN);
  EXPECT_THAT(
      CheckHistory({Acquired("a", 1, 0), lost_begin, refused}).violations,
      IsEmpty());
}

TEST(HistoryCheckerTest, CatchesACompleteAfterItsOwnRelease) {
  const HistoryReport report = CheckHistory(
      {Acquired("a", 1, 0),
       Call(HistoryEvent::OP_RELEASE, "a", 1, 100'000, HistoryEvent::RESULT_OK),
       Completed("a", 1, 200'000, "r")});
  EXPECT_THAT(Rules(report), ElementsAre("no-superseded-complete"));
}

TEST(HistoryCheckerTest, AMismatchOrALateReadIsNoLostResult) {
  HistoryEvent mismatch =
      Call(HistoryEvent::OP_BEGIN, "a", 0, 200'000, HistoryEvent::RESULT_OK);
  mismatch.set_outcome(HistoryEvent::OUTCOME_MISMATCH);
  // Sent before the retention ended, answered after it.
  HistoryEvent late = Call(HistoryEvent::OP_LOOKUP, "a", 0, kRetentionEnd - 5,
                           HistoryEvent::RESULT_OK);
  late.set_outcome(HistoryEvent::OUTCOME_ABSENT);
  const HistoryReport report = CheckHistory(
      {Acquired("a", 1, 0), Completed("a", 1, 100'000, "r"), mismatch, late});
  EXPECT_THAT(report.violations, IsEmpty());
}

TEST(HistoryCheckerTest, KeysAreCheckedSeparately) {
  const HistoryReport report =
      CheckHistory({Acquired("a", 1, 0), Acquired("b", 2, 100'000)});
  EXPECT_THAT(report.violations, IsEmpty());
}

TEST(HistoryCheckerTest, HistoryFilesRoundTrip) {
  testing::TempDir dir;
  const std::string path = dir.Sub("history.jsonl");
  const std::vector<HistoryEvent> written = {
      Acquired("a", 1, 0),
      Completed("a", 1, 100'000, std::string("\0\xff", 2))};
  {
    std::ofstream out(path);
    for (const HistoryEvent& e : written) {
      auto line = HistoryLine(e);
      ASSERT_TRUE(line.ok()) << line.status();
      out << *line << "\n";
    }
  }
  auto read = ReadHistory(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_EQ((*read)[i].SerializeAsString(), written[i].SerializeAsString());
  }

  std::ofstream(path, std::ios::app) << "{not json\n";
  EXPECT_FALSE(ReadHistory(path).ok());
}

}  // namespace
}  // namespace idem::faults
