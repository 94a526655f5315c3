// Who may use which namespaces, and who may call the Admin service: the
// policy file (--policy, YAML) and the decisions made from it. Pure: the
// caller's identity is extracted elsewhere (server/auth/authorizer.h).
//
//   principals:
//     - name: payments-api                 # shows in logs and metrics
//       match: {uri_san: "spiffe://cluster.local/ns/pay/sa/api"}
//                                          # or dns_san:, common_name:, or
//                                          # token_sha256: (hex SHA-256 of a
//                                          # bearer token)
//       namespaces: ["payments/*", "refunds"]  # "x/*" = prefix, else exact
//       admin: false
#ifndef IDEM_SERVER_AUTH_AUTH_POLICY_H_
#define IDEM_SERVER_AUTH_AUTH_POLICY_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace idem::server {

// What a caller proved about itself: the verified client certificate's
// names, and the SHA-256 of a bearer token (raw 32 bytes) sent over TLS.
struct CallerIdentity {
  std::vector<std::string> uri_sans;
  std::vector<std::string> dns_sans;
  std::string common_name;
  std::string token_sha256;
  bool has_certificate = false;

  bool empty() const { return !has_certificate && token_sha256.empty(); }
};

// The union of the grants of every principal the caller matches.
class Access {
 public:
  // Everything, for a server without a policy.
  static Access Unrestricted();

  bool MayUseNamespace(absl::string_view name_space) const;
  bool admin() const { return admin_; }
  // Names of the matched principals, joined by ',' ("" if none): for logs
  // and metrics.
  const std::string& principals() const { return principals_; }
  bool matched() const { return !principals_.empty(); }
  // How the caller identified itself, for error messages ("certificate URI
  // spiffe://...", "bearer token").
  const std::string& caller() const { return caller_; }
  void set_caller(std::string caller) { caller_ = std::move(caller); }

 private:
  friend class AuthPolicy;
  std::string principals_;
  std::string caller_;
  std::vector<std::string> exact_;
  std::vector<std::string> prefixes_;
  bool admin_ = false;
};

class AuthPolicy {
 public:
  static absl::StatusOr<AuthPolicy> Parse(absl::string_view yaml);
  static absl::StatusOr<AuthPolicy> Load(const std::string& path);

  Access Resolve(const CallerIdentity& caller) const;
  size_t size() const { return principals_.size(); }
  // True when some principal matches bearer tokens (the server then needs
  // TLS for them to be usable).
  bool uses_tokens() const;
  bool uses_certificates() const;

 private:
  enum class MatchKind { kUriSan, kDnsSan, kCommonName, kTokenSha256 };
  struct Principal {
    std::string name;
    MatchKind kind;
    std::string value;  // kTokenSha256: the raw 32-byte digest.
    std::vector<std::string> namespaces;
    bool admin = false;
  };
  static bool Matches(const Principal& principal, const CallerIdentity& caller);

  std::vector<Principal> principals_;
};

// Equal-length comparison whose time does not depend on where the inputs
// differ (OpenSSL's CRYPTO_memcmp); false for different lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace idem::server

#endif  // IDEM_SERVER_AUTH_AUTH_POLICY_H_
