// The Store on a Redis Cluster, for stateless Idem replicas that share keys.
//
// Every change is one transition of the shared key state machine
// (key_state_machine.h), applied atomically by a Lua script:
//   1. a read script returns Redis's TIME, the key's record and its slot's
//      token counter, in one step;
//   2. the state machine decides, with that time as "now";
//   3. an apply script writes the decided record (with a Redis TTL at its
//      expiry), raises the slot's token counter and announces the change,
//      only if the record is still the one read (compare-and-set);
//      otherwise the transition starts again from 1.
// So the rules are exactly the RocksDB store's, the clock is Redis's (skewed
// replica clocks agree), and two replicas racing on a key serialize in
// Redis.
//
// Keys (with `prefix`, "idem" by default):
//   {prefix}:r:{NS\0KEY}     the record (record_codec's encoding)
//   {prefix}:t:{TAG}         the token counter of one slot: TAG is chosen so
//                            that it hashes to that slot, so the counter
//                            lives beside the records it numbers, migrates
//                            with them, and never expires: tokens keep
//                            growing per key across releases and expiries.
//   {prefix}:changes         pub/sub channel: the record key of every key
//                            completed, released or deleted.
//
// Durability: Redis replication is asynchronous. With wait_replicas = N,
// every change is followed by WAIT N on the same connection, and the
// operation fails (UNAVAILABLE, the change may have been applied) unless N
// replicas acknowledged it within wait_timeout; see docs/cluster.md.
#ifndef IDEM_STORAGE_REDIS_REDIS_CLUSTER_STORE_H_
#define IDEM_STORAGE_REDIS_REDIS_CLUSTER_STORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "storage/clock.h"
#include "storage/record.pb.h"
#include "storage/redis/redis_cluster.h"
#include "storage/store.h"
#include "storage/transition.h"

struct redisReply;

namespace idem::storage {

// A slot migration that stayed open past
// RedisClusterStoreOptions::migration_stuck_after, or that closed after
// being reported so.
struct SlotMigrationReport {
  SlotMigration migration;
  absl::Duration open_for;  // Since the store first saw it open.
  bool closed = false;
};

struct RedisClusterStoreOptions {
  RedisClusterOptions cluster;
  // Replicas that must acknowledge each change (WAIT) before it is
  // reported done; 0 answers as soon as the master applied it.
  int wait_replicas = 0;
  absl::Duration wait_timeout = absl::Seconds(1);
  // Threads that run changes (each blocks on a round trip to Redis).
  int threads = 16;
  // Changes waiting for a thread beyond this are refused
  // (RESOURCE_EXHAUSTED).
  size_t max_pending = 100'000;
  // Every Redis key and the channel start with this, so that several
  // deployments (or tests) can share a cluster.
  std::string prefix = "idem";
  // Masters without an append-only file are refused: one that is killed
  // and restarted before its node timeout comes back empty, its replica
  // resyncs from it, and acknowledged results and token counters are gone
  // (work runs twice, tokens go backwards). True accepts that risk.
  bool accept_loss_on_restart = false;
  // A slot migration open longer than this (an interrupted reshard: keys
  // keep working, but each call on the slot pays extra round trips, and a
  // later reshard of the slot fails) is reported to on_slot_migration,
  // and again when it closes. Checked every 5 s.
  absl::Duration migration_stuck_after = absl::Minutes(1);
  std::function<void(const SlotMigrationReport&)> on_slot_migration;
  // Tests only: replaces Redis's TIME as the state machine's clock.
  const Clock* clock = nullptr;
};

class RedisClusterStore final : public TransitionStore {
 public:
  // Connects, loads the slot map and the scripts. Fails (UNAVAILABLE,
  // FAILED_PRECONDITION) when no node answers or they are not a cluster.
  static absl::StatusOr<std::unique_ptr<RedisClusterStore>> Open(
      RedisClusterStoreOptions options);
  // Finishes queued changes, then stops the threads.
  ~RedisClusterStore() override;

  // The other changes are TransitionStore's; Begin assigns an owner when
  // the caller sent none (see Enqueue).
  void BeginAsync(const BeginCommand& command, Done<BeginResult> done) override;

  // What the masters' settings weaken (appendfsync other than always, a
  // node whose CONFIG is disabled), one line each, for the start-up log.
  std::vector<std::string> durability_notes() const;

  // Always nullopt: answering needs a round trip to Redis, which must not
  // happen on the caller's (gRPC's) thread; BeginAsync answers instead.
  std::optional<absl::StatusOr<BeginResult>> PeekBegin(
      const BeginCommand& command, PeekHint* hint) override;
  absl::StatusOr<KeySnapshot> Lookup(const KeyId& id) override;
  // Scans every master for the namespace's keys and sorts them: the cost of
  // a page grows with the namespace (an operator's tool).
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<std::map<std::string, StateCounts>> CountKeys(
      const std::string& name_space) override;
  // estimated_keys: DBSIZE summed over the masters (every key, not only
  // Idem's); disk_bytes: 0; expired_dropped: records dropped by Redis TTLs
  // is not tracked per prefix, so 0; slot_migrations: as last seen (every
  // 5 s).
  StoreStats Stats() override;
  // OK while every slot has a master that answers PING (checked every
  // second).
  absl::Status Health() override;
  void WatchChanges(
      const std::function<void(const KeyId&)>& on_change) override;

  // Key names, for tests and operators.
  std::string RecordKey(const KeyId& id) const;
  std::string CounterKey(int slot) const;
  // The key a record key names; nullopt for other keys.
  std::optional<KeyId> ParseRecordKey(absl::string_view record_key) const;
  // Every Redis key of this prefix, on every master: for tests.
  absl::Status DeleteEverything();

