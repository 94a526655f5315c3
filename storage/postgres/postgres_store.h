// The Store on PostgreSQL, for stateless Idem replicas over a database a
// team already runs (and replicates synchronously).
//
// Every change is one transition of the shared key state machine, applied
// by a writer: each writer thread owns one connection and applies a batch
// of queued changes in one short READ COMMITTED transaction, in two round
// trips (libpq pipeline mode):
//   1. BEGIN; lock every key of the batch (transaction-scoped advisory
//      locks, taken in one global order: no deadlock between writers); read
//      their records; read the database's clock; draw fresh tokens from a
//      sequence — after the locks, so that they are greater than any token
//      a committed transaction gave these keys;
//   2. the state machine decides each change in turn (several changes of a
//      key in one batch see each other); upsert / delete the keys' final
//      records; NOTIFY the keys completed, released or deleted; COMMIT.
// So one commit (one WAL flush, one round trip to a synchronous standby)
// carries a whole batch: durable throughput grows with load.
//
// Tokens come from one sequence: they grow across all keys, releases,
// expiry (the reaper deletes expired rows; the sequence does not go back)
// and restarts. After a crash PostgreSQL restarts a sequence past every
// value a committed transaction used, because the sequence's WAL record
// precedes the commit record that carried the token; a synchronous standby
// has both before the commit is acknowledged.
//
// Schema (in `schema`, "idem" by default), created and migrated at Open
// under a session advisory lock, so replicas starting together agree:
//   records(name_space bytea, key bytea, state int2, expires_at_us int8,
//           lease_expires_at_us int8, record bytea) — record_codec's bytes
//           plus what queries filter on; primary key (name_space, key),
//           index on expires_at_us;
//   tokens    the token sequence;
//   replicas  one row per replica, its health probe's write;
//   schema_version.
//
// Durability is the database's: a change is reported done once its COMMIT
// returned, i.e. flushed to the primary's WAL with synchronous_commit=on,
// and to a synchronous standby too when synchronous_standby_names names
// one. durability_notes() says what the session's settings weaken.
#ifndef IDEM_STORAGE_POSTGRES_POSTGRES_STORE_H_
#define IDEM_STORAGE_POSTGRES_POSTGRES_STORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/clock.h"
#include "storage/postgres/pg_connection.h"
#include "storage/store.h"
#include "storage/transition.h"

namespace idem::storage {

struct PostgresStoreOptions {
  // conninfo (a postgresql:// URI), password, and the timeout that bounds
  // every connection attempt and statement.
  PgConnectOptions connection;
  // Where the tables live; several deployments (or tests) can share a
  // database under different schemas. A lower-case SQL identifier.
  std::string schema = "idem";
  // Writer threads, each with its own connection. Reads (Lookup, List)
  // use a pool of up to as many more, one connection listens for other
  // replicas' changes, one runs the reaper and the health probe.
  int connections = 8;
  // Changes waiting for a writer beyond this many, or beyond this many
  // bytes of results, are refused (RESOURCE_EXHAUSTED).
  size_t max_pending = 100'000;
  size_t max_pending_bytes = size_t{256} << 20;
  // Changes applied in one transaction at most.
  size_t max_batch = 256;
  // The reaper and health probe run this often; each pass deletes expired
  // rows in batches of `reap_batch` (short transactions, rows other
  // transactions hold are skipped), at most `reap_batches_per_pass`.
  absl::Duration maintenance_interval = absl::Seconds(1);
  size_t reap_batch = 1000;
  size_t reap_batches_per_pass = 20;
  // Tests only: replaces the database's clock as the state machine's.
  const Clock* clock = nullptr;
};

class PostgresStore final : public TransitionStore {
 public:
  // Connects, creates or migrates the schema, starts the threads. Fails
  // (UNAVAILABLE) when the database cannot be reached, and
  // (FAILED_PRECONDITION) on a read-only server (a standby) or a schema
  // newer than this binary knows.
  static absl::StatusOr<std::unique_ptr<PostgresStore>> Open(
      PostgresStoreOptions options);
  // Finishes queued changes, then stops the threads.
  ~PostgresStore() override;
  PostgresStore(const PostgresStore&) = delete;
  PostgresStore& operator=(const PostgresStore&) = delete;

  // What the server's settings weaken (synchronous_commit, fsync, no
  // synchronous standby), one line each, for the start-up log.
  std::vector<std::string> durability_notes() const {
    return durability_notes_;
  }

