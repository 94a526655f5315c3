#include "server/auth/tls.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "server/ops/read_file.h"

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

namespace {

// The checks of CheckTlsFiles on the files' contents.
absl::StatusOr<std::string> CheckPem(const TlsFiles& files,
                                     const std::string& cert_pem,
                                     const std::string& key_pem,
                                     const std::string& ca_pem) {
  Bio cert_bio = MemoryBio(cert_pem);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(files.cert, " holds no PEM certificate"));
  }
  Bio key_bio = MemoryBio(key_pem);
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
    Bio ca_bio = MemoryBio(ca_pem);
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

// Writes `data` to `path` with `mode`, whole or not at all.
absl::Status WriteFile(const std::string& path, const std::string& data,
                       std::filesystem::perms mode) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << data;
    if (!out.good()) {
      return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
    }
  }
  std::error_code error;
  std::filesystem::permissions(tmp, mode, error);
  if (!error) std::filesystem::rename(tmp, path, error);
  if (error) {
    return absl::UnavailableError(
        absl::StrCat("cannot write ", path, ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> CheckTlsFiles(const TlsFiles& files) {
  absl::StatusOr<std::string> cert_pem = ReadFile(files.cert, "certificate");
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(files.key, "private key");
  if (!key_pem.ok()) return key_pem.status();
  std::string ca_pem;
  if (!files.client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(files.client_ca, "client CA");
    if (!ca.ok()) return ca.status();
    ca_pem = *std::move(ca);
  }
  return CheckPem(files, *cert_pem, *key_pem, ca_pem);
}

int RemoveStaleTlsCopies(const std::string& base) {
  constexpr absl::string_view kPrefix = "idem-tls-";
  int removed = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(base, error)) {
    const std::string name = entry.path().filename().string();
    if (!absl::StartsWith(name, kPrefix)) continue;
    const absl::string_view rest =
        absl::string_view(name).substr(kPrefix.size());
    int pid = 0;
    if (!absl::SimpleAtoi(rest.substr(0, rest.find('-')), &pid) || pid <= 0 ||
        pid == getpid()) {
      continue;
    }
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;  // Alive, or unknown.
    struct stat info;
    if (lstat(entry.path().c_str(), &info) != 0 || !S_ISDIR(info.st_mode) ||
        info.st_uid != geteuid()) {
      continue;
    }
    std::error_code ignored;
    if (std::filesystem::remove_all(entry.path(), ignored) > 0) ++removed;
  }
  return removed;
}

absl::StatusOr<std::unique_ptr<TlsReloader>> TlsReloader::Create(
    const TlsFiles& files) {
  const char* tmpdir = std::getenv("TMPDIR");
  const std::string base =
      tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp";
  RemoveStaleTlsCopies(base);
  // The pid in the name lets a later server remove the copies of one that
  // was killed before it could (RemoveStaleTlsCopies).
  std::string pattern = absl::StrCat(base, "/idem-tls-", getpid(), "-XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {  // Mode 0700.
    return absl::UnavailableError(
        absl::StrCat("cannot create a private directory for the TLS files (",
                     pattern, "): ", std::strerror(errno)));
  }
  std::unique_ptr<TlsReloader> reloader(new TlsReloader(files, pattern));
  absl::StatusOr<Pem> pem = reloader->Read();
  if (!pem.ok()) return pem.status();
  absl::StatusOr<std::string> checked =
      CheckPem(files, pem->cert, pem->key, pem->client_ca);
  if (!checked.ok()) return checked.status();
  absl::MutexLock lock(&reloader->mu_);
  if (absl::Status installed = reloader->Install(*pem); !installed.ok()) {
    return installed;
  }
  reloader->seen_ = *pem;
  reloader->installed_ = *pem;
  reloader->current_ = *checked;
  return reloader;
}

TlsReloader::~TlsReloader() {
  stop_.Notify();
  if (watcher_.joinable()) watcher_.join();
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

absl::StatusOr<TlsReloader::Pem> TlsReloader::Read() const {
  Pem pem;
  absl::StatusOr<std::string> cert = ReadFile(files_.cert, "certificate");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(files_.key, "private key");
  if (!key.ok()) return key.status();
  pem.cert = *std::move(cert);
  pem.key = *std::move(key);
  if (!files_.client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(files_.client_ca, "client CA");
    if (!ca.ok()) return ca.status();
    pem.client_ca = *std::move(ca);
  }
  return pem;
}

absl::Status TlsReloader::Install(const Pem& pem) {
  namespace fs = std::filesystem;
  const std::string name = absl::StrCat("set-", ++generation_);
  const std::string set = absl::StrCat(dir_, "/", name);
  std::error_code error;
  fs::create_directory(set, error);
  if (error) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", set, ": ", error.message()));
  }
  const fs::perms kPrivate = fs::perms::owner_read | fs::perms::owner_write;
  for (const auto& [file, data] :
       {std::pair<const char*, const std::string*>{"key.pem", &pem.key},
        {"cert.pem", &pem.cert},
        {"ca.pem", &pem.client_ca}}) {
    if (absl::Status written =
            WriteFile(absl::StrCat(set, "/", file), *data, kPrivate);
        !written.ok()) {
      return written;
    }
  }
  // Atomic switch: gRPC reads "current/..." from one set or the other.
  const std::string link = absl::StrCat(dir_, "/current");
  fs::create_directory_symlink(name, link + ".tmp", error);
  if (!error) fs::rename(link + ".tmp", link, error);
  if (error) {
    return absl::UnavailableError(
        absl::StrCat("cannot switch ", link, ": ", error.message()));
  }
  // The set before the previous one is no longer read by anyone.
  fs::remove_all(absl::StrCat(dir_, "/set-", generation_ - 2), error);
  return absl::OkStatus();
}

TlsReloader::Outcome TlsReloader::Reload(bool force) {
  absl::StatusOr<Pem> pem = Read();
  absl::MutexLock lock(&mu_);
  if (!pem.ok()) {
    // A file is missing or unreadable (mid-rotation, or deleted).
    return Refuse(std::string(pem.status().message()), force);
  }
  if (*pem == seen_ && !force) return {Outcome::Kind::kUnchanged, current_};
  seen_ = *pem;
  absl::StatusOr<std::string> checked =
      CheckPem(files_, pem->cert, pem->key, pem->client_ca);
  if (!checked.ok()) {
    return Refuse(std::string(checked.status().message()), force);
  }
  if (absl::Status installed = Install(*pem); !installed.ok()) {
    return Refuse(std::string(installed.message()), force);
  }
  installed_ = *pem;
  current_ = *checked;
  last_refusal_.clear();
  return {Outcome::Kind::kInstalled, current_};
}

TlsReloader::Outcome TlsReloader::Refuse(std::string why, bool force) {
  if (why == last_refusal_ && !force) {
    return {Outcome::Kind::kUnchanged, current_};
  }
  last_refusal_ = why;
  return {Outcome::Kind::kRefused, std::move(why)};
}

void TlsReloader::Watch(absl::Duration every,
                        std::function<void(const Outcome&)> on_change) {
  watcher_ = std::thread([this, every, on_change = std::move(on_change)] {
    pthread_setname_np(pthread_self(), "idem-tls");
    while (!stop_.WaitForNotificationWithTimeout(every)) {
      const Outcome outcome = Reload(/*force=*/false);
      if (outcome.kind != Outcome::Kind::kUnchanged) on_change(outcome);
    }
  });
}

std::string TlsReloader::current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

int TlsReloader::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

TlsReloader::Installed TlsReloader::installed() const {
  absl::MutexLock lock(&mu_);
  return {generation_, installed_.cert, installed_.key, installed_.client_ca};
}

std::shared_ptr<grpc::ServerCredentials> TlsReloader::Credentials(
    absl::Duration refresh) const {
  const auto refresh_seconds = static_cast<unsigned int>(
      std::max<int64_t>(1, absl::ToInt64Seconds(refresh)));
  const std::string current = absl::StrCat(dir_, "/current/");
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          current + "key.pem", current + "cert.pem",
          files_.client_ca.empty() ? "" : current + "ca.pem", refresh_seconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (files_.client_ca.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ServerCredentials> InsecureCredentials() {
  return grpc::InsecureServerCredentials();
}

}  // namespace idem::server