 private:
  explicit RedisClusterStore(RedisClusterStoreOptions options,
                             std::unique_ptr<RedisCluster> cluster);

  // What a transition needs to know about the key as it is now.
  struct KeyRead {
    absl::Time now;
    std::optional<Record> record;
    std::string raw;  // The record's bytes as stored (compare-and-set).
    uint64_t counter = 0;
    // The slot is being migrated and the multi-key read was refused: the
    // transition writes with the single-key scripts.
    bool migrating = false;
  };
  // A change waiting for a thread of the store.
  struct Queued {
    std::unique_ptr<Transition> transition;
    bool undo_unconfirmed = false;
  };

  absl::StatusOr<KeyRead> Read(const std::string& key, int slot);
  // Read() with single-key commands, while the slot is being migrated.
  absl::StatusOr<KeyRead> ReadMigrating(const std::string& key, int slot);
  // A KeyRead from {TIME seconds, TIME microseconds, record, ...} and the
  // counter's reply.
  absl::StatusOr<KeyRead> ParseRead(const RedisReply& time_and_record,
                                    const RedisReply& counter) const;
  // With wait_replicas: true once that many replicas of the slot's master
  // have everything it applied so far (WAIT), the record read (`raw`)
  // included; false if the record changed since (read again).
  absl::StatusOr<bool> ConfirmReplicated(const std::string& key, int slot,
                                         const std::string& raw,
                                         bool migrating = false);
  absl::Status CheckAcknowledged(const RedisReply& acks);
  // Puts `key` back to `read` if the master still holds `written` (a write
  // WAIT could not confirm); the UNAVAILABLE status to answer either way.
  absl::Status Undo(const std::string& key, int slot, const KeyRead& read,
                    const std::string& written,
                    const absl::Status& unconfirmed);
  // Runs read → decide → compare-and-set until the record did not change
  // in between; the status to finish `transition` with.
  // `undo_unconfirmed`: a write that WAIT cannot confirm is put back to
  // the record read (an acquisition under an internal owner, which no
  // retry could resume, must not lock the key for its whole lease).
  absl::Status Run(Transition& transition, bool undo_unconfirmed);
  // Queues `transition` for a thread of the store, or finishes it with
  // UNAVAILABLE (stopping) or RESOURCE_EXHAUSTED (queue full).
  void Enqueue(std::unique_ptr<Transition> transition, bool undo_unconfirmed);
  void Apply(std::unique_ptr<Transition> transition) override;
  // With `wait`, a script that wrote is followed by WAIT; too few
  // acknowledgements are UNAVAILABLE, with *unconfirmed set (if given): the
  // write is on the master only.
  absl::StatusOr<RedisReply> RunScript(int slot, const std::string& script,
                                       const std::string& sha,
                                       const RedisCommand& keys_and_args,
                                       bool wait, bool* unconfirmed = nullptr,
                                       bool tryagain_is_reply = false);
  absl::StatusOr<std::vector<std::string>> ScanKeys(const std::string& match);
  void Work();
  // OK when `master`'s settings keep Idem's promises: noeviction, and an
  // append-only file (unless accept_loss_on_restart); FAILED_PRECONDITION
  // naming the setting otherwise. Adds what weaker settings risk to
  // durability_notes_.
  absl::Status CheckMasterSettings(const std::string& master);
  // CheckMasterSettings for masters not checked yet (new after a failover
  // or when the slot map changes); the first failure, or OK.
  absl::Status CheckNewMasters();
  // Does on the master of `slot` what calls will do, so that a missing
  // permission or setting fails at start, not after the work is done:
  // the three scripts on a probe key (GET, SET, DEL, INCRBY, PUBLISH on the
  // channel, TIME), WAIT with wait_replicas (and that many replicas
  // connected), and SUBSCRIBE to the channel. FAILED_PRECONDITION naming
  // what was refused; UNAVAILABLE when the master does not answer.
  absl::Status ProbeMaster(const std::string& master, int slot);
  absl::Status ProbeMasters();
  void Watch();
  // Asks the masters which slots are being migrated; updates
  // open_migrations_ and reports those open past migration_stuck_after
  // (and those that closed after being reported).
  void TrackMigrations();
  void Subscribe();
  // Wakes waiters for one pub/sub message.
  void Announced(const redisReply& reply);

  const RedisClusterStoreOptions options_;
  const std::unique_ptr<RedisCluster> cluster_;
  std::vector<std::string> counter_tags_;  // One per slot.
  std::string read_sha_;
  std::string apply_sha_;
  std::string confirm_sha_;
  // The single-key scripts used while a slot is being migrated.
  std::string read_one_sha_;
  std::string raise_sha_;
  std::string apply_one_sha_;
  std::string confirm_one_sha_;
  std::string record_prefix_;  // "{prefix}:r:{"
  std::string channel_;

  mutable absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status health_ ABSL_GUARDED_BY(mu_);
  std::function<void(const KeyId&)> on_change_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> durability_notes_ ABSL_GUARDED_BY(mu_);
  struct OpenMigration {
    SlotMigration migration;
    absl::Time since;
    bool reported = false;
  };
  std::map<int, OpenMigration> open_migrations_ ABSL_GUARDED_BY(mu_);
  // Masters whose settings passed; a failing one is checked again.
  std::set<std::string> checked_masters_;  // Watch()'s thread (and Open).
  std::vector<std::thread> workers_;
  std::thread watcher_;
  std::thread subscriber_;
  std::atomic<bool> stop_{false};
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_REDIS_REDIS_CLUSTER_STORE_H_
