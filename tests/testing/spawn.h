// Starts helper processes (servers) for tests so that none outlives the test
// process, however it ends.
#ifndef IDEM_TESTS_TESTING_SPAWN_H_
#define IDEM_TESTS_TESTING_SPAWN_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace idem::testing {

// Starts args[0] (a path) with stdout and stderr appended to `log_path`;
// -1 if fork failed. The child is SIGKILLed when the test process dies.
pid_t SpawnProcess(std::vector<std::string> args, const std::string& log_path);

// The same, running as `uid`/`gid` (with no supplementary groups): for
// servers that refuse to run as root (PostgreSQL). Needs root unless they
// are this process's own.
pid_t SpawnProcessAs(std::vector<std::string> args, const std::string& log_path,
                     uid_t uid, gid_t gid);

}  // namespace idem::testing

#endif  // IDEM_TESTS_TESTING_SPAWN_H_
