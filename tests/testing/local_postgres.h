// A real PostgreSQL (Debian's postgresql-15) on a loopback port, for tests:
// initdb in a temp dir, the server started, crashed, restarted and stopped
// by the test. PostgreSQL refuses to run as root, so when the test runs as
// root the data directory belongs to `nobody` and every PostgreSQL program
// runs as that user.
//
// Usage:
//   absl::StatusOr<std::unique_ptr<LocalPostgres>> pg = LocalPostgres::Start();
//   std::string uri = (*pg)->uri();   // postgresql://idem@127.0.0.1:PORT/idem
//   (*pg)->Crash(); (*pg)->Restart();
//
// A synchronous standby: StartStandby() makes a second server streaming
// from this one (pg_basebackup) that the primary waits for on every commit;
// Promote() turns it into a primary after the first one was crashed.
#ifndef IDEM_TESTS_TESTING_LOCAL_POSTGRES_H_
#define IDEM_TESTS_TESTING_LOCAL_POSTGRES_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/temp_dir.h"

namespace idem::testing {

class LocalPostgres {
 public:
  struct Options {
    // Extra server settings (-c name=value), after the defaults.
    std::vector<std::string> settings;
    // Names a synchronous standby the primary waits for (StartStandby).
    bool synchronous_standby = false;
    // Not empty: connections over TCP must give this password for "idem"
    // (scram-sha-256); the harness's own psql uses the Unix socket.
    std::string password;
  };

  // initdb, start, create the database "idem" and wait until it accepts
  // connections.
  static absl::StatusOr<std::unique_ptr<LocalPostgres>> Start(
      const Options& options);
  static absl::StatusOr<std::unique_ptr<LocalPostgres>> Start() {
    return Start(Options{});
  }
  // A standby of `primary`, streaming synchronously (when the primary was
  // started with synchronous_standby) and accepting read-only queries.
  static absl::StatusOr<std::unique_ptr<LocalPostgres>> StartStandby(
      const LocalPostgres& primary);
  ~LocalPostgres();
  LocalPostgres(const LocalPostgres&) = delete;
  LocalPostgres& operator=(const LocalPostgres&) = delete;

  int port() const { return port_; }
  // postgresql://idem@127.0.0.1:PORT/idem (trust authentication unless
  // Options::password).
  std::string uri() const;

  // Immediate shutdown (SIGQUIT): no checkpoint, crash recovery on the next
  // start, as after a power loss of the database's process.
  void Crash();
  // Starts it again after Crash() or Stop(), on the same port and data.
  absl::Status Restart();
  // A clean shutdown (SIGINT, fast mode).
  void Stop();
  // pg_ctl promote on a standby; waits until it takes writes.
  absl::Status Promote();

  // Runs SQL with psql; its output (unaligned, tuples only).
  absl::StatusOr<std::string> Sql(const std::string& sql) const;
  std::string log() const;

 private:
  LocalPostgres() = default;
  absl::Status StartServer();
  absl::Status WaitReady(absl::Duration timeout) const;
  // Runs a PostgreSQL program as the data directory's owner; its exit code.
  int RunAsOwner(const std::vector<std::string>& args) const;

  TempDir dir_;
  std::string bin_dir_;
  std::string data_dir_;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  int port_ = 0;
  std::vector<std::string> settings_;
  bool synchronous_standby_ = false;
  pid_t pid_ = -1;
};

}  // namespace idem::testing

#endif  // IDEM_TESTS_TESTING_LOCAL_POSTGRES_H_
