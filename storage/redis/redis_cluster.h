// A small Redis Cluster client on hiredis. Debian 12 ships hiredis 0.14,
// which speaks to one server only; this adds what a cluster needs: the slot
// map (CLUSTER SLOTS), MOVED and ASK redirects, TRYAGAIN / CLUSTERDOWN /
// LOADING retries, reconnects and a connection pool per node.
//
// Usage:
//   absl::StatusOr<std::unique_ptr<RedisCluster>> cluster =
//       RedisCluster::Connect({.seeds = {"10.0.0.1:6379"}});
//   absl::StatusOr<RedisReply> got =
//       (*cluster)->Run(KeySlot("k"), {"GET", "k"});
//
// Thread safety: every method may be called from any thread. Calls block
// (hiredis is synchronous): run them on threads that may wait.
//
// Errors: a reply Redis gives as an error (other than the redirects and
// transient cluster states handled here) is a RedisReply of kind kError, not
// a failed status. A failed status (UNAVAILABLE) means no node answered
// within `retry_deadline`: the command may or may not have run.
#ifndef IDEM_STORAGE_REDIS_REDIS_CLUSTER_H_
#define IDEM_STORAGE_REDIS_REDIS_CLUSTER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct redisContext;

namespace idem::storage {

inline constexpr int kRedisSlots = 16384;

// The cluster slot of a key, with Redis's hash-tag rule: when the key holds
// "{...}" with something between the braces, only that part is hashed.
int KeySlot(absl::string_view key);

// One reply, copied out of hiredis.
struct RedisReply {
  enum class Kind { kNil, kInteger, kString, kStatus, kError, kArray };
  Kind kind = Kind::kNil;
  int64_t integer = 0;
  // kString, kStatus and kError.
  std::string text;
  std::vector<RedisReply> elements;

  bool is_error() const { return kind == Kind::kError; }
  // The first word of an error ("MOVED", "NOSCRIPT"), empty otherwise.
  absl::string_view error_code() const;
};

using RedisCommand = std::vector<std::string>;

// A slot being moved between masters: its master set it MIGRATING, the
// target IMPORTING (CLUSTER SETSLOT), until the last key moved and both
// agree on the new owner. An interrupted reshard leaves it so.
struct SlotMigration {
  int slot = 0;
  // host:port of each side; empty when no master of the map says.
  std::string from;
  std::string to;
};

// The migrations one node reports as its own in `cluster_nodes` (the text
// of CLUSTER NODES): "[SLOT->-ID]" migrating to ID, "[SLOT-<-ID]"
// importing from ID, on the line flagged "myself".
std::vector<SlotMigration> ParseSlotMigrations(absl::string_view cluster_nodes);

struct RedisClusterOptions {
  // host:port of one or more nodes; the rest are learnt from the cluster.
  std::vector<std::string> seeds;
  absl::Duration connect_timeout = absl::Milliseconds(500);
  // One command's reply, on a connection that is up.
  absl::Duration command_timeout = absl::Seconds(2);
  // How long one Run() keeps trying through redirects, failovers and lost
  // connections before it gives up with UNAVAILABLE.
  absl::Duration retry_deadline = absl::Seconds(10);
  // Sent with AUTH on every new connection when the password is not empty
  // (with the user too when set: Redis 6+ ACLs).
  std::string user;
  std::string password;
};

class RedisCluster {
 public:
  // Bounds every Run on this thread, while it lives, by `deadline` (besides
  // each Run's own retry_deadline): an operation made of several round
  // trips (read, write, confirm) then answers within one deadline.
  class ScopedDeadline {
   public:
    explicit ScopedDeadline(absl::Time deadline);
    ~ScopedDeadline();
    ScopedDeadline(const ScopedDeadline&) = delete;
    ScopedDeadline& operator=(const ScopedDeadline&) = delete;

   private:
    const absl::Time previous_;
  };

