#include "storage/rocksdb/recent_records.h"

#include <string>

#include "gtest/gtest.h"

namespace idem::storage {
namespace {

Record WithToken(uint64_t token) {
  Record record;
  record.set_token(token);
  return record;
}

TEST(RecentRecordsTest, RemembersWhatTheBatchesLeft) {
  RecentRecords recent(100, 1 << 20);
  recent.StartBatch(2);
  EXPECT_EQ(recent.Find("a"), nullptr);
  recent.Remember("a", WithToken(1), 10);
  recent.Remember("gone", std::nullopt, 0);
  recent.StartBatch(3);
  recent.Remember("a", WithToken(2), 10);
  const RecentRecords::Entry* a = recent.Find("a");
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->record.has_value());
  EXPECT_EQ(a->record->token(), 2u);
  const RecentRecords::Entry* gone = recent.Find("gone");
  ASSERT_NE(gone, nullptr);
  EXPECT_FALSE(gone->record.has_value());
  EXPECT_EQ(recent.size(), 2u);
}

TEST(RecentRecordsTest, HintsHoldOnlyWhileEveryLaterBatchIsRemembered) {
  RecentRecords recent(/*max_entries=*/2, 1 << 20);
  EXPECT_FALSE(recent.AbsentStill(0));  // No hint.
  EXPECT_TRUE(recent.AbsentStill(1));   // Nothing written since opening.
  recent.StartBatch(2);
  recent.Remember("a", WithToken(1), 1);
  recent.Remember("b", WithToken(2), 1);
  recent.Remember("c", WithToken(3), 1);
  recent.StartBatch(3);  // Over the bound: batch 2 becomes the previous.
  EXPECT_TRUE(recent.AbsentStill(1));
  recent.Remember("d", WithToken(4), 1);
  recent.Remember("e", WithToken(5), 1);
  recent.Remember("f", WithToken(6), 1);
  recent.StartBatch(4);  // Batch 2 is dropped: a hint from 1 is too old.
  EXPECT_FALSE(recent.AbsentStill(1));
  EXPECT_TRUE(recent.AbsentStill(2));
  EXPECT_EQ(recent.Find("a"), nullptr);
  ASSERT_NE(recent.Find("d"), nullptr);
}

TEST(RecentRecordsTest, AKeyTouchedAgainSurvivesItsOldGeneration) {
  RecentRecords recent(/*max_entries=*/1, 1 << 20);
  recent.StartBatch(2);
  recent.Remember("a", WithToken(1), 1);
  recent.Remember("b", WithToken(2), 1);
  recent.StartBatch(3);
  ASSERT_NE(recent.Find("a"), nullptr);  // Touched by batch 3.
  recent.Remember("c", WithToken(3), 1);
  recent.StartBatch(4);  // Drops batch 2's generation, not "a".
  const RecentRecords::Entry* a = recent.Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->record->token(), 1u);
  EXPECT_EQ(recent.Find("b"), nullptr);
}

TEST(RecentRecordsTest, BytesBoundTheMemoryToo) {
  RecentRecords recent(/*max_entries=*/1000, /*max_bytes=*/100);
  recent.StartBatch(2);
  recent.Remember("a", WithToken(1), 200);
  recent.StartBatch(3);
  recent.Remember("b", WithToken(2), 200);
  recent.StartBatch(4);
  EXPECT_EQ(recent.Find("a"), nullptr);
  EXPECT_NE(recent.Find("b"), nullptr);
}

TEST(RecentRecordsTest, ForgettingInvalidatesEveryEarlierHint) {
  RecentRecords recent(100, 1 << 20);
  recent.StartBatch(2);
  recent.Remember("a", WithToken(1), 1);
  recent.Forget(2);  // Batch 2's write failed.
  EXPECT_EQ(recent.Find("a"), nullptr);
  EXPECT_EQ(recent.size(), 0u);
  EXPECT_FALSE(recent.AbsentStill(1));
  EXPECT_TRUE(recent.AbsentStill(2));
}

}  // namespace
}  // namespace idem::storage
