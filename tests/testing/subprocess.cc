#include "tests/testing/subprocess.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tests/testing/temp_dir.h"

namespace idem::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env) {
  TempDir dir;
  const std::string out_path = dir.Sub("out");
  const std::string err_path = dir.Sub("err");
  // Everything the child needs is prepared before fork(): after it, only
  // async-signal-safe calls are allowed in a threaded parent.
  std::vector<std::string> args = argv;
  std::vector<char*> raw_args;
  for (std::string& arg : args) raw_args.push_back(arg.data());
  raw_args.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (env.count(entry.substr(0, entry.find('='))) == 0) {
      env_strings.push_back(entry);
    }
  }
  for (const auto& [name, value] : env) {
    env_strings.push_back(name);
    env_strings.back().append("=").append(value);
  }
  std::vector<char*> raw_env;
  for (std::string& e : env_strings) raw_env.push_back(e.data());
  raw_env.push_back(nullptr);

  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // Dies with the test.
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int null = open("/dev/null", O_RDONLY);
    if (out < 0 || err < 0 || null < 0) _exit(126);
    dup2(null, STDIN_FILENO);
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    execve(raw_args[0], raw_args.data(), raw_env.data());
    _exit(127);
  }
  CommandResult result;
  int status = 0;
  if (pid > 0 && waitpid(pid, &status, 0) == pid) {
    result.exit_code =
        WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  }
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

}  // namespace idem::testing