  // Always nullopt: answering needs a round trip, which must not happen on
  // the caller's (gRPC's) thread; BeginAsync answers instead.
  std::optional<absl::StatusOr<BeginResult>> PeekBegin(
      const BeginCommand& command, PeekHint* hint) override;
  absl::StatusOr<KeySnapshot> Lookup(const KeyId& id) override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<std::map<std::string, StateCounts>> CountKeys(
      const std::string& name_space) override;
  // One round trip on a pooled connection (bounded by the timeout); the
  // last figures read if the database does not answer.
  StoreStats Stats() override;
  absl::Status Health() override;
  // Other replicas' changes (LISTEN). After the listening connection was
  // lost and made again, calls `on_change` once with an empty KeyId:
  // announcements may have been missed, look at every parked call again.
  void WatchChanges(
      const std::function<void(const KeyId&)>& on_change) override;

  // Runs one maintenance pass now (tests): probes and reaps.
  void RunMaintenance();
  // Tests: drops the schema with everything in it.
  absl::Status DropSchema();

 protected:
  void Apply(std::unique_ptr<Transition> transition) override;

 private:
  explicit PostgresStore(PostgresStoreOptions options);

  // One table name, qualified by the schema and quoted.
  std::string Table(absl::string_view name) const;
  absl::Status Migrate(PgConnection& connection);
  absl::Status ReadSettings(PgConnection& connection);
  // A new connection, or the last connection error if one failed less
  // than the back-off ago (so that a database that is down does not make
  // every batch wait for a connect timeout).
  absl::StatusOr<std::unique_ptr<PgConnection>> NewConnection();

  void WriterLoop();
  // Applies `batch` on `connection` (made anew if broken); Finishes each.
  void ApplyBatch(std::unique_ptr<PgConnection>& connection,
                  std::vector<std::unique_ptr<Transition>> batch);
  // One attempt at the batch's transaction; on success, each transition
  // has decided and the commit returned, and `failures` holds the
  // transitions that could not decide (an unreadable record). Sets
  // `commit_sent` once the outcome may be a commit.
  absl::Status TryBatch(PgConnection& connection,
                        std::vector<std::unique_ptr<Transition>>& batch,
                        bool* commit_sent, std::vector<absl::Status>* failures);
  // A connection from the read pool (made if none is idle), and its return.
  absl::StatusOr<std::unique_ptr<PgConnection>> TakeReader();
  void ReturnReader(std::unique_ptr<PgConnection> connection);
  // The state machine's "now": the database's clock, or the test clock.
  absl::Time ClockNow(int64_t database_micros) const;
  // Runs read-only statements on a pooled connection.
  absl::StatusOr<std::vector<PgResult>> Read(
      const std::vector<PgStatement>& statements);
  // Visits live and expired rows in key order after (name_space,
  // after_key) — one namespace, or all when `name_space` is empty — with
  // the decoded record (null if unreadable) and the database's clock;
  // stops when `visit` returns false.
  absl::Status Scan(const std::string& name_space, const std::string& after_key,
                    const std::function<bool(const KeyId&, const Record*,
                                             absl::Time)>& visit);
  // Waits up to `timeout`; true once the store is stopping.
  bool WaitUntilStopping(absl::Duration timeout);

  void ListenLoop();
  void MaintenanceLoop();
  // The figures Stats() reports, and keeping them.
  PgStatement StatsStatement() const;
  void KeepStatsLocked(const PgResult& figures)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records a connection-level failure (or a success) for Health().
  void SetHealth(const absl::Status& status);

  const PostgresStoreOptions options_;
  // Names this process in change announcements, so that it skips its own.
  const std::string replica_id_;
  const std::string channel_;
  std::vector<std::string> durability_notes_;

  absl::Mutex mu_;
  std::deque<std::unique_ptr<Transition>> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Read connections taken from the pool or being made.
  size_t readers_in_use_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<PgConnection>> idle_readers_ ABSL_GUARDED_BY(mu_);
  std::function<void(const KeyId&)> on_change_ ABSL_GUARDED_BY(mu_);
  absl::Status health_ ABSL_GUARDED_BY(mu_);
  StoreStats stats_ ABSL_GUARDED_BY(mu_);
  absl::Time last_connect_failure_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Status last_connect_error_ ABSL_GUARDED_BY(mu_);
  uint64_t expired_dropped_ ABSL_GUARDED_BY(mu_) = 0;

  // Serializes maintenance passes (the thread's and RunMaintenance's).
  absl::Mutex maintenance_mu_;
  std::unique_ptr<PgConnection> maintenance_connection_
      ABSL_GUARDED_BY(maintenance_mu_);

  std::vector<std::thread> writers_;
  std::thread listener_;
  std::thread maintenance_;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_POSTGRES_POSTGRES_STORE_H_
