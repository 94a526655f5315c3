#include "server/ops/file_limit.h"

#include <sys/resource.h>

namespace idem::server {

FileLimit RaiseFileLimit() {
  FileLimit limit;
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) != 0) return limit;
  limit.before = limit.now = files.rlim_cur;
  if (files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &files) == 0) limit.now = files.rlim_cur;
  }
  return limit;
}

}  // namespace idem::server
