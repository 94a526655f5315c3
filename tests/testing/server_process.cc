#include "tests/testing/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <deque>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

#ifndef IDEM_SERVER_BINARY
#error "IDEM_SERVER_BINARY must name the idem-server executable"
#endif

namespace idem::testing {
namespace {

// Forks every server from one thread that lives as long as the test process.
// PR_SET_PDEATHSIG fires when the *thread* that forked exits, and tests
// start servers from threads that end (a restart in a helper thread); from
// this thread it fires only when the test process dies, however it dies, so
// no server outlives a crashed or killed test.
class Spawner {
 public:
  static Spawner& Get() {
    static Spawner* const spawner = new Spawner();  // Never destroyed.
    return *spawner;
  }

  // Starts argv[0] with stdout and stderr appended to `log_path`; -1 if
  // fork failed.
  pid_t Spawn(std::vector<std::string> args, const std::string& log_path) {
    Request request{std::move(args), log_path};
    absl::MutexLock lock(&mu_);
    queue_.push_back(&request);
    mu_.Await(absl::Condition(&request.done));
    return request.pid;
  }

 private:
  struct Request {
    std::vector<std::string> args;
    std::string log_path;
    pid_t pid = -1;
    bool done = false;
  };

  Spawner() {
    std::thread([this] { Loop(); }).detach();
  }

  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !queue_.empty();
  }

  void Loop() {
    while (true) {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Spawner::HasWork));
      Request* request = queue_.front();
      queue_.pop_front();
      request->pid = Fork(*request);
      request->done = true;
    }
  }

  static pid_t Fork(Request& request) {
    // Built before fork(): a threaded parent's child may only make
    // async-signal-safe calls.
    std::vector<char*> argv;
    for (std::string& arg : request.args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(126);  // The test died meanwhile.
      int log_fd =
          open(request.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (log_fd >= 0) {
        dup2(log_fd, STDOUT_FILENO);
        dup2(log_fd, STDERR_FILENO);
      }
      execv(argv[0], argv.data());
      _exit(127);
    }
    return pid;
  }

  absl::Mutex mu_;
  std::deque<Request*> queue_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

ServerProcess::ServerProcess(std::vector<std::string> extra_flags,
                             std::string data_dir)
    : data_dir_(data_dir.empty() ? dir_.Sub("data") : std::move(data_dir)),
      extra_flags_(std::move(extra_flags)) {}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Kill();
}

absl::Status ServerProcess::Start() {
  const std::string port_file = dir_.Sub("port");
  std::remove(port_file.c_str());
  // A restart keeps the port, so clients reconnect to the same address.
  std::vector<std::string> args = {
      IDEM_SERVER_BINARY, absl::StrCat("--listen=127.0.0.1:", port_),
      "--data-dir=" + data_dir_, "--port-file=" + port_file,
      "--metrics-listen=127.0.0.1:0"};
  args.insert(args.end(), extra_flags_.begin(), extra_flags_.end());
  pid_ = Spawner::Get().Spawn(std::move(args), dir_.Sub("server.log"));
  if (pid_ < 0) return absl::InternalError("fork failed");

  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("idem-server exited during start-up:\n", log()));
    }
    std::ifstream in(port_file);
    std::string metrics_line;
    if (in >> port_ && port_ > 0 && in >> metrics_line &&
        absl::SimpleAtoi(absl::StripPrefix(metrics_line, "metrics="),
                         &metrics_port_)) {
      auto channel = grpc::CreateChannel(
          address(), credentials_ != nullptr
                         ? credentials_
                         : grpc::InsecureChannelCredentials());
      if (channel->WaitForConnected(
              absl::ToChronoTime(absl::Now() + absl::Seconds(10)))) {
        return absl::OkStatus();
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  Kill();
  return absl::DeadlineExceededError(
      absl::StrCat("idem-server did not start in 30s:\n", log()));
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

int ServerProcess::Terminate() {
  if (Signal(SIGTERM) != 0) return -1;
  return Wait();
}

int ServerProcess::Signal(int signal_number) {
  return pid_ > 0 ? kill(pid_, signal_number) : -1;
}

int ServerProcess::Wait() {
  if (pid_ <= 0) return -1;
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
}

std::string ServerProcess::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

std::unique_ptr<v1::Idempotency::Stub> ServerProcess::NewStub() const {
  return v1::Idempotency::NewStub(grpc::CreateChannel(
      address(), credentials_ != nullptr ? credentials_
                                         : grpc::InsecureChannelCredentials()));
}

std::string ServerProcess::log() const {
  std::ifstream in(dir_.path() + "/server.log");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace idem::testing
