// The storage interface the server sees: one atomic operation per RPC on one
// idempotency key. Implementations (RocksDB embedded, later distributed
// stores) apply the transitions of key_state_machine.h atomically per key.
//
// Usage:
//   absl::StatusOr<std::unique_ptr<Store>> store = RocksDbStore::Open(...);
//   absl::StatusOr<BeginResult> begun = (*store)->Begin(command);
//
// Thread safety: every Store is safe for concurrent use without external
// synchronization; operations on one key are linearizable. Changes are
// asynchronous (BeginAsync, ...) with blocking wrappers (Begin, ...).
//
// Errors: normal outcomes (acquired, completed, in progress, mismatch) are
// values. Refusals are FAILED_PRECONDITION (the lease was lost) or
// ALREADY_EXISTS (a different result is stored). Storage failures are
// UNAVAILABLE; a record that cannot be decoded is DATA_LOSS.
#ifndef IDEM_STORAGE_STORE_H_
#define IDEM_STORAGE_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace idem::storage {

// Identifies one key. Keys in different namespaces never interact.
struct KeyId {
  std::string name_space;
  std::string key;
};

// An application result, stored by Complete and replayed by Begin.
struct Result {
  int32_t code = 0;
  std::string body;
  std::map<std::string, std::string> metadata;

  friend bool operator==(const Result&, const Result&) = default;
};

// What PeekBegin learnt about a key when Begin must write, carried to
// BeginAsync in the command so that the store need not read the key again.
// Only the store whose PeekBegin filled it reads it, and only to skip a read
// it can prove would find the same; the default says nothing.
struct PeekHint {
  // The store object that filled it: any other ignores it.
  uint64_t store_instance = 0;
  // Nonzero: the key had no record once every change of that store up to
  // this version was in.
  uint64_t absent_as_of = 0;
};

struct BeginCommand {
  KeyId id;
  // Compared byte for byte; empty only matches empty.
  std::string fingerprint;
  // Optional attempt id: the same owner re-acquires with the same token.
  std::string owner;
  absl::Duration lease;
  absl::Duration retention;
  // The caller's deadline: a store whose operations wait on a network
  // (Redis Cluster) gives up then instead of at its own timeout. Also in
  // the other commands below.
  absl::Time deadline = absl::InfiniteFuture();
  // From PeekBegin (see PeekHint).
  PeekHint hint = {};
};

enum class BeginOutcome { kAcquired, kCompleted, kInProgress, kMismatch };

struct BeginResult {
  BeginOutcome outcome = BeginOutcome::kMismatch;
  // kAcquired only: the caller's fencing token.
  uint64_t token = 0;
  // kAcquired: the caller's lease; kInProgress: the holder's lease.
  absl::Time lease_expires_at = absl::InfinitePast();
  // kInProgress: how long the holder's lease has left by the store's clock,
  // which may not be this process's (Redis Cluster): wait this long, not
  // until lease_expires_at by the local clock.
  absl::Duration lease_left = absl::ZeroDuration();
  // kCompleted only.
  Result result;
  absl::Time completed_at = absl::InfinitePast();
  // kCompleted: until when the result is kept.
  absl::Time expires_at = absl::InfinitePast();
  // kAcquired and kCompleted: how many times the key was acquired.
  uint32_t attempt = 0;
  // kAcquired: the last checkpoint of an earlier holder of this request
  // (after a takeover or a release), empty if none.
  std::string checkpoint;
  // kAcquired: the key was taken over from a holder whose lease lapsed.
  bool took_over = false;
};

struct CompleteCommand {
  KeyId id;
  uint64_t token = 0;
  Result result;
  // Overrides the retention given to Begin.
  std::optional<absl::Duration> retention;
  absl::Time deadline = absl::InfiniteFuture();
};

struct CompleteResult {
  absl::Time completed_at;
  absl::Time expires_at;
};

struct ReleaseCommand {
  KeyId id;
  uint64_t token = 0;
  absl::Time deadline = absl::InfiniteFuture();
};

struct CheckpointCommand {
  KeyId id;
  uint64_t token = 0;
  std::string checkpoint;
  absl::Time deadline = absl::InfiniteFuture();
};

struct ExtendCommand {
  KeyId id;
  uint64_t token = 0;
  absl::Duration lease;
  absl::Time deadline = absl::InfiniteFuture();
};

enum class KeyState { kAbsent, kInProgress, kCompleted };

// What Lookup reports. Never carries the holder's token.
struct KeySnapshot {
  KeyState state = KeyState::kAbsent;
  std::string fingerprint;
  absl::Time lease_expires_at = absl::InfinitePast();
  // In progress, and the lease had lapsed by the store's clock when the
  // snapshot was taken: the next Begin takes the key over. The one place
  // this is decided (Snapshot in key_state_machine.cc).
  bool lease_lapsed = false;
  Result result;
  absl::Time completed_at = absl::InfinitePast();
  absl::Time created_at = absl::InfinitePast();
  absl::Time expires_at = absl::InfinitePast();
  uint32_t attempt = 0;
  std::string checkpoint;
};

// A key as an operator's listing shows it.
struct KeyListing {
  std::string key;
  KeySnapshot snapshot;
};

struct ListQuery {
  std::string name_space;
  // Only keys in this state (kAbsent: any state).
  KeyState state = KeyState::kAbsent;
  // Only in-progress keys whose lease lapsed: work that seems stuck.
  bool lease_lapsed_only = false;
  // Continue after this key (from ListPage::next_page_token); empty: start.
  std::string page_token;
  size_t page_size = 100;
};

struct ListPage {
  std::vector<KeyListing> keys;
  // Empty when the namespace has been listed to its end.
  std::string next_page_token;
};

