// Runs a program to completion and captures its output and exit code, for
// tests that drive command-line tools.
#ifndef IDEM_TESTS_TESTING_SUBPROCESS_H_
#define IDEM_TESTS_TESTING_SUBPROCESS_H_

#include <map>
#include <string>
#include <vector>

namespace idem::testing {

struct CommandResult {
  int exit_code = -1;  // -N when killed by signal N.
  std::string out;
  std::string err;
};

// Runs argv[0] (a path) with `env` added to this process's environment.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env = {});

}  // namespace idem::testing

#endif  // IDEM_TESTS_TESTING_SUBPROCESS_H_