  // Connects to a seed and loads the slot map. Fails when no seed answers
  // or the nodes are not a cluster.
  static absl::StatusOr<std::unique_ptr<RedisCluster>> Connect(
      RedisClusterOptions options);
  ~RedisCluster();
  RedisCluster(const RedisCluster&) = delete;
  RedisCluster& operator=(const RedisCluster&) = delete;

  // Runs `commands` pipelined on one connection to the master of `slot`, in
  // order, and returns one reply each. Every command must touch only keys
  // of `slot` (or none). Redirects and transient errors in any reply make
  // the whole pipeline run again where the cluster says.
  // With `tryagain_is_reply`, a TRYAGAIN (a multi-key command on a slot
  // being migrated, whose keys are split between two nodes) is returned as
  // a reply instead of retried until it passes: the caller can switch to
  // single-key commands.
  absl::StatusOr<std::vector<RedisReply>> RunPipeline(
      int slot, const std::vector<RedisCommand>& commands,
      bool tryagain_is_reply = false);
  absl::StatusOr<RedisReply> Run(int slot, const RedisCommand& command);

  // Runs `command` once on every master (as the slot map knows them now),
  // e.g. SCAN or SCRIPT LOAD. One reply per master, with its address.
  absl::StatusOr<std::vector<std::pair<std::string, RedisReply>>>
  RunOnEveryMaster(const RedisCommand& command);
  // Runs `command` on the node at `address` (a master from the map), once
  // more on a new connection if the first fails: only for commands that
  // are safe to repeat.
  absl::StatusOr<RedisReply> RunOnNode(const std::string& address,
                                       const RedisCommand& command);

  // The slots being migrated, as the masters report them (CLUSTER NODES on
  // each, as RunQuick), one entry per slot; UNAVAILABLE when a master does
  // not answer within kHealthTimeout.
  absl::StatusOr<std::vector<SlotMigration>> SlotMigrations();

  // Reloads the slot map from any node that answers.
  absl::Status RefreshSlots();
  // OK when every slot has a master and each master answers PING within
  // kHealthTimeout (on a new connection each time).
  absl::Status CheckHealth();
  static constexpr absl::Duration kHealthTimeout = absl::Milliseconds(500);
  // `command` once on the node at `address`, on a new connection that waits
  // kHealthTimeout at most: for checks that must not stall behind a hung
  // node (the pooled connections wait command_timeout, twice).
  absl::StatusOr<RedisReply> RunQuick(const std::string& address,
                                      const RedisCommand& command);
  // Master addresses, for subscribers and scans.
  std::vector<std::string> Masters();
  // Each master with one slot it serves (to run slot-bound probes there).
  std::vector<std::pair<std::string, int>> MasterSlots();
  const RedisClusterOptions& options() const { return options_; }

  // A new connection that is not pooled (for SUBSCRIBE). Null and an error
  // when the node cannot be reached.
  absl::StatusOr<redisContext*> ConnectTo(const std::string& address,
                                          absl::Duration read_timeout);

 private:
  struct Node;

  explicit RedisCluster(RedisClusterOptions options);
  std::string MasterOf(int slot);
  Node& NodeAt(const std::string& address);
  // One attempt on one node; a transport error closes the connection. It
  // waits for the replies until `deadline` at the latest (and at most the
  // command timeout).
  absl::StatusOr<std::vector<RedisReply>> Attempt(
      const std::string& address, const std::vector<RedisCommand>& commands,
      bool asking, absl::Time deadline = absl::InfiniteFuture());
  absl::Status LoadSlotsFrom(const std::string& address);

  const RedisClusterOptions options_;
  absl::Mutex mu_;
  // Index into masters_ per slot; -1 when no master is known.
  std::array<int, kRedisSlots> slot_master_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> masters_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<Node>> nodes_
      ABSL_GUARDED_BY(mu_);
  absl::Time last_refresh_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_REDIS_REDIS_CLUSTER_H_
