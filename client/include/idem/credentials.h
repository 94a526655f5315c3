// Channel credentials for an Idem server with TLS, mutual TLS and bearer
// tokens. Set the result as ClientOptions::credentials:
//
//   idem::client::TlsSettings tls;
//   tls.ca_file = "/etc/idem/ca.crt";         // trust for the server
//   tls.cert_file = "/etc/idem/tls.crt";      // mTLS: this client's identity
//   tls.key_file = "/etc/idem/tls.key";
//   options.credentials = *idem::client::MakeCredentials(tls);
#ifndef IDEM_CLIENT_CREDENTIALS_H_
#define IDEM_CLIENT_CREDENTIALS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"

namespace idem::client {

struct TlsSettings {
  // PEM CA bundle that verifies the server; empty: the system's roots.
  std::string ca_file;
  // Client certificate chain and key (PEM), for mutual TLS; both or neither.
  std::string cert_file;
  std::string key_file;
  // A bearer token sent as `authorization: Bearer TOKEN` on every call;
  // `token_file` is read at creation, surrounding whitespace removed.
  std::string token;
  std::string token_file;
};

// TLS credentials (always TLS: tokens are never sent over plaintext).
// INVALID_ARGUMENT when a file cannot be read or only one of cert/key is set.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeCredentials(
    const TlsSettings& settings);

}  // namespace idem::client

#endif  // IDEM_CLIENT_CREDENTIALS_H_
