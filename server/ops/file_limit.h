// The process's open-file limit. Every gRPC connection costs a descriptor,
// and so do RocksDB's write-ahead log, memtable switches and table files:
// under the common soft limit of 1024 (or a container's 256) a crowd of
// idle connections made a memtable switch fail with EMFILE. The server
// raises its soft limit to the hard one at start, so the descriptors the
// store needs are there.
#ifndef IDEM_SERVER_OPS_FILE_LIMIT_H_
#define IDEM_SERVER_OPS_FILE_LIMIT_H_

#include <cstdint>

namespace idem::server {

struct FileLimit {
  uint64_t before = 0;  // The soft limit found.
  uint64_t now = 0;     // The soft limit in force (the hard one if raised).
};

// Raises RLIMIT_NOFILE's soft limit to its hard limit.
FileLimit RaiseFileLimit();

}  // namespace idem::server

#endif  // IDEM_SERVER_OPS_FILE_LIMIT_H_
