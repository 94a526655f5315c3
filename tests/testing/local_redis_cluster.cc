#include "tests/testing/local_redis_cluster.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/testing/ports.h"
#include "tests/testing/spawn.h"
#include "tests/testing/subprocess.h"

namespace idem::testing {
namespace {

constexpr char kRedisServer[] = "/usr/bin/redis-server";
constexpr char kRedisCli[] = "/usr/bin/redis-cli";

// A port whose cluster bus port (+10000) is free too, not yet taken by
// another node of this cluster.
int PickPort(std::vector<int>* taken) {
  for (int tries = 0; tries < 100; ++tries) {
    const int port = PickLoopbackPort(10000);
    if (port < 0) return -1;
    if (std::find(taken->begin(), taken->end(), port) != taken->end()) continue;
    taken->push_back(port);
    return port;
  }
  return -1;
}

std::string Port(const std::string& address) {
  return address.substr(address.rfind(':') + 1);
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalRedisCluster>> LocalRedisCluster::Start(
    int masters, int replicas_per_master, const std::string& password,
    Persistence persistence) {
  std::unique_ptr<LocalRedisCluster> cluster(new LocalRedisCluster());
  cluster->password_ = password;
  std::vector<int> ports;
  const int total = masters * (1 + replicas_per_master);
  for (int i = 0; i < total; ++i) {
    const int port = PickPort(&ports);
    if (port < 0) return absl::UnavailableError("no free port pair");
    const std::string dir = cluster->dir_.Sub(absl::StrCat(port));
    std::filesystem::create_directories(dir);
    std::vector<std::string> args = {
        kRedisServer, "--port", absl::StrCat(port), "--bind", "127.0.0.1",
        "--dir", dir, "--cluster-enabled", "yes", "--cluster-config-file",
        dir + "/nodes.conf", "--cluster-node-timeout", "1000", "--save", "",
        // Replicas sync at once (the default
        // waits 5 s for more replicas).
        "--repl-diskless-sync-delay", "0", "--daemonize", "no", "--logfile",
        ""};
    if (persistence == Persistence::kNone) {
      args.insert(args.end(), {"--appendonly", "no"});
    } else {
      args.insert(
          args.end(),
          {"--appendonly", "yes", "--appendfsync",
           persistence == Persistence::kAofAlways ? "always" : "everysec"});
    }
    if (!password.empty()) {
      args.insert(args.end(),
                  {"--requirepass", password, "--masterauth", password});
    }
    Process process;
    process.address = absl::StrCat("127.0.0.1:", port);
    process.args = args;
    process.pid = SpawnProcess(std::move(args), dir + "/redis.log");
    if (process.pid < 0) return absl::InternalError("fork failed");
    cluster->nodes_.push_back(process);
  }
  // Wait for every node to answer.
  for (const Process& node : cluster->nodes_) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (true) {
      absl::StatusOr<std::string> pong = cluster->Cli(node.address, {"PING"});
      if (pong.ok() && absl::StrContains(*pong, "PONG")) break;
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("redis-server ", node.address, " did not start:\n",
                         cluster->log(node.address)));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  std::vector<std::string> create = {kRedisCli};
  for (const std::string& arg : cluster->CliAuth()) create.push_back(arg);
  create.insert(create.end(), {"--cluster", "create"});
  for (const Process& node : cluster->nodes_) create.push_back(node.address);
  create.insert(create.end(),
                {"--cluster-replicas", absl::StrCat(replicas_per_master),
                 "--cluster-yes"});
  const CommandResult created = RunCommand(create);
  if (created.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("redis-cli --cluster create: ", created.out, created.err));
  }
  absl::Status healthy = cluster->WaitHealthy(absl::Seconds(30));
  if (!healthy.ok()) return healthy;
  // Replicas have synced: WAIT can count them, and they may fail over.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (const Process& node : cluster->nodes_) {
    while (true) {
      absl::StatusOr<std::string> info =
          cluster->Cli(node.address, {"INFO", "replication"});
      if (info.ok() &&
          (absl::StrContains(*info, "role:master")
               ? absl::StrContains(*info, absl::StrCat("connected_slaves:",
                                                       replicas_per_master))
               : absl::StrContains(*info, "master_link_status:up"))) {
        break;
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "Redis replicas did not sync in 30s: ", node.address, " ",
            info.ok() ? *info : std::string(info.status().message())));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  return cluster;
}

LocalRedisCluster::~LocalRedisCluster() {
  for (Process& node : nodes_) {
    if (node.pid > 0) {
      kill(node.pid, SIGKILL);
      waitpid(node.pid, nullptr, 0);
    }
  }
}

std::string LocalRedisCluster::Seeds() const {
  return absl::StrJoin(Addresses(), ",");
}

std::vector<std::string> LocalRedisCluster::Addresses() const {
  std::vector<std::string> out;
  for (const Process& node : nodes_) out.push_back(node.address);
  return out;
}

absl::StatusOr<std::string> LocalRedisCluster::Cli(
    const std::string& address, const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {kRedisCli, "-h", "127.0.0.1", "-p",
                                   Port(address)};
  for (const std::string& arg : CliAuth()) argv.push_back(arg);
  argv.insert(argv.end(), args.begin(), args.end());
  const CommandResult result = RunCommand(argv);
  if (result.exit_code != 0) {
    return absl::UnavailableError(
        absl::StrCat("redis-cli ", absl::StrJoin(args, " "), " on ", address,
                     ": ", result.out, result.err));
  }
  return result.out;
}

absl::StatusOr<std::vector<LocalRedisCluster::NodeInfo>>
LocalRedisCluster::Nodes(const std::string& asking) const {
  absl::StatusOr<std::string> text = Cli(asking, {"CLUSTER", "NODES"});
  if (!text.ok()) return text.status();
  std::vector<NodeInfo> nodes;
  for (absl::string_view line :
       absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link>
    // <slot ranges...>
    std::vector<std::string> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (fields.size() < 8) continue;
    NodeInfo node;
    node.id = fields[0];
    node.address = fields[1].substr(0, fields[1].find('@'));
    node.master = absl::StrContains(fields[2], "master");
    node.failed = absl::StrContains(fields[2], "fail");
    node.master_id = fields[3] == "-" ? "" : fields[3];
    for (size_t i = 8; i < fields.size(); ++i) {
      if (fields[i].front() == '[') continue;  // A slot being migrated.
      std::vector<std::string> range = absl::StrSplit(fields[i], '-');
      int first = 0;
      int last = 0;
      if (!absl::SimpleAtoi(range[0], &first)) continue;
      last = first;
      if (range.size() == 2 && !absl::SimpleAtoi(range[1], &last)) continue;
      node.slots += last - first + 1;
    }
    nodes.push_back(node);
  }
  return nodes;
}

absl::Status LocalRedisCluster::Restart(const std::string& address) {
  for (Process& node : nodes_) {
    if (node.address != address) continue;
    if (node.pid > 0) return absl::FailedPreconditionError("still running");
    node.pid = SpawnProcess(node.args, dir_.Sub(Port(address)) + "/redis.log");
    if (node.pid < 0) return absl::InternalError("fork failed");
    return absl::OkStatus();
  }
  return absl::NotFoundError(address);
}

absl::Status LocalRedisCluster::WaitReplicaInSync(
    const std::string& address, absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last;
  while (absl::Now() < deadline) {
    absl::StatusOr<std::string> info = Cli(address, {"INFO", "replication"});
    if (info.ok() && absl::StrContains(*info, "role:slave") &&
        absl::StrContains(*info, "master_link_status:up") &&
        !absl::StrContains(*info, "master_sync_in_progress:1")) {
      return absl::OkStatus();
    }
    last = info.ok() ? *info : std::string(info.status().message());
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(address, " is not an in-sync replica: ", last));
}

void LocalRedisCluster::Signal(const std::string& address, int signal_number) {
  for (Process& node : nodes_) {
    if (node.address == address && node.pid > 0) kill(node.pid, signal_number);
  }
}

void LocalRedisCluster::Kill(const std::string& address) {
  for (Process& node : nodes_) {
    if (node.address == address && node.pid > 0) {
      kill(node.pid, SIGKILL);
      waitpid(node.pid, nullptr, 0);
      node.pid = -1;
    }
  }
}

absl::Status LocalRedisCluster::WaitHealthy(absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last;
  while (absl::Now() < deadline) {
    bool healthy = true;
    for (const Process& node : nodes_) {
      if (node.pid <= 0) continue;
      absl::StatusOr<std::string> info = Cli(node.address, {"CLUSTER", "INFO"});
      if (!info.ok() || !absl::StrContains(*info, "cluster_state:ok") ||
          !absl::StrContains(*info, "cluster_slots_ok:16384")) {
        healthy = false;
        last = info.ok() ? *info : std::string(info.status().message());
        break;
      }
      // Every slot is served by a node that runs (a killed master is only
      // noticed after the node timeout).
      absl::StatusOr<std::vector<NodeInfo>> seen = Nodes(node.address);
      if (!seen.ok()) {
        healthy = false;
        break;
      }
      for (const NodeInfo& other : *seen) {
        if (!other.master || other.slots == 0) continue;
        const bool running =
            std::any_of(nodes_.begin(), nodes_.end(), [&](const Process& p) {
              return p.address == other.address && p.pid > 0;
            });
        if (!running || other.failed) {
          healthy = false;
          last = absl::StrCat(node.address, " still sees slots on ",
                              other.address);
        }
      }
      if (!healthy) break;
    }
    if (healthy) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("Redis Cluster not healthy within ",
                   absl::FormatDuration(timeout), ": ", last));
}

absl::Status LocalRedisCluster::MoveSlots(const std::string& from,
                                          const std::string& to,
                                          int slots) const {
  absl::StatusOr<std::string> from_id = Cli(from, {"CLUSTER", "MYID"});
  absl::StatusOr<std::string> to_id = Cli(to, {"CLUSTER", "MYID"});
  if (!from_id.ok()) return from_id.status();
  if (!to_id.ok()) return to_id.status();
  std::vector<std::string> reshard = {kRedisCli};
  for (const std::string& arg : CliAuth()) reshard.push_back(arg);
  reshard.insert(
      reshard.end(),
      {"--cluster", "reshard", from, "--cluster-from",
       std::string(absl::StripAsciiWhitespace(*from_id)), "--cluster-to",
       std::string(absl::StripAsciiWhitespace(*to_id)), "--cluster-slots",
       absl::StrCat(slots), "--cluster-yes", "--cluster-pipeline", "20"});
  const CommandResult moved = RunCommand(reshard);
  if (moved.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("redis-cli --cluster reshard: ", moved.out, moved.err));
  }
  return absl::OkStatus();
}

std::vector<std::string> LocalRedisCluster::CliAuth() const {
  if (password_.empty()) return {};
  return {"-a", password_, "--no-auth-warning"};
}

std::string LocalRedisCluster::log(const std::string& address) const {
  std::ifstream in(dir_.Sub(Port(address)) + "/redis.log");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace idem::testing
