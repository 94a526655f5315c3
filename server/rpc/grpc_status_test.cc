#include "server/rpc/grpc_status.h"

#include "gtest/gtest.h"

namespace idem::server {
namespace {

TEST(ToGrpcStatusTest, EveryCanonicalCodeMapsToTheSameGrpcCodeWithMessage) {
  for (int code = 0; code <= 16; ++code) {
    const auto absl_code = static_cast<absl::StatusCode>(code);
    const absl::Status status(absl_code, code == 0 ? "" : "why it failed");
    const grpc::Status mapped = ToGrpcStatus(status);
    EXPECT_EQ(static_cast<int>(mapped.error_code()), code) << status;
    if (code != 0) {
      EXPECT_EQ(mapped.error_message(), "why it failed");
    }
  }
}

TEST(ToGrpcStatusTest, UnknownCodesBecomeUnknown) {
  const grpc::Status mapped =
      ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(99), "odd"));
  EXPECT_EQ(mapped.error_code(), grpc::StatusCode::UNKNOWN);
}

}  // namespace
}  // namespace idem::server
