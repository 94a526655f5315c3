// TLS, mutual TLS, bearer tokens and the namespace policy, against the real
// server, with certificates the test makes itself (openssl).
#include <httplib.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "idem/credentials.h"
#include "idem/v1/admin.grpc.pb.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_pki.h"

namespace idem {
namespace {

constexpr char kToken[] = "s3cret-token-for-ci";
constexpr char kPayUri[] = "spiffe://cluster.local/ns/pay/sa/api";

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  return context;
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::TestPki pki(dir_.path());
    auto ca = pki.MakeCa("ca");
    auto other_ca = pki.MakeCa("other-ca");
    ASSERT_TRUE(ca.ok()) << ca.status();
    ASSERT_TRUE(other_ca.ok()) << other_ca.status();
    ca_ = *ca;
    other_ca_ = *other_ca;
    auto server =
        pki.MakeLeaf(ca_, "server", "idem", {"DNS:localhost", "IP:127.0.0.1"});
    auto pay =
        pki.MakeLeaf(ca_, "pay", "payments", {std::string("URI:") + kPayUri});
    auto ops = pki.MakeLeaf(ca_, "ops", "oncall", {});
    auto stranger =
        pki.MakeLeaf(ca_, "stranger", "stranger", {"URI:spiffe://elsewhere"});
    auto rogue = pki.MakeLeaf(other_ca_, "rogue", "oncall",
                              {std::string("URI:") + kPayUri});
    for (const auto* made : {&server, &pay, &ops, &stranger, &rogue}) {
      ASSERT_TRUE(made->ok()) << made->status();
    }
    server_cert_ = *server;
    pay_ = *pay;
    ops_ = *ops;
    stranger_ = *stranger;
    rogue_ = *rogue;
    // sha256 of kToken, as `printf %s TOKEN | sha256sum` prints it.
    const testing::CommandResult digest = testing::RunCommand(
        {"/bin/sh", "-c",
         absl::StrCat("printf %s '", kToken, "' | sha256sum | cut -c1-64")});
    ASSERT_EQ(digest.exit_code, 0);
    policy_ = dir_.Sub("policy.yaml");
    std::ofstream(policy_) << "principals:\n"
                           << "  - name: payments-api\n"
                           << "    match: {uri_san: \"" << kPayUri << "\"}\n"
                           << "    namespaces: [\"payments/*\", \"refunds\"]\n"
                           << "  - name: operator\n"
                           << "    match: {common_name: oncall}\n"
                           << "    admin: true\n"
                           << "  - name: ci-bot\n"
                           << "    match: {token_sha256: "
                           << digest.out.substr(0, 64) << "}\n"
                           << "    namespaces: [\"ci/*\"]\n";
  }

  // The server with TLS (and mTLS when `mutual`), the policy, and `extra`.
  void StartServer(bool mutual, std::vector<std::string> extra = {}) {
    std::vector<std::string> flags = {"--tls-cert=" + server_cert_.cert,
                                      "--tls-key=" + server_cert_.key,
                                      "--policy=" + policy_};
    if (mutual) flags.push_back("--tls-client-ca=" + ca_.cert);
    flags.insert(flags.end(), extra.begin(), extra.end());
    server_ = std::make_unique<testing::ServerProcess>(flags);
    // The readiness check needs a client the server accepts.
    server_->UseCredentials(Credentials(
        mutual ? ops_.cert : "", mutual ? ops_.key : "", mutual ? "" : kToken));
    ASSERT_TRUE(server_->Start().ok()) << server_->log();
  }

  std::shared_ptr<grpc::ChannelCredentials> Credentials(
      const std::string& cert, const std::string& key,
      const std::string& token = "", const std::string& ca = "") {
    client::TlsSettings tls;
    tls.ca_file = ca.empty() ? ca_.cert : ca;
    tls.cert_file = cert;
    tls.key_file = key;
    tls.token = token;
    auto credentials = client::MakeCredentials(tls);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return credentials.ok() ? *credentials : nullptr;
  }

  std::shared_ptr<grpc::Channel> Channel(
      const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
    // A channel of its own each time: no connection is shared between tests
    // of different identities.
    grpc::ChannelArguments args;
    args.SetInt("idem.test.channel", ++channels_);
    return grpc::CreateCustomChannel(server_->address(), credentials, args);
  }

