// Certificates for tests, made on the spot with the openssl command-line
// tool: certificate authorities and leaf certificates (server or client)
// with chosen subject alternative names, all valid for two days.
#ifndef IDEM_TESTS_TESTING_TEST_PKI_H_
#define IDEM_TESTS_TESTING_TEST_PKI_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace idem::testing {

struct CertFiles {
  std::string cert;  // PEM certificate.
  std::string key;   // PEM private key.
};

class TestPki {
 public:
  // Files are written under `dir`, which must exist.
  explicit TestPki(std::string dir) : dir_(std::move(dir)) {}

  // A self-signed certificate authority.
  absl::StatusOr<CertFiles> MakeCa(const std::string& name);
  // A certificate signed by `ca`, with subject CN `common_name` and the
  // given subject alternative names ("DNS:localhost", "IP:127.0.0.1",
  // "URI:spiffe://..."), usable by servers and clients.
  absl::StatusOr<CertFiles> MakeLeaf(const CertFiles& ca,
                                     const std::string& name,
                                     const std::string& common_name,
                                     const std::vector<std::string>& sans);

 private:
  std::string dir_;
};

}  // namespace idem::testing

#endif  // IDEM_TESTS_TESTING_TEST_PKI_H_
