// libFuzzer target: arbitrary bytes as each request message, sent to the
// real server (server.h, as idem-server builds it, over a real RocksDB store,
// reached through an in-process channel) exactly as a client's bytes would
// arrive. The first input byte picks the method; the rest is the serialized
// request. Nothing may crash, hang or trip a sanitizer, and the server must
// keep answering.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "server/config.h"
#include "server/ops/log.h"
#include "server/server.h"

namespace idem::server {
namespace {

constexpr const char* kMethods[] = {
    "/idem.v1.Idempotency/Begin",
    "/idem.v1.Idempotency/Complete",
    "/idem.v1.Idempotency/Release",
    "/idem.v1.Idempotency/Extend",
    "/idem.v1.Idempotency/Lookup",
    "/idem.v1.Idempotency/Checkpoint",
    "/idem.v1.Idempotency/BeginBatch",
    "/idem.v1.Idempotency/CompleteBatch",
    "/idem.v1.Admin/Delete",
    "/idem.v1.Admin/ForceRelease",
    "/idem.v1.Admin/List",
    "/idem.v1.Admin/Stats",
};
constexpr size_t kMethodCount = sizeof(kMethods) / sizeof(kMethods[0]);

// Built once per fuzzing process, and deliberately never destroyed: libFuzzer
// exits without running destructors in a defined order. The server is the
// one idem-server runs (server.h), put together from flags.
struct Harness {
  Harness() {
    char pattern[] = "/tmp/idem-fuzz-XXXXXX";
    const std::string dir = mkdtemp(pattern);
    absl::StatusOr<ServerConfig> config = ParseConfig(
        {"--listen=127.0.0.1:0", "--data-dir=" + dir + "/db", "--http-listen=",
         "--sync-writes=false",  // Speed; durability is not under test.
         "--min-free-disk-bytes=0",
         "--max-wait=20ms"},  // Parked calls end quickly.
        [](const char*) -> const char* { return nullptr; });
    if (!config.ok()) std::abort();
    SetLogLevel(LogLevel::kError);
    absl::StatusOr<std::unique_ptr<Server>> started = Server::Start(*config);
    if (!started.ok()) std::abort();
    server = *std::move(started);
    stub = std::make_unique<grpc::GenericStub>(server->InProcessChannel());
  }

  // Sends `body` as the request of `method` and waits for the answer.
  grpc::Status Call(const char* method, const std::string& body) {
    grpc::Slice slice(body);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    absl::Mutex mu;
    bool done = false;
    grpc::Status status;
    stub->UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                    [&](grpc::Status s) {
                      absl::MutexLock lock(&mu);
                      status = std::move(s);
                      done = true;
                    });
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&done));
    return status;
  }

  std::unique_ptr<Server> server;
  std::unique_ptr<grpc::GenericStub> stub;
};

Harness& GetHarness() {
  static Harness* harness = new Harness();
  return *harness;
}

}  // namespace
}  // namespace idem::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  idem::server::Harness& harness = idem::server::GetHarness();
  const char* method =
      idem::server::kMethods[data[0] % idem::server::kMethodCount];
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  const grpc::Status status = harness.Call(method, body);
  // The server answers with a status, never by dying; DEADLINE_EXCEEDED
  // would mean a call hung.
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) std::abort();
  return 0;
}