struct StateCounts {
  uint64_t in_progress = 0;
  // In progress with a lapsed lease (included in in_progress).
  uint64_t lease_lapsed = 0;
  uint64_t completed = 0;

  // Counts one key (an absent one counts nowhere).
  void Add(const KeySnapshot& snapshot) {
    if (snapshot.state == KeyState::kInProgress) {
      ++in_progress;
      if (snapshot.lease_lapsed) ++lease_lapsed;
    } else if (snapshot.state == KeyState::kCompleted) {
      ++completed;
    }
  }
};

// The slots of a sharded store being moved between nodes, and how long the
// oldest has been open.
struct SlotMigrationStats {
  uint64_t open = 0;
  absl::Duration oldest = absl::ZeroDuration();
};

// Cheap figures for monitoring.
struct StoreStats {
  // An estimate, including expired records not yet compacted away.
  uint64_t estimated_keys = 0;
  // Bytes of live data files and write-ahead logs.
  uint64_t disk_bytes = 0;
  // Stored versions of expired records that TTL compaction dropped since
  // the store was opened. A key whose versions sit in different files (its
  // Begin flushed before its Complete) counts once per version, so this is
  // at least, not exactly, the number of expired keys dropped.
  // (PostgreSQL: rows its reaper deleted, by this process.)
  uint64_t expired_dropped = 0;
  // Expired records still stored, waiting for the reaper (PostgreSQL);
  // nullopt for stores that drop them as they go.
  std::optional<uint64_t> expired_backlog;
  // Stores over a sharded cluster (Redis); nullopt elsewhere.
  std::optional<SlotMigrationStats> slot_migrations;
};

// Receives the outcome of an asynchronous operation.
template <typename T>
using Done = std::function<void(absl::StatusOr<T>)>;
using DoneStatus = std::function<void(absl::Status)>;

class Store {
 public:
  virtual ~Store() = default;

  // Operations that may change a key, asynchronous so that no caller's
  // thread waits for the disk. `done` runs exactly once: after the change
  // is durable (synced, with sync_writes), or with the error; it runs on a
  // thread of the store and must not block.
  virtual void BeginAsync(const BeginCommand& command,
                          Done<BeginResult> done) = 0;
  virtual void CompleteAsync(const CompleteCommand& command,
                             Done<CompleteResult> done) = 0;
  virtual void ReleaseAsync(const ReleaseCommand& command, DoneStatus done) = 0;
  // Reports the new lease expiry.
  virtual void ExtendAsync(const ExtendCommand& command,
                           Done<absl::Time> done) = 0;
  // Records the holder's progress; fenced by its token like Complete.
  virtual void CheckpointAsync(const CheckpointCommand& command,
                               DoneStatus done) = 0;
  // Operator action: forgets the key entirely. Reports whether a live
  // record existed.
  virtual void DeleteAsync(const KeyId& id, Done<bool> done) = 0;
  // Operator action: frees an in-progress key and fences its holder out by
  // issuing a new token (reported) that the key now carries; the next Begin
  // acquires it with a higher one. FAILED_PRECONDITION if the key is not in
  // progress.
  virtual void ForceReleaseAsync(const KeyId& id, Done<uint64_t> done) = 0;

  // The same operations, waiting for their outcome.
  absl::StatusOr<BeginResult> Begin(const BeginCommand& command);
  absl::StatusOr<CompleteResult> Complete(const CompleteCommand& command);
  absl::Status Release(const ReleaseCommand& command);
  absl::StatusOr<absl::Time> Extend(const ExtendCommand& command);
  absl::Status Checkpoint(const CheckpointCommand& command);
  absl::StatusOr<bool> Delete(const KeyId& id);
  absl::StatusOr<uint64_t> ForceRelease(const KeyId& id);

  // Reads: synchronous, no side effects.
  // Begin's answer when giving it needs no write (the key is completed, held
  // by another attempt, or used with another fingerprint); nullopt when
  // Begin must write (acquire), and always from a store that cannot answer
  // without a network round trip (Redis Cluster). Lets a server answer
  // replays without waiting behind writers. When it answers nullopt it sets
  // `*hint` (if not null) to what it learnt, for the caller to pass on in
  // the BeginAsync command.
  virtual std::optional<absl::StatusOr<BeginResult>> PeekBegin(
      const BeginCommand& command, PeekHint* hint) = 0;
  virtual absl::StatusOr<KeySnapshot> Lookup(const KeyId& id) = 0;
  // Live keys of one namespace in key order, a page at a time. A page may
  // hold fewer than page_size keys (filters stop a scan early).
  virtual absl::StatusOr<ListPage> List(const ListQuery& query) = 0;
  // Counts of live keys per namespace (all namespaces if `name_space` is
  // empty). Reads every record of the scope: an operator's tool, not for
  // monitoring loops.
  virtual absl::StatusOr<std::map<std::string, StateCounts>> CountKeys(
      const std::string& name_space) = 0;
  virtual StoreStats Stats() = 0;

  // OK while the store can take writes; otherwise the error that stopped
  // it (disk full, read-only or failing disk, a corrupt file). The store
  // keeps trying to recover by itself and reports OK again once a probe
  // write is durable. Cheap: meant to be polled.
  virtual absl::Status Health() = 0;

  // Calls `on_change` (on a thread of the store; it must not block) with
  // keys that another process sharing this store completed, released or
  // deleted, so that calls parked on them here look again. May miss some
  // (callers keep a fallback poll); a KeyId with an empty key says that
  // some may have been missed just now (a lost subscription): look at
  // every parked call again. Stores that only this process writes never
  // call it.
  virtual void WatchChanges(
      const std::function<void(const KeyId&)>& /*on_change*/) {}
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_STORE_H_
