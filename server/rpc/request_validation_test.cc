#include "server/rpc/request_validation.h"

#include <cstddef>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace idem::server {
namespace {

v1::BeginRequest ValidBeginRequest() {
  v1::BeginRequest request;
  request.set_namespace_("payments/POST /v1/charges");
  request.set_key("8b0c6f0e-2f7e-4b1a-9a8e-3f2d1c0b9a87");
  request.set_fingerprint("fp");
  return request;
}

void ExpectRejected(const absl::Status& status, absl::StatusCode code,
                    const std::string& mentions) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_NE(status.message().find(mentions), std::string::npos) << status;
}

TEST(ValidateBeginTest, AppliesDefaults) {
  Limits limits;
  ASSERT_OK_AND_ASSIGN(ValidBegin valid,
                       ValidateBegin(ValidBeginRequest(), limits));
  EXPECT_EQ(valid.command.lease, absl::Seconds(30));
  EXPECT_EQ(valid.command.retention, absl::Hours(24));
  EXPECT_EQ(valid.wait, absl::ZeroDuration());
  EXPECT_EQ(valid.command.fingerprint, "fp");
}

TEST(ValidateBeginTest, RequestIsFingerprintedWithSha256) {
  v1::BeginRequest request = ValidBeginRequest();
  request.clear_fingerprint();
  request.set_request("abc");
  ASSERT_OK_AND_ASSIGN(ValidBegin valid, ValidateBegin(request, Limits()));
  // SHA-256("abc"), FIPS 180-2 test vector.
  const unsigned char expected[] = {
      0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
      0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
      0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
  EXPECT_EQ(valid.command.fingerprint,
            std::string(reinterpret_cast<const char*>(expected), 32));
}

TEST(ValidateBeginTest, AcceptsTheBoundaries) {
  v1::BeginRequest request = ValidBeginRequest();
  request.set_namespace_(std::string(128, '~'));
  request.set_key(std::string(255, ' '));
  request.set_fingerprint(std::string(64, '\xff'));
  request.set_owner(std::string(128, 'o'));
  request.mutable_lease()->set_seconds(1);
  request.mutable_retention()->set_seconds(int64_t{30} * 24 * 3600);
  request.mutable_wait()->set_seconds(300);
  EXPECT_OK(ValidateBegin(request, Limits()));
  request.mutable_retention()->set_seconds(1);
  request.mutable_lease()->set_seconds(3600);
  EXPECT_OK(ValidateBegin(request, Limits()));
}

TEST(ValidateBeginTest, RejectsEachBrokenFieldNamingIt) {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  struct Case {
    std::function<void(v1::BeginRequest&)> breaks;
    std::string mentions;
  };
  const std::vector<Case> cases = {
      {[](auto& r) { r.clear_namespace_(); }, "namespace must be 1 to 128"},
      {[](auto& r) { r.set_namespace_(std::string(129, 'n')); },
       "namespace must be 1 to 128"},
      {[](auto& r) { r.set_namespace_("tab\there"); },
       "namespace must be printable"},
      {[](auto& r) { r.clear_key(); }, "key must be 1 to 255"},
      {[](auto& r) { r.set_key(std::string(256, 'k')); },
       "key must be 1 to 255"},
      {[](auto& r) { r.set_key("caf\xc3\xa9"); }, "byte 3 is 0xc3"},
      {[](auto& r) { r.set_request("body"); }, "not both"},
      {[](auto& r) { r.set_fingerprint(std::string(65, 'f')); },
       "the limit is 64"},
      {[](auto& r) { r.set_owner(std::string(129, 'o')); }, "owner"},
      {[](auto& r) { r.mutable_lease()->set_seconds(0); },
       "lease must be between"},
      {[](auto& r) { r.mutable_lease()->set_nanos(999'999'999); },
       "lease must be between 1s"},
      {[](auto& r) { r.mutable_lease()->set_seconds(3601); }, "lease"},
      {[](auto& r) { r.mutable_lease()->set_seconds(-5); }, "lease"},
      {[](auto& r) {
         r.mutable_lease()->set_seconds(5);
         r.mutable_lease()->set_nanos(-1);
       },
       "malformed duration"},
      {[](auto& r) { r.mutable_retention()->set_seconds(30 * 24 * 3600 + 1); },
       "retention must be between 1s and 720h"},
      {[](auto& r) { r.mutable_retention(); }, "retention"},
      {[](auto& r) { r.mutable_wait()->set_seconds(301); }, "wait"},
      {[](auto& r) { r.mutable_wait()->set_seconds(-1); }, "wait"},
  };
  for (const Case& c : cases) {
    v1::BeginRequest request = ValidBeginRequest();
    c.breaks(request);
    ExpectRejected(ValidateBegin(request, Limits()).status(), kInvalid,
                   c.mentions);
  }
}

TEST(ValidateCompleteTest, SizesAreResourceExhaustedAndTokenIsRequired) {
  Limits limits;
  v1::CompleteRequest request;
  request.set_namespace_("ns");
  request.set_key("k");
  request.set_token(9);
  request.mutable_result()->set_code(201);
  request.mutable_result()->set_body(std::string(limits.max_body_bytes, 'b'));
  (*request.mutable_result()->mutable_metadata())["content-type"] = "x";
  ASSERT_OK_AND_ASSIGN(storage::CompleteCommand command,
                       ValidateComplete(request, limits));
  EXPECT_EQ(command.result.code, 201);
  EXPECT_EQ(command.result.metadata.at("content-type"), "x");
  EXPECT_FALSE(command.retention.has_value());

  v1::CompleteRequest big = request;
  big.mutable_result()->mutable_body()->push_back('!');
  ExpectRejected(ValidateComplete(big, limits).status(),
                 absl::StatusCode::kResourceExhausted,
                 "result.body is 1048577 bytes; the limit is 1048576");
  v1::CompleteRequest many = request;
  for (int i = 0; i < 64; ++i) {
    (*many.mutable_result()->mutable_metadata())["h" + std::to_string(i)] = "";
  }
  ExpectRejected(ValidateComplete(many, limits).status(),
                 absl::StatusCode::kResourceExhausted, "65 entries");
  v1::CompleteRequest long_value = request;
  (*long_value.mutable_result()->mutable_metadata())["h"] =
      std::string(8193, 'v');
  ExpectRejected(ValidateComplete(long_value, limits).status(),
                 absl::StatusCode::kResourceExhausted, "8193 bytes");
  v1::CompleteRequest no_token = request;
  no_token.clear_token();
  ExpectRejected(ValidateComplete(no_token, limits).status(),
                 absl::StatusCode::kInvalidArgument, "token is required");
  v1::CompleteRequest retention = request;
  retention.mutable_retention()->set_seconds(0);
  ExpectRejected(ValidateComplete(retention, limits).status(),
                 absl::StatusCode::kInvalidArgument, "retention");
}

TEST(ValidateOtherRequestsTest, CheckKeysTokensAndLeases) {
  v1::ReleaseRequest release;
  release.set_namespace_("ns");
  release.set_key("k");
  ExpectRejected(ValidateRelease(release).status(),
                 absl::StatusCode::kInvalidArgument, "token");
  release.set_token(3);
  EXPECT_OK(ValidateRelease(release));

  v1::ExtendRequest extend;
  extend.set_namespace_("ns");
  extend.set_key("k");
  extend.set_token(3);
  ASSERT_OK_AND_ASSIGN(storage::ExtendCommand command,
                       ValidateExtend(extend, Limits()));
  EXPECT_EQ(command.lease, absl::Seconds(30));
  extend.mutable_lease()->set_seconds(7200);
  ExpectRejected(ValidateExtend(extend, Limits()).status(),
                 absl::StatusCode::kInvalidArgument, "lease");

  v1::CheckpointRequest checkpoint;
  checkpoint.set_namespace_("ns");
  checkpoint.set_key("k");
  checkpoint.set_checkpoint(std::string(64 << 10, 'c'));
  ExpectRejected(ValidateCheckpoint(checkpoint).status(),
                 absl::StatusCode::kInvalidArgument, "token");
  checkpoint.set_token(3);
  EXPECT_OK(ValidateCheckpoint(checkpoint));
  checkpoint.mutable_checkpoint()->push_back('!');
  ExpectRejected(ValidateCheckpoint(checkpoint).status(),
                 absl::StatusCode::kResourceExhausted,
                 "checkpoint is 65537 bytes; the limit is 65536");

  v1::LookupRequest lookup;
  lookup.set_namespace_("ns");
  ExpectRejected(ValidateLookup(lookup).status(),
                 absl::StatusCode::kInvalidArgument, "key");
}

}  // namespace
}  // namespace idem::server
