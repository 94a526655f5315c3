#include "server/auth/authorizer.h"

#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_pki.h"

namespace idem::server {
namespace {

using idem::testing::CertFiles;

constexpr char kPolicy[] = R"yaml(
principals:
  - name: api
    match: {uri_san: "spiffe://test/api"}
    namespaces: ["orders/*"]
  # sha256("s3cret-token")
  - name: ci
    match: {token_sha256: "a81e611a041b13f078bf8ebe5dab4d4fd63fcc5594661c918bec093a2f416a7e"}
    namespaces: ["*"]
    admin: true
)yaml";

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

AuthPolicy Policy() {
  absl::StatusOr<AuthPolicy> policy = AuthPolicy::Parse(kPolicy);
  EXPECT_TRUE(policy.ok()) << policy.status();
  return *std::move(policy);
}

// Answers every call with the authorizer's decision: the status, or OK with
// the principals and the caller's description in trailing metadata.
class AuthenticateService final : public grpc::CallbackGenericService {
 public:
  explicit AuthenticateService(const Authorizer* authorizer)
      : authorizer_(authorizer) {}

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    return new Reactor(context, authorizer_->Authenticate(*context));
  }

 private:
  class Reactor final : public grpc::ServerGenericBidiReactor {
   public:
    Reactor(grpc::GenericCallbackServerContext* context,
            const absl::StatusOr<Access>& access) {
      if (!access.ok()) {
        Finish(
            grpc::Status(static_cast<grpc::StatusCode>(access.status().code()),
                         std::string(access.status().message())));
        return;
      }
      context->AddTrailingMetadata("x-principals", access->principals());
      context->AddTrailingMetadata("x-caller", access->caller());
      StartWriteAndFinish(&reply_, grpc::WriteOptions(), grpc::Status::OK);
    }
    void OnDone() override { delete this; }

   private:
    grpc::Slice empty_{""};
    grpc::ByteBuffer reply_{&empty_, 1};
  };

  const Authorizer* const authorizer_;
};

