#include "server/ops/log.h"

#include "gtest/gtest.h"

namespace idem::server {
namespace {

TEST(LogTest, FormatsKeyValuePairsAndQuotesWhereNeeded) {
  EXPECT_EQ(FormatLogLine(LogLevel::kInfo, "lease_takeover",
                          {{"ns", "payments/POST /v1/charges"},
                           {"key", "k1"},
                           {"token", "7"},
                           {"reason", "say \"hi\"\nnow"},
                           {"empty", ""}}),
            "level=info event=lease_takeover "
            "ns=\"payments/POST /v1/charges\" key=k1 token=7 "
            "reason=\"say \\\"hi\\\"\\nnow\" empty=\"\"");
}

TEST(LogTest, ParsesLevels) {
  LogLevel level = LogLevel::kInfo;
  EXPECT_TRUE(ParseLogLevel("warning", &level));
  EXPECT_EQ(level, LogLevel::kWarning);
  EXPECT_FALSE(ParseLogLevel("loud", &level));
  EXPECT_EQ(level, LogLevel::kWarning);
}

}  // namespace
}  // namespace idem::server
