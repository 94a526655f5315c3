#include "storage/record_codec.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace idem::storage {
namespace {

TEST(RecordCodecTest, RecordRoundTripsAndExpiryIsReadableWithoutParsing) {
  Record record;
  record.set_state(Record::STATE_COMPLETED);
  record.set_token(42);
  record.set_expires_at_us(1'800'000'000'123'456);
  record.mutable_result()->set_body(std::string("\0binary\xff", 8));
  const std::string value = EncodeRecord(record);
  EXPECT_EQ(PeekExpiryMicros(value), 1'800'000'000'123'456);
  ASSERT_OK_AND_ASSIGN(Record decoded, DecodeRecord(value));
  EXPECT_EQ(decoded.SerializeAsString(), record.SerializeAsString());
}

TEST(RecordCodecTest, MalformedValuesAreDataLossNotCrashes) {
  for (const std::string& bad : {std::string(), std::string("\x01", 1),
                                 std::string("\x02"
                                             "12345678"),
                                 std::string("\x01"
                                             "12345678"
                                             "\xff\xff\xff",
                                             12)}) {
    EXPECT_STATUS_CODE(DecodeRecord(bad), absl::StatusCode::kDataLoss);
  }
  EXPECT_EQ(PeekExpiryMicros("short"), std::nullopt);
}

TEST(RecordCodecTest, NamespacePrefixCoversExactlyItsKeys) {
  const std::string prefix = NamespacePrefix("pay");
  EXPECT_EQ(EncodeKey({"pay", "k"}).rfind(prefix, 0), 0u);
  EXPECT_NE(EncodeKey({"payments", "k"}).rfind(prefix, 0), 0u);
  EXPECT_NE(EncodeKey({"pa", "yk"}), EncodeKey({"pay", "k"}));
  EXPECT_TRUE(IsRecordKey(EncodeKey({"pay", "k"})));
  std::optional<KeyId> decoded = DecodeKey(EncodeKey({"pay", "k 1"}));
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(decoded->name_space, "pay");
  EXPECT_EQ(decoded->key, "k 1");
  EXPECT_FALSE(DecodeKey("m/token_reserved").has_value());
  EXPECT_FALSE(DecodeKey("knoseparator").has_value());
  EXPECT_FALSE(IsRecordKey("m/token_reserved"));
}

}  // namespace
}  // namespace idem::storage
