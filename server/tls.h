// TLS for the gRPC port: server certificate and key, and optionally the CA
// that client certificates must chain to (mutual TLS). The files are watched
// by gRPC and re-read when they change, so rotated certificates (e.g. by
// cert-manager) take effect without a restart or dropped connections.
#ifndef IDEM_SERVER_TLS_H_
#define IDEM_SERVER_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"

namespace idem::server {

struct TlsFiles {
  std::string cert;       // PEM certificate chain; empty: plaintext.
  std::string key;        // PEM private key of `cert`.
  std::string client_ca;  // PEM CA bundle; non-empty: mTLS required.
};

// Reads and checks the files as gRPC will use them (the key matches the
// certificate, the CA bundle parses). Returns a one-line description for
// the log (subject, expiry), or what is wrong.
absl::StatusOr<std::string> CheckTlsFiles(const TlsFiles& files);

// Plaintext when files.cert is empty; otherwise TLS with the files watched
// every `refresh` (at least 1 s).
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const TlsFiles& files, absl::Duration refresh);

}  // namespace idem::server

#endif  // IDEM_SERVER_TLS_H_
