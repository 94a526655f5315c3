#include "server/tls.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "server/read_file.h"

namespace idem::server {
namespace {

using Bio = std::unique_ptr<BIO, decltype(&BIO_free)>;
Bio MemoryBio(const std::string& data) {
  return Bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())),
             &BIO_free);
}

std::string NameOf(const X509_NAME* name) {
  char buffer[512];
  X509_NAME_oneline(name, buffer, sizeof(buffer));
  return buffer;
}

std::string TimeOf(const ASN1_TIME* time) {
  Bio out(BIO_new(BIO_s_mem()), &BIO_free);
  ASN1_TIME_print(out.get(), time);
  char* data = nullptr;
  const long size = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

}  // namespace

absl::StatusOr<std::string> CheckTlsFiles(const TlsFiles& files) {
  absl::StatusOr<std::string> cert_pem = ReadFile(files.cert, "certificate");
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(files.key, "private key");
  if (!key_pem.ok()) return key_pem.status();

  Bio cert_bio = MemoryBio(*cert_pem);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(files.cert, " holds no PEM certificate"));
  }
  Bio key_bio = MemoryBio(*key_pem);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr),
      &EVP_PKEY_free);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(files.key, " holds no PEM private key"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the private key ", files.key,
                     " does not match the certificate ", files.cert));
  }
  std::string description = absl::StrCat(
      "subject=\"", NameOf(X509_get_subject_name(cert.get())),
      "\" not_after=\"", TimeOf(X509_get0_notAfter(cert.get())), "\"");
  if (!files.client_ca.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadFile(files.client_ca, "client CA");
    if (!ca_pem.ok()) return ca_pem.status();
    Bio ca_bio = MemoryBio(*ca_pem);
    int authorities = 0;
    while (X509* ca =
               PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr)) {
      X509_free(ca);
      ++authorities;
    }
    if (authorities == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(files.client_ca, " holds no PEM CA certificate"));
    }
    absl::StrAppend(&description, " client_cas=", authorities);
  }
  return description;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const TlsFiles& files, absl::Duration refresh) {
  if (files.cert.empty()) return grpc::InsecureServerCredentials();
  const auto refresh_seconds = static_cast<unsigned int>(
      std::max<int64_t>(1, absl::ToInt64Seconds(refresh)));
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          files.key, files.cert, files.client_ca, refresh_seconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (files.client_ca.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace idem::server
