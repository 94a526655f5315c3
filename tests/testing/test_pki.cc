#include "tests/testing/test_pki.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/testing/subprocess.h"

namespace idem::testing {
namespace {

constexpr char kOpenssl[] = "/usr/bin/openssl";

absl::Status Run(const std::vector<std::string>& argv) {
  const CommandResult result = RunCommand(argv);
  if (result.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat(absl::StrJoin(argv, " "), " failed:\n", result.err));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CertFiles> TestPki::MakeCa(const std::string& name) {
  CertFiles ca{absl::StrCat(dir_, "/", name, ".crt"),
               absl::StrCat(dir_, "/", name, ".key")};
  absl::Status made = Run({kOpenssl,
                           "req",
                           "-x509",
                           "-newkey",
                           "ec",
                           "-pkeyopt",
                           "ec_paramgen_curve:P-256",
                           "-nodes",
                           "-keyout",
                           ca.key,
                           "-out",
                           ca.cert,
                           "-days",
                           "2",
                           "-subj",
                           "/CN=" + name,
                           "-addext",
                           "basicConstraints=critical,CA:TRUE",
                           "-addext",
                           "keyUsage=critical,keyCertSign,cRLSign"});
  if (!made.ok()) return made;
  return ca;
}

absl::StatusOr<CertFiles> TestPki::MakeLeaf(
    const CertFiles& ca, const std::string& name,
    const std::string& common_name, const std::vector<std::string>& sans) {
  CertFiles leaf{absl::StrCat(dir_, "/", name, ".crt"),
                 absl::StrCat(dir_, "/", name, ".key")};
  const std::string csr = absl::StrCat(dir_, "/", name, ".csr");
  const std::string extensions = absl::StrCat(dir_, "/", name, ".ext");
  {
    std::ofstream ext(extensions);
    ext << "basicConstraints=CA:FALSE\n"
        << "keyUsage=critical,digitalSignature,keyEncipherment\n"
        << "extendedKeyUsage=serverAuth,clientAuth\n";
    if (!sans.empty()) {
      ext << "subjectAltName=" << absl::StrJoin(sans, ",") << "\n";
    }
  }
  absl::Status made =
      Run({kOpenssl, "req", "-newkey", "ec", "-pkeyopt",
           "ec_paramgen_curve:P-256", "-nodes", "-keyout", leaf.key, "-out",
           csr, "-subj", "/CN=" + common_name});
  if (!made.ok()) return made;
  made = Run({kOpenssl, "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey",
              ca.key, "-CAcreateserial", "-out", leaf.cert, "-days", "2",
              "-extfile", extensions});
  if (!made.ok()) return made;
  return leaf;
}

}  // namespace idem::testing
