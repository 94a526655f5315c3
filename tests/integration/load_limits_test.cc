// Load beyond the limits: many connections each parking a Begin. The server
// must refuse what is over --max-parked-waiters with RESOURCE_EXHAUSTED,
// answer everything it took, keep its memory bounded and keep serving.
#include <sys/resource.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/server_process.h"

namespace idem {
namespace {

constexpr int kMaxParked = 1000;
constexpr int kConnections = 2000;

// The server's memory bound under this load; AddressSanitizer (whose build
// runs a sanitized server too) roughly quadruples it.
#if defined(__SANITIZE_ADDRESS__)
constexpr int64_t kMaxServerRss = int64_t{1} << 30;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr int64_t kMaxServerRss = int64_t{1} << 30;
#else
constexpr int64_t kMaxServerRss = int64_t{300} << 20;
#endif
#else
constexpr int64_t kMaxServerRss = int64_t{300} << 20;
#endif

// Resident memory of a process, from /proc, in bytes (0 if unknown).
int64_t ResidentBytes(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, "VmRSS:")) {
      int64_t kib = 0;
      if (!absl::SimpleAtoi(
              absl::StripSuffix(absl::StripAsciiWhitespace(rest), " kB"),
              &kib)) {
        return 0;
      }
      return kib << 10;
    }
  }
  return 0;
}

v1::BeginRequest Begin(const std::string& key, absl::Duration wait) {
  v1::BeginRequest request;
  request.set_namespace_("load");
  request.set_key(key);
  request.set_fingerprint("fp");
  request.mutable_lease()->set_seconds(60);
  request.mutable_wait()->set_seconds(absl::ToInt64Seconds(wait));
  return request;
}

TEST(LoadLimitsTest, ParkedWaitersAreBoundedAndEveryCallIsAnswered) {
  // Each connection costs a descriptor on both sides.
  rlimit files;
  getrlimit(RLIMIT_NOFILE, &files);
  files.rlim_cur = files.rlim_max;
  setrlimit(RLIMIT_NOFILE, &files);
  if (files.rlim_cur < 4 * kConnections) {
    GTEST_SKIP() << "needs " << 4 * kConnections << " file descriptors";
  }

  testing::ServerProcess server(
      {absl::StrCat("--max-parked-waiters=", kMaxParked)});
  ASSERT_TRUE(server.Start().ok()) << server.log();
  const int64_t idle_rss = ResidentBytes(server.pid());

  auto holder_stub = server.NewStub();
  v1::BeginResponse held;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(
        holder_stub->Begin(&context, Begin("hot", absl::ZeroDuration()), &held)
            .ok());
    ASSERT_EQ(held.outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  }

  // One connection per caller (distinct channel arguments), each parking a
  // Begin on the held key.
  struct Caller {
    std::unique_ptr<v1::Idempotency::Stub> stub;
    grpc::ClientContext context;
    v1::BeginRequest request;
    v1::BeginResponse response;
  };
  // Shared with the callbacks, so that none can outlive what it touches,
  // however the test ends.
  struct Calls {
    std::vector<std::unique_ptr<Caller>> callers;
    std::atomic<int> refused{0}, completed{0}, other{0}, answered{0};
  };
  auto calls = std::make_shared<Calls>();
  std::vector<std::unique_ptr<Caller>>& callers = calls->callers;
  std::atomic<int>& refused = calls->refused;
  std::atomic<int>& completed = calls->completed;
  std::atomic<int>& other = calls->other;
  std::atomic<int>& answered = calls->answered;
  struct CancelOnExit {
    std::shared_ptr<Calls> calls;
    ~CancelOnExit() {
      for (auto& caller : calls->callers) caller->context.TryCancel();
    }
  } cancel_on_exit{calls};
  for (int i = 0; i < kConnections; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("idem.test.connection", i);
    auto caller = std::make_unique<Caller>();
    caller->stub = v1::Idempotency::NewStub(grpc::CreateCustomChannel(
        server.address(), grpc::InsecureChannelCredentials(), args));
    caller->context.set_deadline(
        absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    caller->request = Begin("hot", absl::Seconds(30));
    Caller* raw = caller.get();
    raw->stub->async()->Begin(
        &raw->context, &raw->request, &raw->response,
        [raw, calls](grpc::Status status) {
          if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
              status.error_message().find("--max-parked-waiters") !=
                  std::string::npos) {
            ++calls->refused;
          } else if (status.ok() && raw->response.outcome() ==
                                        v1::BeginResponse::OUTCOME_COMPLETED) {
            ++calls->completed;
          } else {
            ++calls->other;
          }
          ++calls->answered;
        });
    callers.push_back(std::move(caller));
  }

  // Whatever is over the limit is refused at once; the rest waits.
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (refused.load() < kConnections - kMaxParked && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(refused.load(), kConnections - kMaxParked);
  EXPECT_EQ(completed.load(), 0);
  const int64_t loaded_rss = ResidentBytes(server.pid());
  std::printf("server RSS: %.1f MiB idle, %.1f MiB with %d connections\n",
              idle_rss / 1048576.0, loaded_rss / 1048576.0, kConnections);
  EXPECT_LT(loaded_rss, kMaxServerRss);

  // The server still serves other keys while full of waiters.
  {
    grpc::ClientContext context;
    v1::BeginResponse other_key;
    ASSERT_TRUE(
        holder_stub
            ->Begin(&context, Begin("cold", absl::ZeroDuration()), &other_key)
            .ok());
    EXPECT_EQ(other_key.outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  }

  // Completing the key answers every parked waiter with the result.
  {
    v1::CompleteRequest complete;
    complete.set_namespace_("load");
    complete.set_key("hot");
    complete.set_token(held.lease().token());
    complete.mutable_result()->set_body("done");
    v1::CompleteResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(holder_stub->Complete(&context, complete, &response).ok());
  }
  deadline = absl::Now() + absl::Seconds(30);
  while (answered.load() < kConnections && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(completed.load(), kMaxParked);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(answered.load(), kConnections);
}

}  // namespace
}  // namespace idem
