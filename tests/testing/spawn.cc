#include "tests/testing/spawn.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <deque>
#include <thread>

#include "absl/synchronization/mutex.h"

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
  pid_t Spawn(std::vector<std::string> args, const std::string& log_path,
              uid_t uid, gid_t gid) {
    Request request{std::move(args), log_path, uid, gid};
    absl::MutexLock lock(&mu_);
    queue_.push_back(&request);
    mu_.Await(absl::Condition(&request.done));
    return request.pid;
  }

 private:
  struct Request {
    std::vector<std::string> args;
    std::string log_path;
    uid_t uid;
    gid_t gid;
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
      // A change of user clears the parent-death signal: change first.
      if (request.gid != getgid() &&
          (setgroups(0, nullptr) != 0 || setgid(request.gid) != 0)) {
        _exit(125);
      }
      if (request.uid != getuid() && setuid(request.uid) != 0) _exit(125);
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

pid_t SpawnProcess(std::vector<std::string> args, const std::string& log_path) {
  return Spawner::Get().Spawn(std::move(args), log_path, getuid(), getgid());
}

pid_t SpawnProcessAs(std::vector<std::string> args, const std::string& log_path,
                     uid_t uid, gid_t gid) {
  return Spawner::Get().Spawn(std::move(args), log_path, uid, gid);
}

}  // namespace idem::testing
