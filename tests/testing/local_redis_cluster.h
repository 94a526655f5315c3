// A real Redis Cluster on loopback for tests: Debian's redis-server, N
// masters with R replicas each, in a temporary directory, killed with the
// test. Failover is fast (cluster-node-timeout 1 s); nothing is persisted
// to disk (replication is what keeps data through a failover).
#ifndef IDEM_TESTS_TESTING_LOCAL_REDIS_CLUSTER_H_
#define IDEM_TESTS_TESTING_LOCAL_REDIS_CLUSTER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/temp_dir.h"

namespace idem::testing {

class LocalRedisCluster {
 public:
  struct NodeInfo {
    std::string id;
    std::string address;  // 127.0.0.1:PORT
    bool master = false;
    bool failed = false;
    std::string master_id;  // Replicas: whose.
    int slots = 0;          // Masters: how many slots they serve.
  };

  // How the nodes persist their data.
  enum class Persistence {
    kNone,         // appendonly no, no RDB: a restarted master is empty.
    kAofEverySec,  // appendonly yes, appendfsync everysec.
    kAofAlways,    // appendonly yes, appendfsync always.
  };

  // Starts the nodes, creates the cluster and waits until it is healthy.
  // With a password, every node requires it (requirepass, masterauth).
  static absl::StatusOr<std::unique_ptr<LocalRedisCluster>> Start(
      int masters = 3, int replicas_per_master = 1,
      const std::string& password = "",
      Persistence persistence = Persistence::kAofEverySec);
  ~LocalRedisCluster();
  LocalRedisCluster(const LocalRedisCluster&) = delete;
  LocalRedisCluster& operator=(const LocalRedisCluster&) = delete;

  // "127.0.0.1:P1,127.0.0.1:P2,..." of every node started.
  std::string Seeds() const;
  std::vector<std::string> Addresses() const;
  // The cluster as `asking` (an address) sees it (CLUSTER NODES).
  absl::StatusOr<std::vector<NodeInfo>> Nodes(const std::string& asking) const;
  // Runs redis-cli against `address` with `args`; its output.
  absl::StatusOr<std::string> Cli(const std::string& address,
                                  const std::vector<std::string>& args) const;
  // SIGKILLs the node.
  void Kill(const std::string& address);
  // Sends a signal (SIGSTOP, SIGCONT) to a running node.
  void Signal(const std::string& address, int signal_number);
  // Starts a killed node again, with its cluster configuration: a failed
  // over master comes back as a replica of its successor.
  absl::Status Restart(const std::string& address);
  absl::Status WaitReplicaInSync(const std::string& address,
                                 absl::Duration timeout) const;
  // Waits until every live node reports cluster_state:ok with all slots
  // served by live masters.
  absl::Status WaitHealthy(absl::Duration timeout) const;
  // Moves `slots` slots from one master to another with redis-cli --cluster
  // reshard (keys migrate with MIGRATE, clients see ASK and MOVED).
  absl::Status MoveSlots(const std::string& from, const std::string& to,
                         int slots) const;
  std::string log(const std::string& address) const;

 private:
  struct Process {
    std::string address;
    std::vector<std::string> args;
    pid_t pid = -1;
  };
  LocalRedisCluster() = default;

  // redis-cli's password arguments (none without a password).
  std::vector<std::string> CliAuth() const;

  TempDir dir_;
  std::string password_;
  std::vector<Process> nodes_;
};

}  // namespace idem::testing

#endif  // IDEM_TESTS_TESTING_LOCAL_REDIS_CLUSTER_H_
