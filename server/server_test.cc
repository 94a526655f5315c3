// The composition root started in-process, as main.cc starts it: real gRPC
// and HTTP on loopback ports, RocksDB in a temporary folder.
#include "server/server.h"

#include <httplib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/temp_dir.h"

namespace idem::server {
namespace {

ServerConfig Config(const std::vector<std::string>& flags) {
  absl::StatusOr<ServerConfig> config =
      ParseConfig(flags, [](const char*) -> const char* { return nullptr; });
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  return context;
}

class ServerTest : public ::testing::Test {
 protected:
  std::vector<std::string> Flags() {
    return {"--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0",
            "--data-dir=" + dir_.Sub("data"), "--http-listen=127.0.0.1:0"};
  }

  std::unique_ptr<v1::Idempotency::Stub> Stub(const Server& server) {
    return v1::Idempotency::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()),
                            grpc::InsecureChannelCredentials()));
  }

  v1::BeginResponse Begin(v1::Idempotency::Stub& stub) {
    v1::BeginRequest request;
    request.set_namespace_("orders");
    request.set_key("o-1");
    request.set_fingerprint("fp");
    v1::BeginResponse response;
    const grpc::Status status = stub.Begin(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  testing::TempDir dir_;
};

TEST_F(ServerTest, ServesGrpcAndHttpThenDrainsAndClosesTheStore) {
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(Config(Flags()));
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  ASSERT_GT((*server)->metrics_port(), 0);

  auto stub = Stub(**server);
  const v1::BeginResponse acquired = Begin(*stub);
  ASSERT_EQ(acquired.outcome(), v1::BeginResponse::OUTCOME_ACQUIRED);
  v1::CompleteRequest complete;
  complete.set_namespace_("orders");
  complete.set_key("o-1");
  complete.set_token(acquired.lease().token());
  complete.mutable_result()->set_code(201);
  complete.mutable_result()->set_body("made");
  v1::CompleteResponse completed;
  ASSERT_TRUE(stub->Complete(Context().get(), complete, &completed).ok());

  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*server)->port()),
                          grpc::InsecureChannelCredentials()));
  grpc::health::v1::HealthCheckRequest ask;
  grpc::health::v1::HealthCheckResponse answer;
  ASSERT_TRUE(health->Check(Context().get(), ask, &answer).ok());
  EXPECT_EQ(answer.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  httplib::Client http("127.0.0.1", (*server)->metrics_port());
  auto healthz = http.Get("/healthz");
  ASSERT_TRUE(healthz);
  EXPECT_EQ(healthz->status, 200);
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find(
                "idem_rpc_total{method=\"Complete\",outcome=\"OK\"} 1"),
            std::string::npos)
      << metrics->body;

  (*server)->Shutdown("test");
  v1::BeginRequest after;
  after.set_namespace_("orders");
  after.set_key("o-2");
  v1::BeginResponse refused;
  EXPECT_FALSE(stub->Begin(Context().get(), after, &refused).ok());
  EXPECT_FALSE(http.Get("/healthz"));
  server->reset();

  // The store was closed cleanly: a new server on it replays the result.
  absl::StatusOr<std::unique_ptr<Server>> again =
      Server::Start(Config(Flags()));
  ASSERT_TRUE(again.ok()) << again.status();
  const v1::BeginResponse replay = Begin(*Stub(**again));
  EXPECT_EQ(replay.outcome(), v1::BeginResponse::OUTCOME_COMPLETED);
  EXPECT_EQ(replay.result().body(), "made");
}

TEST_F(ServerTest, ABadTlsFileIsInvalidArgumentAndOpensNothing) {
  std::vector<std::string> tls = Flags();
  tls.push_back("--tls-cert=" + dir_.Sub("missing.crt"));
  tls.push_back("--tls-key=" + dir_.Sub("missing.key"));
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(Config(tls));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Server::ExitCode(server.status()), 2);

  // Checked before the store opens: no data directory was made.
  EXPECT_FALSE(std::filesystem::exists(dir_.Sub("data")));
}

TEST_F(ServerTest, APortInUseIsUnavailableAndReleasesTheStore) {
  absl::StatusOr<std::unique_ptr<Server>> first =
      Server::Start(Config(Flags()));
  ASSERT_TRUE(first.ok()) << first.status();
  std::vector<std::string> flags = Flags();
  flags[0] = absl::StrCat("--listen=127.0.0.1:", (*first)->port());
  flags[2] = "--data-dir=" + dir_.Sub("second");
  absl::StatusOr<std::unique_ptr<Server>> second = Server::Start(Config(flags));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Server::ExitCode(second.status()), 1);
  // The failed start closed its store: the folder opens again at once.
  flags[0] = "--listen=127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<Server>> third = Server::Start(Config(flags));
  EXPECT_TRUE(third.ok()) << third.status();
}

}  // namespace
}  // namespace idem::server
