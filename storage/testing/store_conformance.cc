#include "storage/testing/store_conformance.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace idem::storage {
namespace {

constexpr absl::Duration kLease = absl::Seconds(30);
constexpr absl::Duration kRetention = absl::Hours(24);

BeginCommand BeginOf(const std::string& key,
                     const std::string& fingerprint = "fp",
                     const std::string& owner = "") {
  return BeginCommand{
      {"payments", key}, fingerprint, owner, kLease, kRetention};
}

Result Created(const std::string& body = "order-1") {
  return Result{201, body, {{"content-type", "application/json"}}};
}

TEST_P(StoreConformanceTest, FreshKeyIsAcquiredWithALease) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  EXPECT_EQ(begun.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(begun.token, 0u);
  EXPECT_EQ(begun.lease_expires_at, clock_.Now() + kLease);
  EXPECT_EQ(begun.attempt, 1u);

  ASSERT_OK_AND_ASSIGN(KeySnapshot seen, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(seen.state, KeyState::kInProgress);
  EXPECT_EQ(seen.fingerprint, "fp");
  EXPECT_EQ(seen.created_at, clock_.Now());
}

TEST_P(StoreConformanceTest, SecondCallerSeesInProgressWithoutToken) {
  ASSERT_OK_AND_ASSIGN(BeginResult first, store().Begin(BeginOf("k1")));
  clock_.Advance(absl::Seconds(1));
  ASSERT_OK_AND_ASSIGN(BeginResult second, store().Begin(BeginOf("k1")));
  EXPECT_EQ(second.outcome, BeginOutcome::kInProgress);
  EXPECT_EQ(second.token, 0u);
  EXPECT_EQ(second.lease_expires_at, first.lease_expires_at);
  // What a waiter waits for, measured on the store's clock.
  EXPECT_EQ(second.lease_left, kLease - absl::Seconds(1));
}

TEST_P(StoreConformanceTest, CompletedResultIsReplayed) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  // Sub-microsecond time: replies must still match what is stored.
  clock_.Advance(absl::Seconds(2) + absl::Nanoseconds(1500));
  ASSERT_OK_AND_ASSIGN(
      CompleteResult done,
      store().Complete(
          {{"payments", "k1"}, begun.token, Created(), std::nullopt}));
  const absl::Time completed_at = done.completed_at;
  EXPECT_LE(completed_at, clock_.Now());
  EXPECT_GT(completed_at, clock_.Now() - absl::Microseconds(1));
  EXPECT_EQ(done.expires_at, completed_at + kRetention);

  clock_.Advance(absl::Hours(1));
  ASSERT_OK_AND_ASSIGN(BeginResult replay, store().Begin(BeginOf("k1")));
  EXPECT_EQ(replay.outcome, BeginOutcome::kCompleted);
  EXPECT_EQ(replay.result, Created());
  EXPECT_EQ(replay.completed_at, completed_at);
  EXPECT_EQ(replay.expires_at, completed_at + kRetention);
  EXPECT_EQ(replay.token, 0u);
}

TEST_P(StoreConformanceTest, DifferentFingerprintIsMismatchAndChangesNothing) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1", "a")));
  ASSERT_OK_AND_ASSIGN(KeySnapshot before, store().Lookup({"payments", "k1"}));
  ASSERT_OK_AND_ASSIGN(BeginResult mismatch,
                       store().Begin(BeginOf("k1", "b", "other-owner")));
  EXPECT_EQ(mismatch.outcome, BeginOutcome::kMismatch);

