// Load beyond the limits: many connections each parking a Begin. The server
// must refuse what is over --max-parked-waiters with RESOURCE_EXHAUSTED,
// answer everything it took, keep its memory bounded and keep serving.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
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

// Resident memory of a process, from /proc, in bytes (0 if unknown): now
// (VmRSS) or at its peak (VmHWM).
int64_t ResidentBytes(pid_t pid, absl::string_view field = "VmRSS:") {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, field)) {
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
  if (files.rlim_cur < rlim_t{4} * kConnections) {
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
        [raw, calls](const grpc::Status& status) {
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

// A 10 KB BeginBatch naming one completed key 1,000 times made the server
// build a 1.6 GB reply (RSS 40 MB -> 3.1 GB; past 2 GiB it aborted in the
// serializer). The reply budget stops adding stored results at
// --max-reply-bytes and answers the rest RESOURCE_EXHAUSTED.
TEST(LoadLimitsTest, ABatchReplayingALargeResultIsBoundedByTheReplyBudget) {
  testing::ServerProcess server;
  ASSERT_TRUE(server.Start().ok()) << server.log();
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(-1);
  auto stub = v1::Idempotency::NewStub(grpc::CreateCustomChannel(
      server.address(), grpc::InsecureChannelCredentials(), arguments));

  v1::BeginResponse held;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(
        stub->Begin(&context, Begin("big", absl::ZeroDuration()), &held).ok());
  }
  // The largest result the default limits admit: 1 MiB body and 64
  // metadata values of 8 KiB.
  v1::CompleteRequest complete;
  complete.set_namespace_("load");
  complete.set_key("big");
  complete.set_token(held.lease().token());
  complete.mutable_result()->set_body(std::string(size_t{1} << 20, 'b'));
  for (int i = 0; i < 64; ++i) {
    (*complete.mutable_result()->mutable_metadata())[absl::StrCat("h", i)] =
        std::string(8192, 'm');
  }
  {
    grpc::ClientContext context;
    v1::CompleteResponse response;
    grpc::Status status = stub->Complete(&context, complete, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  const int64_t idle_rss = ResidentBytes(server.pid());

  v1::BeginBatchRequest batch;
  for (int i = 0; i < 1000; ++i) {
    *batch.add_requests() = Begin("big", absl::ZeroDuration());
    batch.mutable_requests(i)->clear_wait();
  }
  v1::BeginBatchResponse reply;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  grpc::Status status = stub->BeginBatch(&context, batch, &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(reply.entries_size(), 1000);
  int replayed = 0;
  int refused = 0;
  for (const v1::BeginBatchEntry& entry : reply.entries()) {
    if (entry.status().code() == 0) {
      EXPECT_EQ(entry.response().outcome(),
                v1::BeginResponse::OUTCOME_COMPLETED);
      EXPECT_EQ(entry.response().result().body().size(), size_t{1} << 20);
      ++replayed;
    } else {
      EXPECT_EQ(entry.status().code(),
                static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
      EXPECT_NE(entry.status().message().find("--max-reply-bytes"),
                std::string::npos)
          << entry.status().message();
      ++refused;
    }
  }
  const int64_t peak_rss = ResidentBytes(server.pid(), "VmHWM:");
  std::printf(
      "reply %.1f MiB: %d results replayed, %d refused; server RSS %.1f "
      "MiB before, peak %.1f MiB\n",
      reply.ByteSizeLong() / 1048576.0, replayed, refused, idle_rss / 1048576.0,
      peak_rss / 1048576.0);
  EXPECT_GT(replayed, 30);  // 64 MiB of 1.5 MiB results.
  EXPECT_GT(refused, 900);
  EXPECT_LE(reply.ByteSizeLong(), size_t{65} << 20);
  EXPECT_LT(peak_rss, kMaxServerRss + (int64_t{256} << 20));
  // Refusing a replay changed nothing: the key still replays alone.
  v1::BeginResponse again;
  grpc::ClientContext alone;
  ASSERT_TRUE(
      stub->Begin(&alone, Begin("big", absl::ZeroDuration()), &again).ok());
  EXPECT_EQ(again.outcome(), v1::BeginResponse::OUTCOME_COMPLETED);
}

// Under a low descriptor limit, 300 idle connections made a memtable
// switch fail with EMFILE; RocksDB keeps such a background error (Resume()
// cannot clear it), so every write failed until a restart. The store now
// reopens the database once descriptors are free again.
TEST(LoadLimitsTest, AStoreStarvedOfDescriptorsRecoversWhenTheyComeBack) {
  testing::ServerProcess server;
  ASSERT_TRUE(server.Start().ok()) << server.log();
  auto stub = server.NewStub();
  int completed = 0;
  std::vector<std::string> acknowledged;
  auto write = [&](const std::string& key) {
    v1::BeginResponse begun;
    grpc::ClientContext begin_context;
    begin_context.set_deadline(
        absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::BeginRequest request = Begin(key, absl::ZeroDuration());
    request.clear_wait();
    if (!stub->Begin(&begin_context, request, &begun).ok()) return false;
    v1::CompleteRequest complete;
    complete.set_namespace_("load");
    complete.set_key(key);
    complete.set_token(begun.lease().token());
    complete.mutable_result()->set_body(std::string(size_t{1} << 20, 'x'));
    v1::CompleteResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    if (!stub->Complete(&context, complete, &response).ok()) return false;
    acknowledged.push_back(key);
    ++completed;
    return true;
  };
  ASSERT_TRUE(write("warm-up"));  // The stub's connection is open.

  // The server raised its soft limit at start; take it down to 256.
  const rlimit low{256, 256};
  ASSERT_EQ(prlimit(server.pid(), RLIMIT_NOFILE, &low, nullptr), 0)
      << std::strerror(errno);
  std::vector<int> idle;
  for (int i = 0; i < 300; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(
        std::stoi(server.address().substr(server.address().rfind(':') + 1))));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // Refused or not, the descriptor is held open: that is the load.
    static_cast<void>(
        connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)));
    idle.push_back(fd);
  }
  absl::SleepFor(absl::Milliseconds(500));
  int failed = 0;
  for (int i = 0; i < 80; ++i) {
    if (!write(absl::StrCat("starved-", i))) ++failed;
  }
  ASSERT_GT(failed, 0) << "the store never ran out of descriptors; "
                       << completed << " writes went through";

  for (int fd : idle) close(fd);
  const absl::Time freed = absl::Now();
  bool recovered = false;
  while (!recovered && absl::Now() - freed < absl::Seconds(30)) {
    recovered = write(absl::StrCat("after-", absl::ToUnixMicros(absl::Now())));
    if (!recovered) absl::SleepFor(absl::Milliseconds(100));
  }
  const absl::Duration took = absl::Now() - freed;
  std::printf(
      "%d writes failed while starved; recovered %s after the idle "
      "connections closed\n",
      failed, absl::FormatDuration(took).c_str());
  ASSERT_TRUE(recovered) << server.log();
  EXPECT_LT(took, absl::Seconds(10));

  // Everything acknowledged is there, also after a crash.
  for (int round = 0; round < 2; ++round) {
    for (const std::string& key : acknowledged) {
      v1::LookupRequest lookup;
      lookup.set_namespace_("load");
      lookup.set_key(key);
      v1::LookupResponse found;
      grpc::ClientContext context;
      ASSERT_TRUE(stub->Lookup(&context, lookup, &found).ok()) << key;
      EXPECT_EQ(found.state(), v1::LookupResponse::STATE_COMPLETED) << key;
      EXPECT_EQ(found.result().body().size(), size_t{1} << 20) << key;
    }
    if (round == 0) {
      server.Kill();
      ASSERT_TRUE(server.Start().ok()) << server.log();
      stub = server.NewStub();
    }
  }
}

}  // namespace
}  // namespace idem