// A server with a TLS port (client certificates optional, verified when
// sent) and a plaintext port, both answering with Authenticate's decision.
class AuthenticateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<CertFiles> ca = pki_.MakeCa("ca");
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *ca;
    absl::StatusOr<CertFiles> server =
        pki_.MakeLeaf(ca_, "server", "idem", {"DNS:localhost"});
    ASSERT_TRUE(server.ok()) << server.status();
    grpc::SslServerCredentialsOptions tls(
        GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
    tls.pem_root_certs = Slurp(ca_.cert);
    tls.pem_key_cert_pairs.push_back({Slurp(server->key), Slurp(server->cert)});
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::SslServerCredentials(tls),
                             &tls_port_);
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &plain_port_);
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  // Calls the TLS port, with `client` as the client certificate if given.
  std::shared_ptr<grpc::Channel> Tls(const CertFiles* client = nullptr) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = Slurp(ca_.cert);
    if (client != nullptr) {
      options.pem_private_key = Slurp(client->key);
      options.pem_cert_chain = Slurp(client->cert);
    }
    // An IP address with the name the certificate holds: a host name would
    // go through gRPC's c-ares resolver, whose allocations LeakSanitizer
    // reports at exit.
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", tls_port_),
                                     grpc::SslCredentials(options), args);
  }
  std::shared_ptr<grpc::Channel> Plaintext() {
    return grpc::CreateChannel(absl::StrCat("127.0.0.1:", plain_port_),
                               grpc::InsecureChannelCredentials());
  }

  struct Answer {
    grpc::Status status;
    std::string principals;
    std::string caller;
  };
  static Answer Call(const std::shared_ptr<grpc::Channel>& channel,
                     const std::string& authorization = "") {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(10));
    if (!authorization.empty()) {
      context.AddMetadata("authorization", authorization);
    }
    v1::LookupRequest request;
    v1::LookupResponse response;
    Answer answer;
    answer.status =
        v1::Idempotency::NewStub(channel)->Lookup(&context, request, &response);
    const auto& trailers = context.GetServerTrailingMetadata();
    if (auto it = trailers.find("x-principals"); it != trailers.end()) {
      answer.principals = std::string(it->second.data(), it->second.size());
    }
    if (auto it = trailers.find("x-caller"); it != trailers.end()) {
      answer.caller = std::string(it->second.data(), it->second.size());
    }
    return answer;
  }

  std::string RenderedMetrics() const {
    return metrics_.Render(Metrics::Gauges{});
  }

  idem::testing::TempDir dir_;
  idem::testing::TestPki pki_{dir_.path()};
  CertFiles ca_;
  AuthPolicy policy_ = Policy();
  Metrics metrics_;
  Authorizer authorizer_{&policy_, &metrics_};
  AuthenticateService service_{&authorizer_};
  int tls_port_ = 0;
  int plain_port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(AuthenticateTest, PlaintextCallersAreRefusedAndATokenThereIsLeaked) {
  Answer answer = Call(Plaintext());
  EXPECT_EQ(answer.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(
      absl::StrContains(answer.status.error_message(), "connect with TLS"))
      << answer.status.error_message();

  answer = Call(Plaintext(), "Bearer s3cret-token");
  EXPECT_EQ(answer.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(
      absl::StrContains(answer.status.error_message(), "sent over plaintext"))
      << answer.status.error_message();
  EXPECT_TRUE(absl::StrContains(
      RenderedMetrics(),
      "idem_auth_total{principal=\"\",result=\"unauthenticated\"} 2"))
      << RenderedMetrics();
}

TEST_F(AuthenticateTest, ABearerTokenOverTlsNamesItsPrincipal) {
  Answer answer = Call(Tls(), "Bearer s3cret-token");
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.principals, "ci");
  EXPECT_EQ(answer.caller, "a bearer token");

  // The scheme is case-insensitive, the token is not.
  EXPECT_TRUE(Call(Tls(), "bearer s3cret-token").status.ok());
  answer = Call(Tls(), "Bearer S3CRET-TOKEN");
  EXPECT_EQ(answer.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(
      absl::StrContains(answer.status.error_message(), "matches no principal"));

  for (const char* malformed : {"Basic czNjcmV0", "Bearer", "s3cret-token"}) {
    answer = Call(Tls(), malformed);
    EXPECT_EQ(answer.status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << malformed;
    EXPECT_TRUE(
        absl::StrContains(answer.status.error_message(), "'Bearer TOKEN'"))
        << malformed << ": " << answer.status.error_message();
  }
}

TEST_F(AuthenticateTest, TlsWithoutACertificateOrTokenProvesNothing) {
  Answer answer = Call(Tls());
  EXPECT_EQ(answer.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(
      absl::StrContains(answer.status.error_message(), "no client identity"))
      << answer.status.error_message();
}

TEST_F(AuthenticateTest, AClientCertificateIsMatchedByItsNames) {
  absl::StatusOr<CertFiles> api =
      pki_.MakeLeaf(ca_, "api", "api-pod", {"URI:spiffe://test/api"});
  ASSERT_TRUE(api.ok()) << api.status();
  Answer answer = Call(Tls(&*api));
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.principals, "api");
  EXPECT_EQ(answer.caller,
            "client certificate (URI spiffe://test/api, CN api-pod)");

  // A certificate and a token: the grants of both.
  answer = Call(Tls(&*api), "Bearer s3cret-token");
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.principals, "api,ci");

  // A verified certificate no principal names is an identity without
  // grants: authenticated, and told so when it asks for anything.
  absl::StatusOr<CertFiles> stranger =
      pki_.MakeLeaf(ca_, "stranger", "who", {"DNS:who.example"});
  ASSERT_TRUE(stranger.ok()) << stranger.status();
  answer = Call(Tls(&*stranger));
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.principals, "");
}

TEST(AuthorizerTest, WithoutAPolicyEveryCallerMayDoEverythingUncounted) {
  Metrics metrics;
  Authorizer authorizer(nullptr, &metrics);
  EXPECT_TRUE(authorizer.open());
  const Access access = Access::Unrestricted();
  EXPECT_TRUE(authorizer.CheckNamespace(access, "anything").ok());
  EXPECT_TRUE(authorizer.CheckAdmin(access).ok());
  EXPECT_FALSE(
      absl::StrContains(metrics.Render(Metrics::Gauges{}), "idem_auth_total{"));
}

TEST(AuthorizerTest, ADeniedNamespaceIsNamedEscapedAndBounded) {
  const AuthPolicy policy = Policy();
  Metrics metrics;
  Authorizer authorizer(&policy, &metrics);
  CallerIdentity id;
  id.has_certificate = true;
  id.uri_sans = {"spiffe://test/api"};
  const Access access = policy.Resolve(id);

  EXPECT_TRUE(authorizer.CheckNamespace(access, "orders/eu").ok());
  absl::Status denied = authorizer.CheckNamespace(access, "refunds\n");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(),
            "principal 'api' may not use namespace 'refunds\\n'");
  denied = authorizer.CheckNamespace(access, std::string(1000, 'x'));
  EXPECT_EQ(denied.message(), absl::StrCat("principal 'api' may not use "
                                           "namespace '",
                                           std::string(128, 'x'), "...'"));
  denied = authorizer.CheckAdmin(access);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(denied.message(), "(admin: false)"));

  const std::string text = metrics.Render(Metrics::Gauges{});
  EXPECT_TRUE(absl::StrContains(
      text, "idem_auth_total{principal=\"api\",result=\"allowed\"} 1"))
      << text;
  EXPECT_TRUE(absl::StrContains(
      text,
      "idem_auth_total{principal=\"api\",result=\"permission_denied\"} 3"))
      << text;
}

