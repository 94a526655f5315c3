#include "tests/testing/local_postgres.h"

#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/testing/ports.h"
#include "tests/testing/spawn.h"
#include "tests/testing/subprocess.h"

namespace idem::testing {
namespace {

constexpr char kStandbyName[] = "idem_standby";

// $IDEM_PG_BINDIR, else the newest /usr/lib/postgresql/N/bin with initdb.
std::string BinDir() {
  if (const char* dir = std::getenv("IDEM_PG_BINDIR"); dir != nullptr) {
    return dir;
  }
  std::string best;
  std::error_code ignored;
  for (const auto& entry :
       std::filesystem::directory_iterator("/usr/lib/postgresql", ignored)) {
    const std::string bin = entry.path().string() + "/bin";
    if (std::filesystem::exists(bin + "/initdb") && bin > best) best = bin;
  }
  return best;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalPostgres>> LocalPostgres::Start(
    const Options& options) {
  std::unique_ptr<LocalPostgres> pg(new LocalPostgres());
  pg->bin_dir_ = BinDir();
  if (pg->bin_dir_.empty()) {
    return absl::FailedPreconditionError(
        "no PostgreSQL server found under /usr/lib/postgresql (install "
        "postgresql-15, or set IDEM_PG_BINDIR)");
  }
  pg->uid_ = getuid();
  pg->gid_ = getgid();
  if (geteuid() == 0) {
    const passwd* nobody = getpwnam("nobody");
    if (nobody == nullptr) {
      return absl::FailedPreconditionError("no user 'nobody' to run as");
    }
    pg->uid_ = nobody->pw_uid;
    pg->gid_ = nobody->pw_gid;
    if (chown(pg->dir_.path().c_str(), pg->uid_, pg->gid_) != 0) {
      return absl::InternalError("chown of the test directory failed");
    }
  }
  pg->data_dir_ = pg->dir_.Sub("data");
  std::vector<std::string> initdb_args = {pg->bin_dir_ + "/initdb",
                                          "-D",
                                          pg->data_dir_,
                                          "-U",
                                          "idem",
                                          "-E",
                                          "UTF8",
                                          "--locale=C",
                                          "--no-sync"};
  if (options.password.empty()) {
    initdb_args.emplace_back("--auth=trust");
  } else {
    const std::string password_file = pg->dir_.Sub("password");
    std::ofstream(password_file) << options.password << "\n";
    initdb_args.insert(initdb_args.end(),
                       {"--auth-local=trust", "--auth-host=scram-sha-256",
                        "--pwfile=" + password_file});
  }
  const int initdb = pg->RunAsOwner(initdb_args);
  if (initdb != 0) {
    return absl::InternalError(
        absl::StrCat("initdb failed (exit ", initdb, "): ", pg->log()));
  }
  pg->port_ = PickLoopbackPort();
  if (pg->port_ < 0) return absl::UnavailableError("no free loopback port");
  pg->settings_ = {"listen_addresses=127.0.0.1",
                   absl::StrCat("port=", pg->port_),
                   absl::StrCat("unix_socket_directories=", pg->dir_.path()),
                   "max_connections=200",
                   "shared_buffers=32MB",
                   "wal_level=replica",
                   "max_wal_senders=4",
                   "fsync=on",
                   "synchronous_commit=on"};
  // Named once the standby streams (StartStandby): before, every commit
  // (CREATE DATABASE's too) would wait for it.
  pg->synchronous_standby_ = options.synchronous_standby;
  for (const std::string& s : options.settings) pg->settings_.push_back(s);
  if (absl::Status started = pg->StartServer(); !started.ok()) return started;
  CommandResult created =
      RunCommand({pg->bin_dir_ + "/psql", "-X", "-q", "-h", pg->dir_.path(),
                  "-p", absl::StrCat(pg->port_), "-U", "idem", "-d", "postgres",
                  "-c", "CREATE DATABASE idem"});
  if (created.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("CREATE DATABASE failed: ", created.err));
  }
  return pg;
}

absl::StatusOr<std::unique_ptr<LocalPostgres>> LocalPostgres::StartStandby(
    const LocalPostgres& primary) {
  std::unique_ptr<LocalPostgres> pg(new LocalPostgres());
  pg->bin_dir_ = primary.bin_dir_;
  pg->uid_ = primary.uid_;
  pg->gid_ = primary.gid_;
  if (geteuid() == 0 &&
      chown(pg->dir_.path().c_str(), pg->uid_, pg->gid_) != 0) {
    return absl::InternalError("chown of the test directory failed");
  }
  pg->data_dir_ = pg->dir_.Sub("data");
  const int copied =
      pg->RunAsOwner({pg->bin_dir_ + "/pg_basebackup", "-h", "127.0.0.1", "-p",
                      absl::StrCat(primary.port_), "-U", "idem", "-D",
                      pg->data_dir_, "-R", "-X", "stream", "-c", "fast"});
  if (copied != 0) {
    return absl::InternalError(
        absl::StrCat("pg_basebackup failed (exit ", copied, "): ", pg->log()));
  }
  {
    // After -R's line: the last one wins, and names the standby so that
    // the primary's synchronous_standby_names matches it.
    std::ofstream conf(pg->data_dir_ + "/postgresql.auto.conf", std::ios::app);
    conf << "primary_conninfo = 'host=127.0.0.1 port=" << primary.port_
         << " user=idem application_name=" << kStandbyName << "'\n";
  }
  pg->port_ = PickLoopbackPort();
  if (pg->port_ < 0) return absl::UnavailableError("no free loopback port");
  pg->settings_ = primary.settings_;
  for (std::string& s : pg->settings_) {
    if (absl::StartsWith(s, "port=")) s = absl::StrCat("port=", pg->port_);
    if (absl::StartsWith(s, "unix_socket_directories=")) {
      s = absl::StrCat("unix_socket_directories=", pg->dir_.path());
    }
  }
  if (absl::Status started = pg->StartServer(); !started.ok()) return started;
  // Streaming, and (if the primary names it) synchronous.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    absl::StatusOr<std::string> state =
        primary.Sql(absl::StrCat("SELECT sync_state FROM pg_stat_replication "
                                 "WHERE application_name = '",
                                 kStandbyName, "'"));
    if (state.ok() &&
        *state == (primary.synchronous_standby_ ? "sync" : "async")) {
      return pg;
    }
    if (state.ok() && *state == "async" && primary.synchronous_standby_) {
      absl::Status named =
          primary
              .Sql(
                  absl::StrCat("ALTER SYSTEM SET synchronous_standby_names = '",
                               kStandbyName, "'"))
              .status();
      if (named.ok()) named = primary.Sql("SELECT pg_reload_conf()").status();
      if (!named.ok()) return named;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError("the standby did not start streaming");
}

LocalPostgres::~LocalPostgres() {
  if (pid_ > 0) {
    kill(pid_, SIGQUIT);
    waitpid(pid_, nullptr, 0);
  }
}

std::string LocalPostgres::uri() const {
  return absl::StrCat("postgresql://idem@127.0.0.1:", port_, "/idem");
}

int LocalPostgres::RunAsOwner(const std::vector<std::string>& args) const {
  const pid_t pid = SpawnProcessAs(args, dir_.Sub("tools.log"), uid_, gid_);
  if (pid < 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

absl::Status LocalPostgres::StartServer() {
  std::vector<std::string> args = {bin_dir_ + "/postgres", "-D", data_dir_};
  for (const std::string& s : settings_) {
    args.emplace_back("-c");
    args.push_back(s);
  }
  pid_ = SpawnProcessAs(args, dir_.Sub("postgres.log"), uid_, gid_);
  if (pid_ < 0) return absl::InternalError("fork failed");
  return WaitReady(absl::Seconds(60));
}

absl::Status LocalPostgres::WaitReady(absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      return absl::InternalError(
          absl::StrCat("postgres exited at start: ", log()));
    }
    CommandResult ready = RunCommand({bin_dir_ + "/pg_isready", "-q", "-h",
                                      "127.0.0.1", "-p", absl::StrCat(port_)});
    if (ready.exit_code == 0) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("postgres did not accept connections: ", log()));
}

void LocalPostgres::Crash() {
  if (pid_ <= 0) return;
  kill(pid_, SIGQUIT);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

void LocalPostgres::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGINT);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

absl::Status LocalPostgres::Restart() {
  if (pid_ > 0) return absl::FailedPreconditionError("still running");
  return StartServer();
}

absl::Status LocalPostgres::Promote() {
  const int promoted =
      RunAsOwner({bin_dir_ + "/pg_ctl", "promote", "-w", "-D", data_dir_});
  if (promoted != 0) {
    return absl::InternalError(
        absl::StrCat("pg_ctl promote failed (exit ", promoted, "): ", log()));
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    absl::StatusOr<std::string> recovering = Sql("SELECT pg_is_in_recovery()");
    if (recovering.ok() && *recovering == "f") return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError("the promoted standby stays read-only");
}

absl::StatusOr<std::string> LocalPostgres::Sql(const std::string& sql) const {
  CommandResult result =
      RunCommand({bin_dir_ + "/psql", "-X", "-q", "-A", "-t", "-v",
                  "ON_ERROR_STOP=1", "-h", dir_.path(), "-p",
                  absl::StrCat(port_), "-U", "idem", "-d", "idem", "-c", sql});
  if (result.exit_code != 0) {
    return absl::InternalError(absl::StrCat("psql: ", result.err));
  }
  return std::string(absl::StripTrailingAsciiWhitespace(result.out));
}

std::string LocalPostgres::log() const {
  std::ostringstream out;
  for (const char* name : {"tools.log", "postgres.log"}) {
    std::ifstream in(dir_.Sub(name));
    if (in) out << "--- " << name << "\n" << in.rdbuf();
  }
  return out.str();
}

}  // namespace idem::testing
