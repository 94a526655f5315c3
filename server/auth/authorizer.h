// Decides, per call, who the caller is and what it may do: the identity
// comes from the verified client certificate (mTLS) and from a bearer token
// (`authorization: Bearer TOKEN` metadata, accepted over TLS only), and the
// grants from the policy. Without a policy every caller may do everything.
#ifndef IDEM_SERVER_AUTH_AUTHORIZER_H_
#define IDEM_SERVER_AUTH_AUTHORIZER_H_

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_context.h"
#include "server/auth/auth_policy.h"
#include "server/ops/metrics.h"

namespace idem::server {

class Authorizer {
 public:
  // `policy` may be null (open); `metrics` may be null. Not owned; both
  // must outlive the authorizer.
  explicit Authorizer(const AuthPolicy* policy, Metrics* metrics = nullptr);

  bool open() const { return policy_ == nullptr; }

  // Another door of this server (the HTTP gateway) calls the services over
  // the in-process channel on behalf of its own caller: Forward() puts
  // that caller's TLS state and verified client certificate on the call,
  // and Authenticate() believes them only alongside this process's secret
  // (random, never sent over a network), so that no remote gRPC caller can
  // claim an identity this way.
  const std::string& forwarding_secret() const { return forwarding_secret_; }
  static void Forward(const std::string& secret, bool tls,
                      const std::string& client_certificate_pem,
                      const std::string& peer, grpc::ClientContext* context);
  // The caller's address for logs: the HTTP caller's ("http:IP:PORT") for
  // a forwarded call, else gRPC's peer.
  std::string Peer(const grpc::ServerContextBase& context) const;

  // UNAUTHENTICATED when the caller proved no identity (no verified client
  // certificate and no known bearer token over TLS), or sent a token over
  // plaintext.
  absl::StatusOr<Access> Authenticate(
      const grpc::ServerContextBase& context) const;
  // PERMISSION_DENIED unless `access` covers the namespace.
  absl::Status CheckNamespace(const Access& access,
                              absl::string_view name_space) const;
  // PERMISSION_DENIED unless `access` may call the Admin service.
  absl::Status CheckAdmin(const Access& access) const;

 private:
  // Names in a client certificate (PEM), parsed once per certificate.
  CallerIdentity CertificateIdentity(const std::string& pem) const;
  void Record(absl::string_view principal, absl::string_view result) const;
  // Whether `context` carries this process's forwarding secret.
  bool IsForwarded(const grpc::ServerContextBase& context) const;
  // Record the decision. A caller no principal matches is told so, with
  // its names; a matched one gets `why`.
  absl::Status Allow(const Access& access) const;
  absl::Status Deny(const Access& access, absl::string_view why) const;

  const AuthPolicy* const policy_;
  Metrics* const metrics_;
  const std::string forwarding_secret_;
  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<std::string, CallerIdentity> certificates_
      ABSL_GUARDED_BY(mu_);
};

// The names of a PEM certificate: URI and DNS subject alternative names and
// the subject's common name. has_certificate is false if it does not parse.
CallerIdentity ParseCertificateIdentity(absl::string_view pem);

}  // namespace idem::server

#endif  // IDEM_SERVER_AUTH_AUTHORIZER_H_
