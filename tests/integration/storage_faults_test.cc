// The real server on a disk that fills up: a size-limited tmpfs the test
// mounts (root only; skipped otherwise). What was acknowledged must survive,
// what could not be written must fail with UNAVAILABLE, health must say
// NOT_SERVING until space is back, and the server must recover by itself.
#include <httplib.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"

namespace idem {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr size_t kDiskBytes = size_t{24} << 20;
constexpr size_t kBallastBytes = size_t{6} << 20;
constexpr size_t kBodyBytes = size_t{256} << 10;
constexpr size_t kMinFreeBytes = size_t{4} << 20;

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  return context;
}

class StorageFaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    disk_ = dir_.Sub("disk");
    std::filesystem::create_directory(disk_);
    const std::string size = absl::StrCat("size=", kDiskBytes);
    if (mount("idem-test", disk_.c_str(), "tmpfs", 0, size.c_str()) != 0) {
      GTEST_SKIP() << "cannot mount a small tmpfs (" << std::strerror(errno)
                   << "); this test needs root, as in CI";
    }
    mounted_ = true;
    // Space to give back once the disk is full.
    std::ofstream(disk_ + "/ballast") << std::string(kBallastBytes, 'b');
    server_ = std::make_unique<testing::ServerProcess>(
        std::vector<std::string>{
            absl::StrCat("--min-free-disk-bytes=", kMinFreeBytes)},
        disk_ + "/data");
    ASSERT_TRUE(server_->Start().ok()) << server_->log();
    Connect();
  }

  void TearDown() override {
    server_.reset();  // Killed before its disk goes away.
    if (mounted_) umount2(disk_.c_str(), MNT_DETACH);
  }

  void Connect() {
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Idempotency::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }

  // Begin + Complete of `key` with `body`; the first failing status.
  grpc::Status Store(const std::string& key, const std::string& body) {
    v1::BeginRequest begin;
    begin.set_namespace_("faults");
    begin.set_key(key);
    begin.set_fingerprint("fp");
    v1::BeginResponse begun;
    grpc::Status status = stub_->Begin(Context().get(), begin, &begun);
    if (!status.ok()) return status;
    EXPECT_EQ(begun.outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
    v1::CompleteRequest complete;
    complete.set_namespace_("faults");
    complete.set_key(key);
    complete.set_token(begun.lease().token());
    complete.mutable_result()->set_body(body);
    v1::CompleteResponse completed;
    return stub_->Complete(Context().get(), complete, &completed);
  }

  void ExpectStored(const std::string& key, const std::string& body) {
    v1::LookupRequest request;
    request.set_namespace_("faults");
    request.set_key(key);
    v1::LookupResponse response;
    ASSERT_TRUE(stub_->Lookup(Context().get(), request, &response).ok());
    EXPECT_EQ(response.state(), v1::LookupResponse::STATE_COMPLETED) << key;
    EXPECT_TRUE(response.result().body() == body) << key;
  }

  // Polls the health service until it reports `want` (or 10 s pass).
  bool AwaitHealth(HealthCheckResponse::ServingStatus want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      HealthCheckResponse response;
      if (health_->Check(Context().get(), HealthCheckRequest(), &response)
              .ok() &&
          response.status() == want) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  // GET /healthz on the metrics port: its HTTP status.
  int HttpHealth() {
    httplib::Client http("127.0.0.1", server_->metrics_port());
    const auto response = http.Get("/healthz");
    return response ? response->status : -1;
  }

  testing::TempDir dir_;
  std::string disk_;
  bool mounted_ = false;
  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Idempotency::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

std::string BodyFor(int i) {
  std::string body(kBodyBytes, static_cast<char>('a' + i % 26));
  body.replace(0, 16, absl::StrCat("result ", i, "       ").substr(0, 16));
  return body;
}

TEST_F(StorageFaultsTest, AFullDiskFailsWritesNotAcknowledgedOnes) {
  std::map<std::string, std::string> acknowledged;
  grpc::Status failure;
  for (int i = 0; i < 1000 && failure.ok(); ++i) {
    const std::string key = absl::StrCat("k", i);
    failure = Store(key, BodyFor(i));
    if (failure.ok()) acknowledged[key] = BodyFor(i);
  }
  ASSERT_FALSE(failure.ok()) << "a 24 MiB disk never filled up";
  ASSERT_GT(acknowledged.size(), 10u);
  EXPECT_EQ(failure.error_code(), grpc::StatusCode::UNAVAILABLE)
      << failure.error_message();
  EXPECT_NE(failure.error_message().find("the data disk is full"),
            std::string::npos)
      << failure.error_message();

  EXPECT_TRUE(AwaitHealth(HealthCheckResponse::NOT_SERVING)) << server_->log();
  EXPECT_NE(server_->log().find("storage_unhealthy"), std::string::npos);
  EXPECT_EQ(HttpHealth(), 503);  // The HTTP probe agrees.
  // Replays keep working while writes cannot.
  for (const auto& [key, body] : acknowledged) ExpectStored(key, body);
  const grpc::Status refused = Store("while-full", "x");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);

  // Space comes back: the server recovers by itself and writes again.
  std::filesystem::remove(disk_ + "/ballast");
  ASSERT_TRUE(AwaitHealth(HealthCheckResponse::SERVING)) << server_->log();
  EXPECT_NE(server_->log().find("storage_recovered"), std::string::npos);
  EXPECT_EQ(HttpHealth(), 200);
  ASSERT_TRUE(Store("after-recovery", "recovered").ok());
  acknowledged["after-recovery"] = "recovered";

  // Everything acknowledged survives a crash on that disk.
  server_->Kill();
  ASSERT_TRUE(server_->Start().ok()) << server_->log();
  Connect();
  for (const auto& [key, body] : acknowledged) ExpectStored(key, body);
}

}  // namespace
}  // namespace idem