TEST(AuthorizerTest, ACallerNoPrincipalMatchesIsToldWhoItIs) {
  const AuthPolicy policy = Policy();
  Authorizer authorizer(&policy);
  CallerIdentity id;
  id.has_certificate = true;
  id.dns_sans = {"who.example"};
  Access access = policy.Resolve(id);
  access.set_caller("client certificate (DNS who.example)");
  const absl::Status denied = authorizer.CheckNamespace(access, "orders/x");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(),
            "no principal of the policy matches this caller (client "
            "certificate (DNS who.example))");
}

TEST(ParseCertificateIdentityTest, ReadsSansAndCommonNameAndRefusesGarbage) {
  idem::testing::TempDir dir;
  idem::testing::TestPki pki(dir.path());
  absl::StatusOr<CertFiles> ca = pki.MakeCa("ca");
  ASSERT_TRUE(ca.ok()) << ca.status();
  absl::StatusOr<CertFiles> leaf = pki.MakeLeaf(
      *ca, "leaf", "the-cn",
      {"URI:spiffe://a/b", "DNS:x.example", "DNS:y.example", "IP:127.0.0.1"});
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  const CallerIdentity id = ParseCertificateIdentity(Slurp(leaf->cert));
  EXPECT_TRUE(id.has_certificate);
  EXPECT_EQ(id.uri_sans, std::vector<std::string>{"spiffe://a/b"});
  EXPECT_EQ(id.dns_sans, (std::vector<std::string>{"x.example", "y.example"}));
  EXPECT_EQ(id.common_name, "the-cn");

  EXPECT_FALSE(ParseCertificateIdentity("").has_certificate);
  EXPECT_FALSE(ParseCertificateIdentity("-----BEGIN CERTIFICATE-----\nAAAA\n"
                                        "-----END CERTIFICATE-----\n")
                   .has_certificate);
  EXPECT_FALSE(ParseCertificateIdentity(Slurp(leaf->key)).has_certificate);
}

}  // namespace
}  // namespace idem::server
