// TLS for the gRPC port: server certificate and key, and optionally the CA
// that client certificates must chain to (mutual TLS). Rotated files (e.g.
// by cert-manager) take effect without a restart or dropped connections,
// once they are checked good (TlsReloader).
#ifndef IDEM_SERVER_AUTH_TLS_H_
#define IDEM_SERVER_AUTH_TLS_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
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

// Serves the operator's TLS files without ever handing gRPC a bad set.
//
// gRPC 1.51's file watcher loads whatever the files hold when they change:
// a certificate written before its key, a mismatched pair or a garbage CA
// bundle made every new connection fail, while the previous set was gone.
// So gRPC watches copies in a private directory instead, and the reloader
// installs a new set there only after checking it whole (CheckTlsFiles);
// a bad set is refused and the last good one keeps serving. The copies are
// switched by renaming a symbolic link, so gRPC reads one set or the other.
//
//   absl::StatusOr<std::unique_ptr<TlsReloader>> tls =
//       TlsReloader::Create(files);
//   builder.AddListeningPort(listen, (*tls)->Credentials(refresh));
//   ... every refresh, and on SIGHUP: (*tls)->Reload();
//
// Thread-safe.
class TlsReloader {
 public:
  // Checks `files` and installs them; INVALID_ARGUMENT saying what is wrong.
  static absl::StatusOr<std::unique_ptr<TlsReloader>> Create(
      const TlsFiles& files);
  // Removes the copies.
  ~TlsReloader();

  // TLS credentials that gRPC re-reads from the copies every `refresh` (at
  // least 1 s).
  std::shared_ptr<grpc::ServerCredentials> Credentials(
      absl::Duration refresh) const;

  struct Outcome {
    enum class Kind { kUnchanged, kInstalled, kRefused } kind;
    // kInstalled and kUnchanged: the set in use (subject, expiry);
    // kRefused: what is wrong with the new files.
    std::string detail;
  };
  // Reads the operator's files. When they differ from the set seen last
  // (or `force`), checks them and installs them if they are good.
  Outcome Reload(bool force);

  // The description of the set in use.
  std::string current() const;

  // The set in use, for other listeners of this server (the HTTP port):
  // `generation` grows with each installed set.
  struct Installed {
    int generation = 0;
    std::string cert, key, client_ca;
  };
  Installed installed() const;
  int generation() const;

  // Calls Reload(false) every `every` on a thread of its own, and
  // `on_change` with each outcome that is not kUnchanged, until destroyed.
  void Watch(absl::Duration every,
             std::function<void(const Outcome&)> on_change);

 private:
  struct Pem {
    std::string cert, key, client_ca;
    bool operator==(const Pem&) const = default;
  };

  TlsReloader(TlsFiles files, std::string dir)
      : files_(std::move(files)), dir_(std::move(dir)) {}
  // kRefused for `why`, or kUnchanged when the same refusal was reported
  // already (a missing file would otherwise be logged every second).
  Outcome Refuse(std::string why, bool force)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Pem> Read() const;
  absl::Status Install(const Pem& pem) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TlsFiles files_;
  const std::string dir_;  // Private (0700); "current" links to a set.
  mutable absl::Mutex mu_;
  Pem seen_ ABSL_GUARDED_BY(mu_);  // The operator's files as last read.
  std::string current_ ABSL_GUARDED_BY(mu_);
  Pem installed_ ABSL_GUARDED_BY(mu_);  // The set in use.
  std::string last_refusal_ ABSL_GUARDED_BY(mu_);
  int generation_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Notification stop_;
  std::thread watcher_;
};

// Removes the private copies (TlsReloader) left under `base` by servers of
// this user that died without removing them (kill -9, power loss): those
// whose process no longer exists. Create() calls it; returns how many.
int RemoveStaleTlsCopies(const std::string& base);

// Plaintext credentials.
std::shared_ptr<grpc::ServerCredentials> InsecureCredentials();

}  // namespace idem::server

#endif  // IDEM_SERVER_AUTH_TLS_H_