  ASSERT_OK(store().Complete(
      {{"payments", "k1"}, begun.token, Created(), std::nullopt}));
  ASSERT_OK_AND_ASSIGN(BeginResult after_complete,
                       store().Begin(BeginOf("k1", "b")));
  EXPECT_EQ(after_complete.outcome, BeginOutcome::kMismatch);
  EXPECT_EQ(after_complete.result, Result{});  // Nothing revealed.
  ASSERT_OK_AND_ASSIGN(KeySnapshot after, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(after.fingerprint, before.fingerprint);
}

TEST_P(StoreConformanceTest, SameOwnerGetsTheSameTokenBack) {
  ASSERT_OK_AND_ASSIGN(BeginResult first,
                       store().Begin(BeginOf("k1", "fp", "worker-7")));
  clock_.Advance(absl::Seconds(5));
  ASSERT_OK_AND_ASSIGN(BeginResult again,
                       store().Begin(BeginOf("k1", "fp", "worker-7")));
  EXPECT_EQ(again.outcome, BeginOutcome::kAcquired);
  EXPECT_EQ(again.token, first.token);
  EXPECT_EQ(again.lease_expires_at, clock_.Now() + kLease);
  EXPECT_EQ(again.attempt, 1u);
}

TEST_P(StoreConformanceTest, LapsedLeaseIsTakenOverAndOldHolderIsFenced) {
  ASSERT_OK_AND_ASSIGN(BeginResult old_holder, store().Begin(BeginOf("k1")));
  clock_.Advance(kLease);
  ASSERT_OK_AND_ASSIGN(BeginResult taker, store().Begin(BeginOf("k1")));
  EXPECT_EQ(taker.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(taker.token, old_holder.token);
  EXPECT_EQ(taker.attempt, 2u);

  EXPECT_STATUS_CODE(store().Complete({{"payments", "k1"},
                                       old_holder.token,
                                       Created("stale"),
                                       std::nullopt}),
                     absl::StatusCode::kFailedPrecondition);
  EXPECT_STATUS_CODE(
      store().Extend({{"payments", "k1"}, old_holder.token, kLease}),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_STATUS_CODE(store().Release({{"payments", "k1"}, old_holder.token}),
                     absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(store().Complete(
      {{"payments", "k1"}, taker.token, Created(), std::nullopt}));
  ASSERT_OK_AND_ASSIGN(BeginResult replay, store().Begin(BeginOf("k1")));
  EXPECT_EQ(replay.result, Created());
}

TEST_P(StoreConformanceTest, LapsedLeaseNobodyTookOverMayStillComplete) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  clock_.Advance(kLease + absl::Minutes(5));
  ASSERT_OK(store().Complete(
      {{"payments", "k1"}, begun.token, Created(), std::nullopt}));
  ASSERT_OK_AND_ASSIGN(KeySnapshot seen, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(seen.state, KeyState::kCompleted);
}

TEST_P(StoreConformanceTest, ReleaseFreesTheKeyForAnyFingerprint) {
  ASSERT_OK_AND_ASSIGN(BeginResult first, store().Begin(BeginOf("k1", "a")));
  EXPECT_STATUS_CODE(store().Release({{"payments", "k1"}, first.token + 1}),
                     absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(store().Release({{"payments", "k1"}, first.token}));
  ASSERT_OK(store().Release({{"payments", "k1"}, first.token}));  // Retried.
  ASSERT_OK_AND_ASSIGN(KeySnapshot released,
                       store().Lookup({"payments", "k1"}));
  EXPECT_EQ(released.state, KeyState::kAbsent);

  ASSERT_OK_AND_ASSIGN(BeginResult second, store().Begin(BeginOf("k1", "b")));
  EXPECT_EQ(second.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(second.token, first.token);
  EXPECT_EQ(second.attempt, 2u);
  EXPECT_STATUS_CODE(
      store().Complete(
          {{"payments", "k1"}, first.token, Created(), std::nullopt}),
      absl::StatusCode::kFailedPrecondition);
}

TEST_P(StoreConformanceTest, CompleteIsIdempotentButNeverOverwrites) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  ASSERT_OK_AND_ASSIGN(
      CompleteResult first,
      store().Complete(
          {{"payments", "k1"}, begun.token, Created(), std::nullopt}));
  clock_.Advance(absl::Seconds(3));
  ASSERT_OK_AND_ASSIGN(
      CompleteResult again,
      store().Complete(
          {{"payments", "k1"}, begun.token, Created(), std::nullopt}));
  EXPECT_EQ(again.completed_at, first.completed_at);
  EXPECT_STATUS_CODE(
      store().Complete(
          {{"payments", "k1"}, begun.token, Created("other"), std::nullopt}),
      absl::StatusCode::kAlreadyExists);
  EXPECT_STATUS_CODE(store().Release({{"payments", "k1"}, begun.token}),
                     absl::StatusCode::kFailedPrecondition);
  ASSERT_OK_AND_ASSIGN(KeySnapshot seen, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(seen.result, Created());
}

TEST_P(StoreConformanceTest, ExtendMovesTheLeaseForward) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  clock_.Advance(absl::Seconds(20));
  ASSERT_OK_AND_ASSIGN(
      absl::Time expires,
      store().Extend({{"payments", "k1"}, begun.token, absl::Seconds(60)}));
  EXPECT_EQ(expires, clock_.Now() + absl::Seconds(60));
  clock_.Advance(absl::Seconds(30));  // Past the original lease.
  ASSERT_OK_AND_ASSIGN(BeginResult other, store().Begin(BeginOf("k1")));
  EXPECT_EQ(other.outcome, BeginOutcome::kInProgress);
  EXPECT_EQ(other.lease_expires_at, expires);
}

TEST_P(StoreConformanceTest, ExpiredResultIsAbsentAndKeyStartsOver) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  ASSERT_OK(store().Complete(
      {{"payments", "k1"}, begun.token, Created(), absl::Seconds(10)}));
  clock_.Advance(absl::Seconds(9));
  ASSERT_OK_AND_ASSIGN(BeginResult replay,
                       store().Begin(BeginOf("k1", "other")));
  EXPECT_EQ(replay.outcome, BeginOutcome::kMismatch);
  clock_.Advance(absl::Seconds(1));
  ASSERT_OK_AND_ASSIGN(KeySnapshot gone, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(gone.state, KeyState::kAbsent);
  EXPECT_EQ(gone.attempt, 0u);
  ASSERT_OK_AND_ASSIGN(BeginResult anew, store().Begin(BeginOf("k1", "other")));
  EXPECT_EQ(anew.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(anew.token, begun.token);
  EXPECT_EQ(anew.attempt, 1u);
}

TEST_P(StoreConformanceTest, CheckpointIsFencedAndHandedToTheNextHolder) {
  ASSERT_OK_AND_ASSIGN(BeginResult first, store().Begin(BeginOf("k1")));
  EXPECT_EQ(first.checkpoint, "");
  ASSERT_OK(store().Checkpoint({{"payments", "k1"}, first.token, "step-1"}));
  ASSERT_OK(store().Checkpoint({{"payments", "k1"}, first.token, "step-2"}));
  ASSERT_OK_AND_ASSIGN(KeySnapshot seen, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(seen.checkpoint, "step-2");

  clock_.Advance(kLease);
  ASSERT_OK_AND_ASSIGN(BeginResult taker, store().Begin(BeginOf("k1")));
  EXPECT_EQ(taker.checkpoint, "step-2");
  EXPECT_STATUS_CODE(
      store().Checkpoint({{"payments", "k1"}, first.token, "stale"}),
      absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(store().Checkpoint({{"payments", "k1"}, taker.token, "step-3"}));
  ASSERT_OK(store().Release({{"payments", "k1"}, taker.token}));
  ASSERT_OK_AND_ASSIGN(BeginResult third, store().Begin(BeginOf("k1")));
  EXPECT_EQ(third.checkpoint, "step-3");
}

TEST_P(StoreConformanceTest, DeleteForgetsTheKeyButNotTheTokenCounter) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  ASSERT_OK(store().Complete(
      {{"payments", "k1"}, begun.token, Created(), std::nullopt}));
  ASSERT_OK_AND_ASSIGN(bool existed, store().Delete({"payments", "k1"}));
  EXPECT_TRUE(existed);
  ASSERT_OK_AND_ASSIGN(bool again, store().Delete({"payments", "k1"}));
  EXPECT_FALSE(again);
  ASSERT_OK_AND_ASSIGN(KeySnapshot gone, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(gone.state, KeyState::kAbsent);
  ASSERT_OK_AND_ASSIGN(BeginResult anew, store().Begin(BeginOf("k1", "other")));
  EXPECT_EQ(anew.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(anew.token, begun.token);
}

TEST_P(StoreConformanceTest, ForceReleaseFencesTheHolderOut) {
  ASSERT_OK_AND_ASSIGN(BeginResult holder, store().Begin(BeginOf("k1")));
  ASSERT_OK_AND_ASSIGN(uint64_t fence,
                       store().ForceRelease({"payments", "k1"}));
  EXPECT_GT(fence, holder.token);
  EXPECT_STATUS_CODE(
      store().Complete(
          {{"payments", "k1"}, holder.token, Created(), std::nullopt}),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_STATUS_CODE(store().ForceRelease({"payments", "k1"}),
                     absl::StatusCode::kFailedPrecondition);
  ASSERT_OK_AND_ASSIGN(BeginResult next, store().Begin(BeginOf("k1")));
  EXPECT_EQ(next.outcome, BeginOutcome::kAcquired);
  EXPECT_GT(next.token, fence);
  EXPECT_STATUS_CODE(store().ForceRelease({"payments", "absent"}),
                     absl::StatusCode::kFailedPrecondition);
}

TEST_P(StoreConformanceTest, TakeoverIsReported) {
  ASSERT_OK_AND_ASSIGN(BeginResult first, store().Begin(BeginOf("k1")));
  EXPECT_FALSE(first.took_over);
  clock_.Advance(kLease);
  ASSERT_OK_AND_ASSIGN(BeginResult taker, store().Begin(BeginOf("k1")));
  EXPECT_TRUE(taker.took_over);
}

TEST_P(StoreConformanceTest, ListPagesThroughANamespaceWithFilters) {
  // 25 completed, 10 in progress (4 of them lapsed), 3 released, 2 expired,
  // and keys of a neighbouring namespace that must not show up.
  for (int i = 0; i < 25; ++i) {
    const std::string key = "done-" + std::to_string(100 + i);
    ASSERT_OK_AND_ASSIGN(BeginResult b, store().Begin(BeginOf(key)));
    ASSERT_OK(store().Complete(
        {{"payments", key}, b.token, Created(), std::nullopt}));
  }
  for (int i = 0; i < 2; ++i) {
    const std::string key = "expired-" + std::to_string(i);
    ASSERT_OK_AND_ASSIGN(BeginResult b, store().Begin(BeginOf(key)));
    ASSERT_OK(store().Complete(
        {{"payments", key}, b.token, Created(), absl::Seconds(1)}));
  }
  for (int i = 0; i < 3; ++i) {
    const std::string key = "released-" + std::to_string(i);
    ASSERT_OK_AND_ASSIGN(BeginResult b, store().Begin(BeginOf(key)));
    ASSERT_OK(store().Release({{"payments", key}, b.token}));
  }
  for (int i = 0; i < 4; ++i) {
    BeginCommand stuck = BeginOf("stuck-" + std::to_string(i));
    stuck.lease = absl::Seconds(1);
    ASSERT_OK(store().Begin(stuck));
  }
  clock_.Advance(absl::Seconds(2));
  for (int i = 0; i < 6; ++i) {
    ASSERT_OK(store().Begin(BeginOf("working-" + std::to_string(i))));
  }
  BeginCommand neighbour = BeginOf("done-100");
  neighbour.id.name_space = "payments-eu";
  ASSERT_OK(store().Begin(neighbour));

  auto list_all = [&](ListQuery query) {
    std::vector<std::string> keys;
    for (int pages = 0; pages < 100; ++pages) {
      absl::StatusOr<ListPage> page = store().List(query);
      EXPECT_OK(page);
      if (!page.ok()) break;
      EXPECT_LE(page->keys.size(), query.page_size);
      for (const KeyListing& k : page->keys) keys.push_back(k.key);
      if (page->next_page_token.empty()) break;
      query.page_token = page->next_page_token;
    }
    return keys;
  };
  ListQuery all{"payments", KeyState::kAbsent, false, "", 7};
  std::vector<std::string> everything = list_all(all);
  EXPECT_EQ(everything.size(), 35u);
  EXPECT_TRUE(std::is_sorted(everything.begin(), everything.end()));
  EXPECT_EQ(std::set<std::string>(everything.begin(), everything.end()).size(),
            35u);

  ListQuery completed{"payments", KeyState::kCompleted, false, "", 10};
  EXPECT_EQ(list_all(completed).size(), 25u);
  ListQuery stuck{"payments", KeyState::kInProgress, true, "", 3};
  std::vector<std::string> stuck_keys = list_all(stuck);
  ASSERT_EQ(stuck_keys.size(), 4u);
  EXPECT_EQ(stuck_keys.front(), "stuck-0");
  // Lapsed by the store's clock (a fake one here), and said so in every
  // snapshot; a key whose lease runs is not.
  ASSERT_OK_AND_ASSIGN(ListPage stuck_page, store().List(stuck));
  for (const KeyListing& k : stuck_page.keys) {
    EXPECT_TRUE(k.snapshot.lease_lapsed) << k.key;
  }
  ASSERT_OK_AND_ASSIGN(KeySnapshot lapsed,
                       store().Lookup({"payments", "stuck-0"}));
  EXPECT_TRUE(lapsed.lease_lapsed);
  ASSERT_OK_AND_ASSIGN(KeySnapshot running,
                       store().Lookup({"payments-eu", "done-100"}));
  EXPECT_EQ(running.state, KeyState::kInProgress);
  EXPECT_FALSE(running.lease_lapsed);

  ASSERT_OK_AND_ASSIGN(auto counts, store().CountKeys(""));
  EXPECT_EQ(counts["payments"].completed, 25u);
  EXPECT_EQ(counts["payments"].in_progress, 10u);
  EXPECT_EQ(counts["payments"].lease_lapsed, 4u);
  EXPECT_EQ(counts["payments-eu"].in_progress, 1u);
  ASSERT_OK_AND_ASSIGN(auto one, store().CountKeys("payments-eu"));
  EXPECT_EQ(one.size(), 1u);
  EXPECT_GT(store().Stats().estimated_keys, 0u);
}

TEST_P(StoreConformanceTest, ListPagesFollowKeyOrderWhenKeysPrefixOthers) {
  for (const char* key : {"k2", "k10", "k1"}) {
    ASSERT_OK(store().Begin(BeginOf(key)).status());
  }
  std::vector<std::string> seen;
  ListQuery query;
  query.name_space = "payments";
  query.page_size = 1;
  do {
    ASSERT_OK_AND_ASSIGN(ListPage page, store().List(query));
    for (const KeyListing& listed : page.keys) seen.push_back(listed.key);
    query.page_token = page.next_page_token;
  } while (!query.page_token.empty() && seen.size() < 10);
  EXPECT_EQ(seen, (std::vector<std::string>{"k1", "k10", "k2"}));
}

// AIP-158: the last page carries no token, also when the keys after a full
// page do not match the query's filter.
TEST_P(StoreConformanceTest, TheLastPageHasNoNextPageToken) {
  ListQuery query;
  query.name_space = "payments";
  query.page_size = 2;
  ASSERT_OK_AND_ASSIGN(ListPage empty, store().List(query));
  EXPECT_TRUE(empty.keys.empty());
  EXPECT_EQ(empty.next_page_token, "");

  for (const char* key : {"a1", "a2", "a3", "a4"}) {
    ASSERT_OK_AND_ASSIGN(BeginResult b, store().Begin(BeginOf(key)));
    ASSERT_OK(store().Complete(
        {{"payments", key}, b.token, Created(), std::nullopt}));
  }
  ASSERT_OK_AND_ASSIGN(ListPage first, store().List(query));
  ASSERT_EQ(first.keys.size(), 2u);
  EXPECT_EQ(first.next_page_token, "a2");
  query.page_token = first.next_page_token;
  ASSERT_OK_AND_ASSIGN(ListPage last, store().List(query));
  ASSERT_EQ(last.keys.size(), 2u);
  EXPECT_EQ(last.keys.back().key, "a4");
  EXPECT_EQ(last.next_page_token, "") << "exactly two pages of two keys";

  // Keys in another state follow the completed ones: a full page of
  // completed keys is still the last.
  for (const char* key : {"b1", "b2"}) ASSERT_OK(store().Begin(BeginOf(key)));
  query.page_token = "a2";
  query.state = KeyState::kCompleted;
  ASSERT_OK_AND_ASSIGN(ListPage filtered, store().List(query));
  ASSERT_EQ(filtered.keys.size(), 2u);
  EXPECT_EQ(filtered.next_page_token, "");
}

TEST_P(StoreConformanceTest, PeekBeginAnswersOnlyWhatNeedsNoWrite) {
  EXPECT_FALSE(
      store().PeekBegin(BeginOf("k1"), nullptr).has_value());  // Absent.
  BeginCommand holder = BeginOf("k1", "fp", "owner-a");
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(holder));
  if (!GetParam().peeks) {
    // Never answers, so never answers wrongly; Begin does the work.
    EXPECT_FALSE(store().PeekBegin(BeginOf("k1"), nullptr).has_value());
    EXPECT_FALSE(
        store().PeekBegin(BeginOf("k1", "other"), nullptr).has_value());
    return;
  }
  std::optional<absl::StatusOr<BeginResult>> busy =
      store().PeekBegin(BeginOf("k1"), nullptr);
  ASSERT_TRUE(busy.has_value());
  ASSERT_OK(*busy);
  EXPECT_EQ((*busy)->outcome, BeginOutcome::kInProgress);
  EXPECT_FALSE(
      store().PeekBegin(holder, nullptr).has_value());  // Same owner: writes.
  std::optional<absl::StatusOr<BeginResult>> other =
      store().PeekBegin(BeginOf("k1", "other"), nullptr);
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ((**other).outcome, BeginOutcome::kMismatch);
  ASSERT_OK(store().Complete(
      {{"payments", "k1"}, begun.token, Created(), std::nullopt}));
  std::optional<absl::StatusOr<BeginResult>> replay =
      store().PeekBegin(BeginOf("k1"), nullptr);
  ASSERT_TRUE(replay.has_value());
  EXPECT_EQ((**replay).outcome, BeginOutcome::kCompleted);
  EXPECT_EQ((**replay).result, Created());
  clock_.Advance(absl::Hours(25));  // Expired: acquiring writes.
  EXPECT_FALSE(store().PeekBegin(BeginOf("k1"), nullptr).has_value());
  // Peeking never changed anything.
  ASSERT_OK_AND_ASSIGN(KeySnapshot seen, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(seen.state, KeyState::kAbsent);
}

// A hint says what a peek saw; by the time its Begin runs, another may
// have changed the key. A store must never act on a stale one.
TEST_P(StoreConformanceTest, StalePeekHintsAreNeverTrusted) {
  BeginCommand late = BeginOf("k1", "fp", "owner-b");
  EXPECT_FALSE(store().PeekBegin(late, &late.hint).has_value());  // Absent.
  ASSERT_OK_AND_ASSIGN(BeginResult first,
                       store().Begin(BeginOf("k1", "fp", "owner-a")));
  ASSERT_EQ(first.outcome, BeginOutcome::kAcquired);
  ASSERT_OK_AND_ASSIGN(BeginResult busy, store().Begin(late));
  EXPECT_EQ(busy.outcome, BeginOutcome::kInProgress);

  ASSERT_OK(store().Complete(
      {{"payments", "k1"}, first.token, Created(), std::nullopt}));
  ASSERT_OK_AND_ASSIGN(BeginResult replay, store().Begin(late));
  EXPECT_EQ(replay.outcome, BeginOutcome::kCompleted);
  EXPECT_EQ(replay.result, Created());

  // Across a restart, and with another fingerprint.
  BeginCommand other = BeginOf("k2", "fp-2");
  EXPECT_FALSE(store().PeekBegin(other, &other.hint).has_value());
  ASSERT_OK(store().Begin(BeginOf("k2")));
  harness_->Reopen();
  ASSERT_OK_AND_ASSIGN(BeginResult mismatch, store().Begin(other));
  EXPECT_EQ(mismatch.outcome, BeginOutcome::kMismatch);
}

TEST_P(StoreConformanceTest, NamespacesNeverInteract) {
  BeginCommand a = BeginOf("same-key");
  BeginCommand b = BeginOf("same-key");
  b.id.name_space = "payment";  // A prefix of the other namespace.
  BeginCommand c = BeginOf("key");
  c.id.name_space = "payments\x01same-";
  ASSERT_OK_AND_ASSIGN(BeginResult first, store().Begin(a));
  ASSERT_OK_AND_ASSIGN(BeginResult second, store().Begin(b));
  ASSERT_OK_AND_ASSIGN(BeginResult third, store().Begin(c));
  EXPECT_EQ(first.outcome, BeginOutcome::kAcquired);
  EXPECT_EQ(second.outcome, BeginOutcome::kAcquired);
  EXPECT_EQ(third.outcome, BeginOutcome::kAcquired);
}

TEST_P(StoreConformanceTest, LookupHasNoSideEffects) {
  ASSERT_OK_AND_ASSIGN(KeySnapshot absent, store().Lookup({"payments", "k1"}));
  EXPECT_EQ(absent.state, KeyState::kAbsent);
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(KeySnapshot seen, store().Lookup({"payments", "k1"}));
    EXPECT_EQ(seen.state, KeyState::kInProgress);
    EXPECT_EQ(seen.attempt, 1u);
    EXPECT_EQ(seen.lease_expires_at, begun.lease_expires_at);
  }
}

TEST_P(StoreConformanceTest, ConcurrentBeginsOnOneKeyAcquireExactlyOnce) {
  constexpr int kCallers = 64;
  std::atomic<int> acquired{0}, in_progress{0}, failed{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      absl::StatusOr<BeginResult> begun =
          store().Begin(BeginOf("hot", "fp", "caller-" + std::to_string(i)));
      if (!begun.ok()) {
        failed++;
      } else if (begun->outcome == BeginOutcome::kAcquired) {
        acquired++;
      } else if (begun->outcome == BeginOutcome::kInProgress) {
        in_progress++;
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(acquired.load(), 1);
  EXPECT_EQ(in_progress.load(), kCallers - 1);
  EXPECT_EQ(failed.load(), 0);
}

TEST_P(StoreConformanceTest, TokensIncreaseAcrossKeysAndRestarts) {
  uint64_t last = 0;
  std::map<std::string, uint64_t> last_of_key;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 5; ++i) {
      const std::string key = "r" + std::to_string(i);
      ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf(key)));
      ASSERT_EQ(begun.outcome, BeginOutcome::kAcquired);
      EXPECT_GT(begun.token, last_of_key[key]) << key;
      if (GetParam().tokens_grow_across_keys) {
        EXPECT_GT(begun.token, last);
      }
      last = std::max(last, begun.token);
      last_of_key[key] = begun.token;
      ASSERT_OK(store().Release({{"payments", key}, begun.token}));
    }
    harness_->Reopen();
  }
  // Also for a key whose record is gone (expired and compacted or not).
  clock_.Advance(absl::Hours(48));
  ASSERT_OK_AND_ASSIGN(BeginResult reborn, store().Begin(BeginOf("r0")));
  EXPECT_GT(reborn.token, last_of_key["r0"]);
  if (GetParam().tokens_grow_across_keys) {
    EXPECT_GT(reborn.token, last);
  }
}

TEST_P(StoreConformanceTest, CompletedResultSurvivesRestart) {
  ASSERT_OK_AND_ASSIGN(BeginResult begun, store().Begin(BeginOf("k1")));
  ASSERT_OK(store().Complete(
      {{"payments", "k1"}, begun.token, Created(), std::nullopt}));
  harness_->Reopen();
  ASSERT_OK_AND_ASSIGN(BeginResult replay, store().Begin(BeginOf("k1")));
  EXPECT_EQ(replay.outcome, BeginOutcome::kCompleted);
  EXPECT_EQ(replay.result, Created());
}

}  // namespace
}  // namespace idem::storage