  grpc::Status Begin(const std::shared_ptr<grpc::Channel>& channel,
                     const std::string& name_space,
                     v1::BeginResponse* response = nullptr) {
    v1::BeginRequest request;
    request.set_namespace_(name_space);
    request.set_key("k1");
    request.set_fingerprint("fp");
    v1::BeginResponse ignored;
    return v1::Idempotency::NewStub(channel)->Begin(
        Context().get(), request, response != nullptr ? response : &ignored);
  }

  grpc::Status Stats(const std::shared_ptr<grpc::Channel>& channel) {
    v1::StatsResponse response;
    return v1::Admin::NewStub(channel)->Stats(Context().get(),
                                              v1::StatsRequest(), &response);
  }

  testing::TempDir dir_;
  testing::CertFiles ca_, other_ca_, server_cert_, pay_, ops_, stranger_,
      rogue_;
  std::string policy_;
  std::unique_ptr<testing::ServerProcess> server_;
  int channels_ = 0;
};

TEST_F(SecurityTest, MutualTlsLimitsEachClientToItsGrants) {
  StartServer(/*mutual=*/true);
  auto pay = Channel(Credentials(pay_.cert, pay_.key));
  EXPECT_TRUE(Begin(pay, "payments/eu").ok());
  EXPECT_TRUE(Begin(pay, "refunds").ok());
  const grpc::Status denied = Begin(pay, "orders");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(denied.error_message().find("'payments-api' may not use namespace "
                                        "'orders'"),
            std::string::npos)
      << denied.error_message();
  // Not an admin.
  const grpc::Status stats = Stats(pay);
  EXPECT_EQ(stats.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(stats.error_message().find("Admin"), std::string::npos);

  // A batch is authorized entry by entry.
  v1::BeginBatchRequest batch;
  for (const char* name_space : {"payments/us", "orders"}) {
    v1::BeginRequest* request = batch.add_requests();
    request->set_namespace_(name_space);
    request->set_key("b1");
    request->set_fingerprint("fp");
  }
  v1::BeginBatchResponse batched;
  ASSERT_TRUE(v1::Idempotency::NewStub(pay)
                  ->BeginBatch(Context().get(), batch, &batched)
                  .ok());
  ASSERT_EQ(batched.entries_size(), 2);
  EXPECT_EQ(batched.entries(0).status().code(), 0);
  EXPECT_EQ(batched.entries(1).status().code(),
            static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));

  // Decisions are counted per principal.
  httplib::Client http("127.0.0.1", server_->metrics_port());
  const auto scraped = http.Get("/metrics");
  ASSERT_TRUE(scraped);
  EXPECT_NE(
      scraped->body.find(
          "idem_auth_total{principal=\"payments-api\",result=\"allowed\"} 3"),
      std::string::npos)
      << scraped->body;
  EXPECT_NE(scraped->body.find("idem_auth_total{principal=\"payments-api\","
                               "result=\"permission_denied\"} 3"),
            std::string::npos)
      << scraped->body;

  // The operator may use the Admin service but no namespace.
  auto ops = Channel(Credentials(ops_.cert, ops_.key));
  EXPECT_TRUE(Stats(ops).ok());
  EXPECT_EQ(Begin(ops, "payments/eu").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // A valid certificate that no principal names.
  const grpc::Status stranger =
      Begin(Channel(Credentials(stranger_.cert, stranger_.key)), "payments/eu");
  EXPECT_EQ(stranger.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(stranger.error_message().find("spiffe://elsewhere"),
            std::string::npos)
      << stranger.error_message();
}

TEST_F(SecurityTest, ClientsWithoutAValidCertificateCannotConnect) {
  StartServer(/*mutual=*/true);
  // Plaintext against TLS.
  auto plaintext = grpc::CreateChannel(server_->address(),
                                       grpc::InsecureChannelCredentials());
  EXPECT_EQ(Begin(plaintext, "payments/eu").error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // TLS without a client certificate.
  EXPECT_EQ(Begin(Channel(Credentials("", "")), "payments/eu").error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // A certificate from another CA, even with the right names.
  EXPECT_EQ(Begin(Channel(Credentials(rogue_.cert, rogue_.key)), "payments/eu")
                .error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // A client that does not trust the server's CA.
  EXPECT_EQ(Begin(Channel(Credentials(pay_.cert, pay_.key, "", other_ca_.cert)),
                  "payments/eu")
                .error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SecurityTest, BearerTokensOverTls) {
  StartServer(/*mutual=*/false);
  auto bot = Channel(Credentials("", "", kToken));
  EXPECT_TRUE(Begin(bot, "ci/builds").ok());
  EXPECT_EQ(Begin(bot, "payments/eu").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  const grpc::Status wrong =
      Begin(Channel(Credentials("", "", "not-the-token")), "ci/builds");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const grpc::Status none = Begin(Channel(Credentials("", "")), "ci/builds");
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(none.error_message().find("no client identity"), std::string::npos)
      << none.error_message();

  // Secrets stay out of logs and metrics (and bodies are never logged).
  EXPECT_EQ(server_->log().find(kToken), std::string::npos);
  EXPECT_EQ(server_->log().find("not-the-token"), std::string::npos);
  httplib::Client http("127.0.0.1", server_->metrics_port());
  const auto scraped = http.Get("/metrics");
  ASSERT_TRUE(scraped);
  EXPECT_EQ(scraped->body.find(kToken), std::string::npos);
  EXPECT_NE(scraped->body.find("idem_auth_total{principal=\"ci-bot\""),
            std::string::npos);
}

TEST_F(SecurityTest, IdemctlSpeaksTlsMutualTlsAndTokens) {
  StartServer(/*mutual=*/true);
  const std::string server = "--server=" + server_->address();
  testing::CommandResult pay =
      testing::RunCommand({IDEMCTL_BINARY, server, "--tls-ca=" + ca_.cert,
                           "--tls-cert=" + pay_.cert, "--tls-key=" + pay_.key,
                           "lookup", "payments/eu", "k9"});
  EXPECT_EQ(pay.exit_code, 0) << pay.out << pay.err;
  testing::CommandResult denied =
      testing::RunCommand({IDEMCTL_BINARY, server, "--tls-ca=" + ca_.cert,
                           "--tls-cert=" + pay_.cert, "--tls-key=" + pay_.key,
                           "lookup", "orders", "k9"});
  EXPECT_NE(denied.exit_code, 0);
  EXPECT_NE(denied.err.find("PERMISSION_DENIED"), std::string::npos)
      << denied.err;
  testing::CommandResult half =
      testing::RunCommand({IDEMCTL_BINARY, server, "--tls-ca=" + ca_.cert,
                           "--tls-cert=" + pay_.cert, "ping"});
  EXPECT_EQ(half.exit_code, 2) << half.err;  // A certificate without its key.

  server_.reset();
  StartServer(/*mutual=*/false);
  std::ofstream(dir_.Sub("token")) << kToken << "\n";
  testing::CommandResult bot = testing::RunCommand(
      {IDEMCTL_BINARY, "--server=" + server_->address(), "--tls-ca=" + ca_.cert,
       "--token-file=" + dir_.Sub("token"), "lookup", "ci/builds", "k9"});
  EXPECT_EQ(bot.exit_code, 0) << bot.out << bot.err;
}

TEST_F(SecurityTest, APolicyWithoutTlsIsRefusedAtStart) {
  testing::ServerProcess server({"--policy=" + policy_});
  const absl::Status started = server.Start();
  EXPECT_FALSE(started.ok());
  EXPECT_NE(server.log().find("--policy needs --tls-cert"), std::string::npos)
      << server.log();
}

TEST_F(SecurityTest, ABadPolicyOrKeyStopsTheServerWithOneClearLine) {
  std::ofstream(dir_.Sub("bad.yaml")) << "principals:\n  - name: x\n";
  testing::ServerProcess bad_policy({"--tls-cert=" + server_cert_.cert,
                                     "--tls-key=" + server_cert_.key,
                                     "--policy=" + dir_.Sub("bad.yaml")});
  EXPECT_FALSE(bad_policy.Start().ok());
  EXPECT_NE(bad_policy.log().find("needs a 'match'"), std::string::npos)
      << bad_policy.log();
  testing::ServerProcess wrong_key(
      {"--tls-cert=" + server_cert_.cert, "--tls-key=" + pay_.key});
  EXPECT_FALSE(wrong_key.Start().ok());
  EXPECT_NE(wrong_key.log().find("does not match the certificate"),
            std::string::npos)
      << wrong_key.log();
}

TEST_F(SecurityTest, RotatedCertificatesAreUsedWithoutARestart) {
  StartServer(/*mutual=*/true, {"--tls-refresh=1s"});
  const pid_t pid = server_->pid();
  auto before = Channel(Credentials(pay_.cert, pay_.key));
  ASSERT_TRUE(Begin(before, "payments/eu").ok());

  // cert-manager style: a new certificate from a new CA replaces the files.
  testing::TestPki pki(dir_.path());
  auto new_ca = pki.MakeCa("new-ca");
  ASSERT_TRUE(new_ca.ok()) << new_ca.status();
  auto renewed = pki.MakeLeaf(*new_ca, "renewed", "idem",
                              {"DNS:localhost", "IP:127.0.0.1"});
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  std::filesystem::copy_file(renewed->key, server_cert_.key + ".new");
  std::filesystem::copy_file(renewed->cert, server_cert_.cert + ".new");
  std::filesystem::rename(server_cert_.key + ".new", server_cert_.key);
  std::filesystem::rename(server_cert_.cert + ".new", server_cert_.cert);
  ASSERT_EQ(server_->Signal(SIGHUP), 0);

  // New connections soon see the new certificate (trusted via the new CA
  // only), with no restart.
  bool rotated = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (!rotated && absl::Now() < deadline) {
    rotated = Begin(Channel(Credentials(pay_.cert, pay_.key, "", new_ca->cert)),
                    "payments/eu")
                  .ok();
    if (!rotated) absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(rotated) << server_->log();
  EXPECT_EQ(server_->pid(), pid);
  EXPECT_NE(server_->log().find("event=tls_reload"), std::string::npos);
  // The connection made before the rotation keeps working.
  EXPECT_TRUE(Begin(before, "refunds").ok());
}

// gRPC 1.51 loaded whatever the watched files held: a mismatched pair, a
// garbage or missing CA bundle made every new connection fail while the log
// said the previous certificate stayed in use. Bad sets are now refused
// before gRPC sees them.
TEST_F(SecurityTest, ABadSetOfTlsFilesIsRefusedAndTheLastGoodOneServes) {
  // The server's own copy of the client CA: the test's clients read ca_.
  const std::string server_ca = dir_.Sub("server-client-ca.pem");
  std::filesystem::copy_file(ca_.cert, server_ca);
  StartServer(/*mutual=*/true,
              {"--tls-refresh=1s", "--tls-client-ca=" + server_ca});
  auto works = [&] {
    return Begin(Channel(Credentials(pay_.cert, pay_.key)), "payments/eu").ok();
  };
  ASSERT_TRUE(works());
  const std::string good_key = server_cert_.key + ".good";
  const std::string good_ca = server_ca + ".good";
  std::filesystem::copy_file(server_cert_.key, good_key);
  std::filesystem::copy_file(server_ca, good_ca);
  auto overwrite = [](const std::string& from, const std::string& to) {
    std::filesystem::copy_file(
        from, to + ".new", std::filesystem::copy_options::overwrite_existing);
    std::filesystem::rename(to + ".new", to);
  };
  auto log_count = [&](const std::string& what) {
    size_t count = 0;
    const std::string log = server_->log();
    for (size_t at = log.find(what); at != std::string::npos;
         at = log.find(what, at + 1)) {
      ++count;
    }
    return count;
  };

  struct Case {
    const char* name;
    std::function<void()> spoil;
    const char* error;
  };
  const std::vector<Case> cases = {
      {"a key of another certificate",
       [&] { overwrite(pay_.key, server_cert_.key); },
       "does not match the certificate"},
      {"a garbage client CA bundle",
       [&] { std::ofstream(server_ca, std::ios::trunc) << "garbage\n"; },
       "holds no PEM CA certificate"},
      {"a missing client CA bundle",
       [&] { std::filesystem::remove(server_ca); }, "cannot read"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const size_t failures = log_count("event=tls_reload_failed");
    c.spoil();
    ASSERT_EQ(server_->Signal(SIGHUP), 0);
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (log_count("event=tls_reload_failed") == failures &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_NE(server_->log().find(c.error), std::string::npos)
        << server_->log();
    // Past two refresh periods, new connections still get the good set.
    absl::SleepFor(absl::Milliseconds(2500));
    EXPECT_TRUE(works()) << server_->log();
    overwrite(good_key, server_cert_.key);
    overwrite(good_ca, server_ca);
  }
  // Files set right again are installed (reported after the last refusal)
  // and serve.
  auto installed_after_refusal = [&] {
    const std::string log = server_->log();
    const size_t refused = log.rfind("event=tls_reload_failed");
    const size_t installed = log.rfind("event=tls_reload ");
    return installed != std::string::npos && installed > refused;
  };
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!installed_after_refusal() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(installed_after_refusal()) << server_->log();
  EXPECT_TRUE(works());
  EXPECT_EQ(server_->log().find("the previous certificate stays in use"),
            std::string::npos);
}

}  // namespace
}  // namespace idem
