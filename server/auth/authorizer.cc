#include "server/auth/authorizer.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/security/auth_context.h"

namespace idem::server {
namespace {

constexpr size_t kMaxCachedCertificates = 10'000;

// Metadata of a forwarded call (Authorizer::Forward).
constexpr char kForwardedBy[] = "idem-forwarded-by";
constexpr char kForwardedTls[] = "idem-forwarded-tls";
constexpr char kForwardedCertificate[] = "idem-forwarded-cert-bin";
constexpr char kForwardedPeer[] = "idem-forwarded-peer";

std::string RandomSecret() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    // No entropy: no forwarded call will ever be believed.
    return "";
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

absl::string_view Value(const grpc::string_ref& ref) {
  return absl::string_view(ref.data(), ref.size());
}

std::string Sha256Bytes(absl::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

std::string AsString(const ASN1_STRING* s) {
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
}

bool IsTls(const grpc::AuthContext& auth) {
  for (const grpc::string_ref& type :
       auth.FindPropertyValues("transport_security_type")) {
    if (type == "ssl" || type == "tls") return true;
  }
  return false;
}

std::string DescribeCaller(const CallerIdentity& id) {
  std::vector<std::string> parts;
  for (const std::string& uri : id.uri_sans) parts.push_back("URI " + uri);
  for (const std::string& dns : id.dns_sans) parts.push_back("DNS " + dns);
  if (!id.common_name.empty()) parts.push_back("CN " + id.common_name);
  std::string what;
  if (id.has_certificate) {
    what =
        absl::StrCat("client certificate (", absl::StrJoin(parts, ", "), ")");
  }
  if (!id.token_sha256.empty()) {
    absl::StrAppend(&what, what.empty() ? "" : " and ", "a bearer token");
  }
  return what;
}

}  // namespace

CallerIdentity ParseCertificateIdentity(absl::string_view pem) {
  CallerIdentity id;
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  if (bio == nullptr) return id;
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (cert == nullptr) return id;
  id.has_certificate = true;
  std::unique_ptr<GENERAL_NAMES, decltype(&GENERAL_NAMES_free)> names(
      static_cast<GENERAL_NAMES*>(
          X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr)),
      &GENERAL_NAMES_free);
  if (names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
      if (name->type == GEN_URI) {
        id.uri_sans.push_back(AsString(name->d.uniformResourceIdentifier));
      } else if (name->type == GEN_DNS) {
        id.dns_sans.push_back(AsString(name->d.dNSName));
      }
    }
  }
  const X509_NAME* subject = X509_get_subject_name(cert.get());
  const int cn = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (cn >= 0) {
    id.common_name =
        AsString(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, cn)));
  }
  return id;
}

Authorizer::Authorizer(const AuthPolicy* policy, Metrics* metrics)
    : policy_(policy), metrics_(metrics), forwarding_secret_(RandomSecret()) {}

void Authorizer::Forward(const std::string& secret, bool tls,
                         const std::string& client_certificate_pem,
                         const std::string& peer,
                         grpc::ClientContext* context) {
  context->AddMetadata(kForwardedBy, secret);
  context->AddMetadata(kForwardedPeer, "http:" + peer);
  context->AddMetadata(kForwardedTls, tls ? "1" : "0");
  if (!client_certificate_pem.empty()) {
    context->AddMetadata(kForwardedCertificate, client_certificate_pem);
  }
}

bool Authorizer::IsForwarded(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  auto by = metadata.find(kForwardedBy);
  if (by == metadata.end() || forwarding_secret_.empty()) return false;
  const absl::string_view secret = Value(by->second);
  return secret.size() == forwarding_secret_.size() &&
         CRYPTO_memcmp(secret.data(), forwarding_secret_.data(),
                       secret.size()) == 0;
}

std::string Authorizer::Peer(const grpc::ServerContextBase& context) const {
  if (IsForwarded(context)) {
    const auto& metadata = context.client_metadata();
    if (auto peer = metadata.find(kForwardedPeer); peer != metadata.end()) {
      return std::string(Value(peer->second));
    }
  }
  return context.peer();
}

CallerIdentity Authorizer::CertificateIdentity(const std::string& pem) const {
  absl::MutexLock lock(&mu_);
  auto it = certificates_.find(pem);
  if (it != certificates_.end()) return it->second;
  if (certificates_.size() >= kMaxCachedCertificates) certificates_.clear();
  CallerIdentity id = ParseCertificateIdentity(pem);
  certificates_.emplace(pem, id);
  return id;
}

void Authorizer::Record(absl::string_view principal,
                        absl::string_view result) const {
  if (metrics_ != nullptr && policy_ != nullptr) {
    metrics_->RecordAuth(principal, result);
  }
}

absl::StatusOr<Access> Authorizer::Authenticate(
    const grpc::ServerContextBase& context) const {
  if (policy_ == nullptr) return Access::Unrestricted();
  const auto& metadata = context.client_metadata();
  bool tls = false;
  CallerIdentity caller;
  if (metadata.find(kForwardedBy) != metadata.end()) {
    if (!IsForwarded(context)) {
      Record("", "unauthenticated");
      return absl::UnauthenticatedError(
          "forwarded identities are accepted from this server's own HTTP "
          "gateway only");
    }
    auto forwarded_tls = metadata.find(kForwardedTls);
    tls =
        forwarded_tls != metadata.end() && Value(forwarded_tls->second) == "1";
    if (auto pem = metadata.find(kForwardedCertificate);
        tls && pem != metadata.end()) {
      caller = CertificateIdentity(std::string(Value(pem->second)));
    }
  } else {
    const std::shared_ptr<const grpc::AuthContext> auth =
        context.auth_context();
    tls = auth != nullptr && IsTls(*auth);
    if (tls && auth->IsPeerAuthenticated()) {
      for (const grpc::string_ref& pem :
           auth->FindPropertyValues("x509_pem_cert")) {
        caller = CertificateIdentity(std::string(pem.data(), pem.size()));
        break;
      }
    }
  }
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    absl::string_view value(it->second.data(), it->second.size());
    if (!tls) {
      Record("", "unauthenticated");
      return absl::UnauthenticatedError(
          "a bearer token was sent over plaintext: tokens are accepted over "
          "TLS only (and this one should now be considered leaked)");
    }
    constexpr absl::string_view kBearer = "bearer ";
    if (value.size() <= kBearer.size() ||
        !absl::EqualsIgnoreCase(value.substr(0, kBearer.size()), kBearer)) {
      Record("", "unauthenticated");
      return absl::UnauthenticatedError(
          "the authorization metadata must be 'Bearer TOKEN'");
    }
    caller.token_sha256 =
        Sha256Bytes(absl::StripAsciiWhitespace(value.substr(kBearer.size())));
  }
  if (caller.empty()) {
    Record("", "unauthenticated");
    return absl::UnauthenticatedError(
        tls ? "no client identity: present a client certificate or a bearer "
              "token"
            : "this server requires authentication: connect with TLS and a "
              "client certificate or a bearer token");
  }
  Access access = policy_->Resolve(caller);
  access.set_caller(DescribeCaller(caller));
  if (!access.matched() && !caller.has_certificate) {
    // A token nobody knows proves nothing about the caller.
    Record("", "unauthenticated");
    return absl::UnauthenticatedError("the bearer token matches no principal");
  }
  return access;
}

absl::Status Authorizer::Allow(const Access& access) const {
  Record(access.principals(), "allowed");
  return absl::OkStatus();
}

absl::Status Authorizer::Deny(const Access& access,
                              absl::string_view why) const {
  Record(access.principals(), "permission_denied");
  if (!access.matched()) {
    return absl::PermissionDeniedError(
        absl::StrCat("no principal of the policy matches this caller (",
                     access.caller(), ")"));
  }
  return absl::PermissionDeniedError(why);
}

absl::Status Authorizer::CheckNamespace(const Access& access,
                                        absl::string_view name_space) const {
  if (access.MayUseNamespace(name_space)) return Allow(access);
  // The namespace is not validated yet: echo a bounded, escaped prefix.
  constexpr size_t kEchoed = 128;
  return Deny(access,
              absl::StrCat("principal '", access.principals(),
                           "' may not use namespace '",
                           absl::CHexEscape(name_space.substr(0, kEchoed)),
                           name_space.size() > kEchoed ? "...'" : "'"));
}

absl::Status Authorizer::CheckAdmin(const Access& access) const {
  if (access.admin()) return Allow(access);
  return Deny(access, absl::StrCat("principal '", access.principals(),
                                   "' may not call the Admin service "
                                   "(admin: false)"));
}

}  // namespace idem::server
