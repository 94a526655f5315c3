#include "storage/postgres/postgres_store.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "storage/key_state_machine.h"
#include "storage/list_pager.h"
#include "storage/record_codec.h"

namespace idem::storage {
namespace {

// The schema this binary writes. A database at a higher version was
// migrated by a newer binary: refused rather than misread.
constexpr int kSchemaVersion = 1;

// Statements of each migration, in order; version N is index N - 1. Every
// statement runs in one transaction with the version's row.
const std::vector<std::vector<std::string>>& Migrations() {
  static const auto* const migrations =
      new std::vector<std::vector<std::string>>{{
          // Version 1.
          "CREATE TABLE {S}.records ("
          "  name_space bytea NOT NULL,"
          "  key bytea NOT NULL,"
          "  state int2 NOT NULL,"
          "  expires_at_us int8 NOT NULL,"
          "  lease_expires_at_us int8 NOT NULL,"
          "  record bytea NOT NULL,"
          "  PRIMARY KEY (name_space, key))",
          "CREATE INDEX records_by_expiry ON {S}.records (expires_at_us)",
          "CREATE SEQUENCE {S}.tokens AS int8",
          "CREATE TABLE {S}.replicas ("
          "  id text PRIMARY KEY,"
          "  seen_at timestamptz NOT NULL)",
      }};
  return *migrations;
}

// The database's clock in microseconds since the Unix epoch.
constexpr char kDbNow[] =
    "(extract(epoch FROM clock_timestamp()) * 1000000)::int8";

// Back-off after a failed connection attempt: calls fail fast meanwhile.
constexpr absl::Duration kConnectBackoff = absl::Milliseconds(200);

// A statement that exceeds the timeout is cancelled by the server
// (statement_timeout) and fails cleanly, the connection still usable; the
// client gives up this much later, for a server that does not answer at all.
constexpr absl::Duration kClientGrace = absl::Milliseconds(500);

// One transaction carries at most this many bytes of results (PostgreSQL
// refuses messages over 1 GiB; a batch's records travel as one array).
constexpr size_t kMaxBatchBytes = size_t{64} << 20;

// Batches that lost a deadlock (with the reaper) or a serialization race
// are tried again this many times.
constexpr int kMaxAttempts = 4;

// 64-bit FNV-1a: the advisory lock of a key must be the same number in
// every replica, whatever its build.
int64_t LockId(absl::string_view schema, const KeyId& id) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  auto add = [&hash](absl::string_view bytes) {
    for (const char c : bytes) {
      hash ^= static_cast<unsigned char>(c);
      hash *= 0x100000001b3ULL;
    }
    hash ^= 0xff;  // Separator: ("ab", "c") and ("a", "bc") differ.
    hash *= 0x100000001b3ULL;
  };
  add(schema);
  add(id.name_space);
  add(id.key);
  return static_cast<int64_t>(hash);
}

bool IsHex(absl::string_view text) {
  return text.size() % 2 == 0 &&
         std::all_of(text.begin(), text.end(),
                     [](char c) { return absl::ascii_isxdigit(c); });
}

std::string ReplicaId() {
  std::random_device random;
  return absl::StrCat(
      absl::Hex((uint64_t{random()} << 32) | random(), absl::kZeroPad16));
}

absl::Status DataLoss(const KeyId& id, const absl::Status& decode) {
  return absl::DataLossError(
      absl::StrCat("the stored record of key ", id.key, " in namespace ",
                   id.name_space, " cannot be read: ", decode.message()));
}

}  // namespace

PostgresStore::PostgresStore(PostgresStoreOptions options)
    : options_(std::move(options)),
      replica_id_(ReplicaId()),
      channel_(absl::StrCat(options_.schema, "_changes")) {}

absl::StatusOr<std::unique_ptr<PostgresStore>> PostgresStore::Open(
    PostgresStoreOptions options) {
  if (options.schema.empty() || options.schema.size() > 48 ||
      !std::all_of(options.schema.begin(), options.schema.end(),
                   [](char c) {
                     return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                            c == '_';
                   }) ||
      (options.schema[0] >= '0' && options.schema[0] <= '9')) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the PostgreSQL schema name \"", options.schema,
        "\" must be 1 to 48 characters of a-z, 0-9 and _, not starting with "
        "a digit"));
  }
  if (options.connections < 1) {
    return absl::InvalidArgumentError("at least one writer connection");
  }
  std::unique_ptr<PostgresStore> store(new PostgresStore(std::move(options)));
  absl::StatusOr<std::unique_ptr<PgConnection>> first =
      PgConnection::Connect(store->options_.connection);
  if (!first.ok()) return first.status();
  if (absl::Status migrated = store->Migrate(**first); !migrated.ok()) {
    return migrated;
  }
  if (absl::Status read = store->ReadSettings(**first); !read.ok()) {
    return read;
  }
  {
    absl::MutexLock lock(&store->mu_);
    store->idle_readers_.push_back(*std::move(first));
  }
  store->RunMaintenance();
  for (int i = 0; i < store->options_.connections; ++i) {
    store->writers_.emplace_back([s = store.get()] { s->WriterLoop(); });
  }
  store->listener_ = std::thread([s = store.get()] { s->ListenLoop(); });
  store->maintenance_ =
      std::thread([s = store.get()] { s->MaintenanceLoop(); });
  return store;
}

PostgresStore::~PostgresStore() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& writer : writers_) writer.join();
  if (listener_.joinable()) listener_.join();
  if (maintenance_.joinable()) maintenance_.join();
}

std::string PostgresStore::Table(absl::string_view name) const {
  return absl::StrCat("\"", options_.schema, "\".", name);
}

absl::Status PostgresStore::Migrate(PgConnection& connection) {
  const absl::Time deadline = absl::Now() + options_.connection.timeout;
  absl::StatusOr<PgResult> standby =
      connection.RunOne({"", "SELECT pg_is_in_recovery()::int4", {}}, deadline);
  if (!standby.ok()) return standby.status();
  if (standby->integer(0, 0) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the PostgreSQL server at ", connection.peer(),
        " is a standby (read-only): point --store at the primary, or list "
        "every host with target_session_attrs=read-write in the URI"));
  }
  const std::string schema = absl::StrCat("\"", options_.schema, "\"");
  // Replicas starting together take turns; the lock ends with the session
  // or below.
  const std::string lock_id =
      absl::StrCat(LockId("idem-migration", {options_.schema, ""}));
  std::vector<PgStatement> prelude = {
      {"", absl::StrCat("SELECT pg_advisory_lock(", lock_id, ")"), {}},
      // Not CREATE SCHEMA IF NOT EXISTS: it needs CREATE on the database
      // even when the schema exists, and an owner of a provisioned schema
      // may not have it.
      {"",
       absl::StrCat("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace "
                    "WHERE nspname = '",
                    options_.schema, "') THEN CREATE SCHEMA ", schema,
                    "; END IF; END$$"),
       {}},
      {"",
       absl::StrCat("CREATE TABLE IF NOT EXISTS ", schema,
                    ".schema_version (version int4 NOT NULL, migrated_at "
                    "timestamptz NOT NULL DEFAULT now())"),
       {}},
      {"",
       absl::StrCat("SELECT coalesce(max(version), 0)::int4 FROM ", schema,
                    ".schema_version"),
       {}}};
  absl::StatusOr<std::vector<PgResult>> started =
      connection.Run(prelude, deadline);
  absl::Status status = started.status();
  if (status.ok()) {
    const int64_t version = (*started)[3].integer(0, 0);
    if (version > kSchemaVersion) {
      status = absl::FailedPreconditionError(absl::StrCat(
          "the PostgreSQL schema ", options_.schema, " is at version ", version,
          ", newer than this idem-server knows (", kSchemaVersion,
          "): run a newer idem-server"));
    }
    for (int64_t v = version + 1; status.ok() && v <= kSchemaVersion; ++v) {
      std::vector<std::string> sql = {"BEGIN"};
      for (const std::string& statement :
           Migrations()[static_cast<size_t>(v - 1)]) {
        sql.push_back(absl::StrReplaceAll(statement, {{"{S}", schema}}));
      }
      sql.push_back(absl::StrCat("INSERT INTO ", schema,
                                 ".schema_version (version) VALUES (", v, ")"));
      sql.emplace_back("COMMIT");
      std::vector<PgStatement> statements;
      statements.reserve(sql.size());
      for (const std::string& s : sql) statements.push_back({"", s, {}});
      absl::StatusOr<std::vector<PgResult>> migrated =
          connection.Run(statements, deadline);
      if (!migrated.ok()) {
        status = absl::Status(
            migrated.status().code(),
            absl::StrCat("migrating the PostgreSQL schema ", options_.schema,
                         " to version ", v, ": ", migrated.status().message()));
        connection.RunOne({"", "ROLLBACK", {}}, deadline).IgnoreError();
      }
    }
  }
  if (connection.ok()) {
    connection
        .RunOne(
            {"", absl::StrCat("SELECT pg_advisory_unlock(", lock_id, ")"), {}},
            deadline)
        .IgnoreError();
  }
  return status;
}

absl::Status PostgresStore::ReadSettings(PgConnection& connection) {
  absl::StatusOr<PgResult> settings =
      connection.RunOne({"",
                         "SELECT current_setting('synchronous_commit'), "
                         "current_setting('fsync'), "
                         "current_setting('synchronous_standby_names'), "
                         "current_setting('full_page_writes')",
                         {}},
                        absl::Now() + options_.connection.timeout);
  if (!settings.ok()) return settings.status();
  const std::string synchronous_commit(settings->bytes(0, 0));
  const std::string fsync(settings->bytes(0, 1));
  const std::string standbys(settings->bytes(0, 2));
  const std::string full_page_writes(settings->bytes(0, 3));
  if (fsync != "on") {
    durability_notes_.emplace_back(
        "fsync=off on the PostgreSQL server: a crash of its machine can lose "
        "acknowledged results and corrupt the database");
  }
  if (full_page_writes != "on") {
    durability_notes_.emplace_back(
        "full_page_writes=off on the PostgreSQL server: a power loss can "
        "leave torn pages that lose acknowledged results");
  }
  if (synchronous_commit == "off") {
    durability_notes_.emplace_back(
        "synchronous_commit=off: a change is answered before PostgreSQL "
        "flushed it; a crash of the database loses the last moments of "
        "acknowledged results (up to 3 x wal_writer_delay)");
  } else if (standbys.empty() || synchronous_commit == "local") {
    durability_notes_.emplace_back(absl::StrCat(
        standbys.empty() ? "no synchronous standby (synchronous_standby_names "
                           "is empty)"
                         : "synchronous_commit=local",
        ": a change is on the primary's disk when answered, but a failover "
        "to a standby that had not received it loses it (docs/postgresql.md)"));
  } else if (synchronous_commit == "remote_write") {
    durability_notes_.emplace_back(
        "synchronous_commit=remote_write: the standby has a change in memory, "
        "not on disk, when it is answered; losing the primary and the "
        "standby's machine together loses it");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PgConnection>> PostgresStore::NewConnection() {
  {
    absl::MutexLock lock(&mu_);
    if (absl::Now() - last_connect_failure_ < kConnectBackoff) {
      return last_connect_error_;
    }
  }
  absl::StatusOr<std::unique_ptr<PgConnection>> made =
      PgConnection::Connect(options_.connection);
  if (!made.ok()) {
    absl::MutexLock lock(&mu_);
    last_connect_failure_ = absl::Now();
    last_connect_error_ = made.status();
    health_ = made.status();
  }
  return made;
}

void PostgresStore::SetHealth(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  health_ = status;
}

absl::Time PostgresStore::ClockNow(int64_t database_micros) const {
  return options_.clock != nullptr ? options_.clock->Now()
                                   : absl::FromUnixMicros(database_micros);
}

void PostgresStore::Apply(std::unique_ptr<Transition> transition) {
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      refused = absl::UnavailableError("the PostgreSQL store is closing");
    } else if (queue_.size() >= options_.max_pending) {
      refused = absl::ResourceExhaustedError(absl::StrCat(
          options_.max_pending,
          " changes are already waiting for PostgreSQL; try again later"));
    } else if (!queue_.empty() && queued_bytes_ + transition->payload_bytes() >
                                      options_.max_pending_bytes) {
      refused = absl::ResourceExhaustedError(
          absl::StrCat(queued_bytes_,
                       " bytes of changes are already waiting for "
                       "PostgreSQL; try again later"));
    } else {
      queued_bytes_ += transition->payload_bytes();
      queue_.push_back(std::move(transition));
      return;
    }
  }
  transition->Finish(refused);
}

void PostgresStore::WriterLoop() {
  std::unique_ptr<PgConnection> connection;
  for (;;) {
    std::vector<std::unique_ptr<Transition>> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](PostgresStore* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
            return s->stopping_ || !s->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // Stopping, and nothing left to apply.
      size_t batch_bytes = 0;
      while (!queue_.empty() && batch.size() < options_.max_batch &&
             (batch.empty() || batch_bytes + queue_.front()->payload_bytes() <=
                                   kMaxBatchBytes)) {
        batch_bytes += queue_.front()->payload_bytes();
        queued_bytes_ -= queue_.front()->payload_bytes();
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    ApplyBatch(connection, std::move(batch));
  }
}

void PostgresStore::ApplyBatch(std::unique_ptr<PgConnection>& connection,
                               std::vector<std::unique_ptr<Transition>> batch) {
  const absl::Time now = absl::Now();
  std::vector<std::unique_ptr<Transition>> live;
  live.reserve(batch.size());
  for (std::unique_ptr<Transition>& t : batch) {
    if (now >= t->deadline()) {
      t->Finish(absl::DeadlineExceededError(
          "the caller's deadline passed before the change was tried; nothing "
          "was written"));
    } else {
      live.push_back(std::move(t));
    }
  }
  if (live.empty()) return;
  absl::Status status;
  std::vector<absl::Status> failures;
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    if (connection == nullptr || !connection->ok()) {
      connection.reset();
      absl::StatusOr<std::unique_ptr<PgConnection>> made = NewConnection();
      if (!made.ok()) {
        status = made.status();
        break;
      }
      connection = *std::move(made);
    }
    bool commit_sent = false;
    status = TryBatch(*connection, live, &commit_sent, &failures);
    if (status.ok()) {
      SetHealth(absl::OkStatus());
      break;
    }
    const std::string sqlstate = connection->sqlstate();
    if (connection->ok()) {
      connection
          ->RunOne({"", "ROLLBACK", {}},
                   absl::Now() + options_.connection.timeout)
          .IgnoreError();
    }
    // A read-only server (a demoted primary) or a lost connection: the
    // database cannot take writes here now.
    if (!connection->ok() || sqlstate == "25006") SetHealth(status);
    // Lost before COMMIT was sent (a connection the database dropped while
    // it was idle, as on its restart): nothing was written, so try again on
    // a new one. After, the outcome is unknown: the callers hear so.
    // Never past the timeout in all: a database that hangs is not retried.
    const bool retry = (sqlstate == "40P01" || sqlstate == "40001" ||
                        (!connection->ok() && !commit_sent)) &&
                       absl::Now() - now < options_.connection.timeout;
    if (!retry) break;
  }
  for (size_t i = 0; i < live.size(); ++i) {
    live[i]->Finish(status.ok() && i < failures.size() ? failures[i] : status);
  }
}

absl::Status PostgresStore::TryBatch(
    PgConnection& connection, std::vector<std::unique_ptr<Transition>>& batch,
    bool* commit_sent, std::vector<absl::Status>* failures) {
  failures->assign(batch.size(), absl::OkStatus());
  const absl::Time deadline =
      absl::Now() + options_.connection.timeout + kClientGrace;

  // The keys of the batch, each once.
  struct KeyEntry {
    const KeyId* id = nullptr;
    std::optional<Record> record;
    absl::Status unreadable;
    bool written = false;
  };
  std::vector<KeyEntry> keys;
  absl::flat_hash_map<std::pair<absl::string_view, absl::string_view>, size_t>
      index;
  std::vector<size_t> key_of(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    const KeyId& id = batch[i]->id();
    auto [it, added] =
        index.try_emplace(std::make_pair(absl::string_view(id.name_space),
                                         absl::string_view(id.key)),
                          keys.size());
    if (added) keys.push_back({&id, std::nullopt, absl::OkStatus(), false});
    key_of[i] = it->second;
  }
  std::vector<int64_t> locks;
  std::vector<std::string> namespaces;
  std::vector<std::string> names;
  for (const KeyEntry& k : keys) {
    locks.push_back(LockId(options_.schema, *k.id));
    namespaces.push_back(k.id->name_space);
    names.push_back(k.id->key);
  }
  // One global order of locks: no two writers wait on each other.
  std::sort(locks.begin(), locks.end());
  locks.erase(std::unique(locks.begin(), locks.end()), locks.end());

  const std::string lock_sql =
      "SELECT pg_advisory_xact_lock(h) FROM unnest($1::int8[]) AS h";
  const std::string read_sql = absl::StrCat(
      "SELECT r.name_space, r.key, r.record FROM ", Table("records"),
      " r JOIN unnest($1::bytea[], $2::bytea[]) AS k(ns, key) "
      "ON r.name_space = k.ns AND r.key = k.key");
  // After the locks: every token a committed transaction gave these keys
  // is below the ones drawn here.
  const std::string clock_sql =
      absl::StrCat("SELECT ", kDbNow, ", nextval('", Table("tokens"),
                   "') FROM generate_series(1, $1::int4)");
  std::vector<PgStatement> first = {
      // Pinned: a REPEATABLE READ default (per role or database) would take
      // the snapshot before the locks are granted.
      {"", "BEGIN ISOLATION LEVEL READ COMMITTED", {}},
      {"idem_lock", lock_sql, {PgParam::Int8Array(locks)}},
      {"idem_read",
       read_sql,
       {PgParam::ByteaArray(namespaces), PgParam::ByteaArray(names)}},
      {"idem_clock_tokens",
       clock_sql,
       {PgParam::Int(static_cast<int64_t>(batch.size()))}}};
  absl::StatusOr<std::vector<PgResult>> read = connection.Run(first, deadline);
  if (!read.ok()) return read.status();
  const PgResult& rows = (*read)[2];
  for (int r = 0; r < rows.rows(); ++r) {
    auto it = index.find(std::make_pair(rows.bytes(r, 0), rows.bytes(r, 1)));
    if (it == index.end()) continue;
    KeyEntry& k = keys[it->second];
    absl::StatusOr<Record> record = DecodeRecord(rows.bytes(r, 2));
    if (record.ok()) {
      k.record = *std::move(record);
    } else {
      k.unreadable = DataLoss(*k.id, record.status());
    }
  }
  const PgResult& clock = (*read)[3];
  const absl::Time now = ClockNow(clock.integer(0, 0));
  int next_token = 0;

  bool confirm = false;
  // NOTIFY payloads "replica:hex(namespace):hex(key)": other replicas skip
  // their own.
  std::vector<std::string> payloads;
  const auto announce = [&](const KeyId& id) {
    payloads.push_back(absl::StrCat(replica_id_, ":",
                                    absl::BytesToHexString(id.name_space), ":",
                                    absl::BytesToHexString(id.key)));
  };
  for (size_t i = 0; i < batch.size(); ++i) {
    KeyEntry& k = keys[key_of[i]];
    if (!k.unreadable.ok()) {
      // Nothing is decided on a record that cannot be read; the failure is
      // this transition's alone.
      (*failures)[i] = k.unreadable;
      continue;
    }
    const Record* current = k.record.has_value() ? &*k.record : nullptr;
    auto token = [&]() -> uint64_t {
      // One token per transition at most; the record's own is a floor
      // should the sequence ever have been reset under old data.
      const uint64_t drawn =
          next_token < clock.rows()
              ? static_cast<uint64_t>(clock.integer(next_token++, 1))
              : 0;
      return std::max(drawn, current != nullptr ? current->token() + 1 : 1);
    };
    absl::StatusOr<Change> change = batch[i]->Decide(current, now, token);
    if (!change.ok()) continue;
    switch (change->kind) {
      case Change::Kind::kNone:
        confirm = confirm || change->answer_rests_on_record;
        break;
      case Change::Kind::kPut:
        if (change->record.state() != Record::STATE_IN_PROGRESS) {
          announce(*k.id);
        }
        k.record = std::move(change->record);
        k.written = true;
        break;
      case Change::Kind::kDelete:
        announce(*k.id);
        k.record.reset();
        k.written = true;
        break;
    }
  }

  std::vector<std::string> put_ns;
  std::vector<std::string> put_keys;
  std::vector<int64_t> put_states;
  std::vector<int64_t> put_expiry;
  std::vector<int64_t> put_lease;
  std::vector<std::string> put_records;
  std::vector<std::string> delete_ns;
  std::vector<std::string> delete_keys;
  for (const KeyEntry& k : keys) {
    if (!k.written) continue;
    if (k.record.has_value()) {
      put_ns.push_back(k.id->name_space);
      put_keys.push_back(k.id->key);
      put_states.push_back(k.record->state());
      put_expiry.push_back(k.record->expires_at_us());
      put_lease.push_back(k.record->lease_expires_at_us());
      put_records.push_back(EncodeRecord(*k.record));
    } else {
      delete_ns.push_back(k.id->name_space);
      delete_keys.push_back(k.id->key);
    }
  }
  std::vector<PgStatement> second;
  if (!put_ns.empty()) {
    second.push_back(
        {"idem_upsert",
         absl::StrCat(
             "INSERT INTO ", Table("records"),
             " (name_space, key, state, expires_at_us, lease_expires_at_us, "
             "record) SELECT ns, key, state::int2, expiry, lease, record FROM "
             "unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int8[], "
             "$5::int8[], $6::bytea[]) AS u(ns, key, state, expiry, lease, "
             "record) ON CONFLICT (name_space, key) DO UPDATE SET state = "
             "EXCLUDED.state, expires_at_us = EXCLUDED.expires_at_us, "
             "lease_expires_at_us = EXCLUDED.lease_expires_at_us, record = "
             "EXCLUDED.record"),
         {PgParam::ByteaArray(put_ns), PgParam::ByteaArray(put_keys),
          PgParam::Int8Array(put_states), PgParam::Int8Array(put_expiry),
          PgParam::Int8Array(put_lease), PgParam::ByteaArray(put_records)}});
  }
  if (!delete_ns.empty()) {
    second.push_back(
        {"idem_delete",
         absl::StrCat("DELETE FROM ", Table("records"),
                      " r USING unnest($1::bytea[], $2::bytea[]) AS k(ns, "
                      "key) WHERE r.name_space = k.ns AND r.key = k.key"),
         {PgParam::ByteaArray(delete_ns), PgParam::ByteaArray(delete_keys)}});
  }
  if (!payloads.empty()) {
    // Delivered when (and only if) the transaction commits.
    second.push_back({"idem_notify",
                      "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                      {PgParam::Text(channel_), PgParam::TextArray(payloads)}});
  }
  if (second.empty() && confirm) {
    // A replay rests on a record another transaction committed, which may
    // not be on the synchronous standby yet (a commit whose wait for it was
    // cancelled is visible all the same). A transaction id makes this
    // COMMIT flush and wait for the standby up to here, past that record.
    second.push_back({"idem_confirm", "SELECT pg_current_xact_id()", {}});
  }
  // COMMIT waits for the WAL flush (and the synchronous standby) without a
  // server-side timeout: cancelling that wait would report success for a
  // commit the standby may not have. The client's deadline still bounds it
  // (the connection is then dropped and the callers hear UNAVAILABLE).
  second.push_back({"", "SET LOCAL statement_timeout = 0", {}});
  second.push_back({"", "COMMIT", {}});
  *commit_sent = true;
  // A fresh deadline: the first round trip may have waited long for a lock.
  absl::StatusOr<std::vector<PgResult>> written = connection.Run(
      second, absl::Now() + options_.connection.timeout + kClientGrace);
  if (!written.ok()) {
    return absl::Status(
        written.status().code(),
        absl::StrCat(
            written.status().message(),
            connection.ok() ? "" : " (the change may have been applied)"));
  }
  if (connection.replication_wait_cancelled()) {
    // PostgreSQL reports such a COMMIT as a success (someone cancelled the
    // backend's wait for the standby): on the primary, maybe not on the
    // standby. Not acknowledged; a retry finds it and, through the
    // confirm above, waits for the standby before it answers.
    return absl::UnavailableError(
        "the change committed on the PostgreSQL primary, but its wait for "
        "the synchronous standby was cancelled: not acknowledged, retry");
  }
  return absl::OkStatus();
}

std::optional<absl::StatusOr<BeginResult>> PostgresStore::PeekBegin(
    const BeginCommand& /*command*/, PeekHint* hint) {
  if (hint != nullptr) *hint = {};
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<PgConnection>> PostgresStore::TakeReader() {
  {
    // At most `connections` readers at once; callers beyond wait for one.
    absl::MutexLock lock(&mu_);
    const auto free = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return readers_in_use_ < static_cast<size_t>(options_.connections);
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&free),
                              options_.connection.timeout)) {
      return absl::UnavailableError(
          absl::StrCat("all ", options_.connections,
                       " PostgreSQL read connections stayed busy for ",
                       absl::FormatDuration(options_.connection.timeout)));
    }
    ++readers_in_use_;
    if (!idle_readers_.empty()) {
      std::unique_ptr<PgConnection> reader = std::move(idle_readers_.back());
      idle_readers_.pop_back();
      return reader;
    }
  }
  // Not through NewConnection(): a reader's failed attempt (too many
  // connections, say) neither marks the store unhealthy nor holds writers
  // back.
  absl::StatusOr<std::unique_ptr<PgConnection>> made =
      PgConnection::Connect(options_.connection);
  if (!made.ok()) {
    absl::MutexLock lock(&mu_);
    --readers_in_use_;
  }
  return made;
}

void PostgresStore::ReturnReader(std::unique_ptr<PgConnection> connection) {
  absl::MutexLock lock(&mu_);
  --readers_in_use_;
  if (!connection->ok()) return;
  if (idle_readers_.size() < static_cast<size_t>(options_.connections)) {
    idle_readers_.push_back(std::move(connection));
  }
}

absl::StatusOr<std::vector<PgResult>> PostgresStore::Read(
    const std::vector<PgStatement>& statements) {
  // A pooled connection may have been dropped by a database restart since
  // it was last used: one more try on a new one.
  absl::Status failure;
  for (int attempt = 0; attempt < 2; ++attempt) {
    absl::StatusOr<std::unique_ptr<PgConnection>> reader = TakeReader();
    if (!reader.ok()) return reader.status();
    absl::StatusOr<std::vector<PgResult>> results = (*reader)->Run(
        statements, absl::Now() + options_.connection.timeout + kClientGrace);
    const bool broken = !(*reader)->ok();
    ReturnReader(*std::move(reader));
    if (results.ok() || !broken) return results;
    failure = results.status();
  }
  return failure;
}

absl::StatusOr<KeySnapshot> PostgresStore::Lookup(const KeyId& id) {
  absl::StatusOr<std::vector<PgResult>> read = Read(
      {{"idem_lookup",
        absl::StrCat("SELECT ", kDbNow, ", (SELECT record FROM ",
                     Table("records"), " WHERE name_space = $1 AND key = $2)"),
        {PgParam::Bytes(id.name_space), PgParam::Bytes(id.key)}}});
  if (!read.ok()) return read.status();
  const PgResult& row = read->front();
  const absl::Time now = ClockNow(row.integer(0, 0));
  if (row.null(0, 1)) return Snapshot(nullptr, now);
  absl::StatusOr<Record> record = DecodeRecord(row.bytes(0, 1));
  if (!record.ok()) return DataLoss(id, record.status());
  return Snapshot(&*record, now);
}

absl::Status PostgresStore::Scan(
    const std::string& name_space, const std::string& after_key,
    const std::function<bool(const KeyId&, const Record*, absl::Time)>& visit) {
  // Key order, a chunk per round trip; the state machine (Snapshot) tells
  // expired rows from live ones.
  constexpr int64_t kChunk = 1000;
  KeyId after{name_space, after_key};
  for (;;) {
    // All namespaces in (name_space, key) order, or one in key order.
    const bool all = name_space.empty();
    const PgStatement scan{
        all ? "idem_scan_all" : "idem_scan_namespace",
        absl::StrCat("SELECT ", kDbNow, ", name_space, key, record FROM ",
                     Table("records"),
                     all ? " WHERE (name_space, key) > ($1, $2) ORDER BY "
                           "name_space, key LIMIT $3"
                         : " WHERE name_space = $1 AND key > $2 ORDER BY key "
                           "LIMIT $3"),
        {PgParam::Bytes(after.name_space), PgParam::Bytes(after.key),
         PgParam::Int(kChunk)}};
    absl::StatusOr<std::vector<PgResult>> read = Read({scan});
    if (!read.ok()) return read.status();
    const PgResult& rows = read->front();
    for (int r = 0; r < rows.rows(); ++r) {
      after.name_space = std::string(rows.bytes(r, 1));
      after.key = std::string(rows.bytes(r, 2));
      absl::StatusOr<Record> record = DecodeRecord(rows.bytes(r, 3));
      if (!visit(after, record.ok() ? &*record : nullptr,
                 ClockNow(rows.integer(r, 0)))) {
        return absl::OkStatus();
      }
    }
    if (rows.rows() < kChunk) return absl::OkStatus();
  }
}

absl::StatusOr<ListPage> PostgresStore::List(const ListQuery& query) {
  ListPager pager(query);
  absl::Status scanned = Scan(
      query.name_space, query.page_token,
      [&pager](const KeyId& id, const Record* record, absl::Time now) {
        // An undecodable record is offered as such (Lookup reports it as
        // DATA_LOSS).
        const KeySnapshot snapshot =
            record != nullptr ? Snapshot(record, now) : KeySnapshot{};
        return pager.Offer(id.key, record != nullptr ? &snapshot : nullptr);
      });
  if (!scanned.ok()) return scanned;
  return pager.Take();
}

absl::StatusOr<std::map<std::string, StateCounts>> PostgresStore::CountKeys(
    const std::string& name_space) {
  std::map<std::string, StateCounts> counts;
  absl::Status scanned =
      Scan(name_space, "",
           [&counts](const KeyId& id, const Record* record, absl::Time now) {
             if (record != nullptr) {
               counts[id.name_space].Add(Snapshot(record, now));
             }
             return true;
           });
  if (!scanned.ok()) return scanned;
  return counts;
}

StoreStats PostgresStore::Stats() {
  // Fresh when the database answers; the last pass's figures when not.
  absl::StatusOr<std::vector<PgResult>> figures = Read({StatsStatement()});
  absl::MutexLock lock(&mu_);
  if (figures.ok()) KeepStatsLocked(figures->front());
  StoreStats stats = stats_;
  stats.expired_dropped = expired_dropped_;
  return stats;
}

absl::Status PostgresStore::Health() {
  absl::MutexLock lock(&mu_);
  return health_;
}

void PostgresStore::WatchChanges(
    const std::function<void(const KeyId&)>& on_change) {
  absl::MutexLock lock(&mu_);
  on_change_ = on_change;
}

bool PostgresStore::WaitUntilStopping(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(
      absl::Condition(
          +[](bool* stopping) { return *stopping; }, &stopping_),
      timeout);
}

void PostgresStore::ListenLoop() {
  std::unique_ptr<PgConnection> connection;
  bool listened_before = false;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    if (connection == nullptr || !connection->ok()) {
      connection.reset();
      absl::StatusOr<std::unique_ptr<PgConnection>> made = NewConnection();
      absl::Status listening = made.status();
      if (made.ok()) {
        listening =
            (*made)
                ->RunOne({"", absl::StrCat("LISTEN \"", channel_, "\""), {}},
                         absl::Now() + options_.connection.timeout)
                .status();
      }
      if (!listening.ok()) {
        if (WaitUntilStopping(absl::Milliseconds(500))) return;
        continue;
      }
      connection = *std::move(made);
      if (listened_before) {
        // Changes announced while no connection listened were missed.
        std::function<void(const KeyId&)> on_change;
        {
          absl::MutexLock lock(&mu_);
          on_change = on_change_;
        }
        if (on_change) on_change(KeyId{});
      }
      listened_before = true;
    }
    absl::StatusOr<std::vector<std::string>> payloads =
        connection->WaitForNotifications(absl::Now() + absl::Milliseconds(250));
    if (!payloads.ok() || payloads->empty()) continue;
    std::function<void(const KeyId&)> on_change;
    {
      absl::MutexLock lock(&mu_);
      on_change = on_change_;
    }
    if (!on_change) continue;
    for (const std::string& payload : *payloads) {
      // replica:hex(namespace):hex(key)
      std::vector<absl::string_view> parts = absl::StrSplit(payload, ':');
      if (parts.size() != 3 || parts[0] == replica_id_) continue;
      if (!IsHex(parts[1]) || !IsHex(parts[2]) || parts[2].empty()) continue;
      on_change(KeyId{absl::HexStringToBytes(parts[1]),
                      absl::HexStringToBytes(parts[2])});
    }
  }
}

void PostgresStore::MaintenanceLoop() {
  while (!WaitUntilStopping(options_.maintenance_interval)) {
    RunMaintenance();
  }
}

void PostgresStore::RunMaintenance() {
  absl::MutexLock maintenance(&maintenance_mu_);
  if (maintenance_connection_ == nullptr || !maintenance_connection_->ok()) {
    maintenance_connection_.reset();
    absl::StatusOr<std::unique_ptr<PgConnection>> made = NewConnection();
    if (!made.ok()) return;  // NewConnection recorded the failure.
    maintenance_connection_ = *std::move(made);
  }
  PgConnection& connection = *maintenance_connection_;
  const PgParam now =
      options_.clock != nullptr
          ? PgParam::Int(absl::ToUnixMicros(options_.clock->Now()))
          : PgParam::Null();

  // The health probe: a durable write, as a change would make.
  // Rows of replicas gone for a day are removed with it.
  absl::StatusOr<std::vector<PgResult>> probed = connection.Run(
      {{"idem_probe",
        absl::StrCat("INSERT INTO ", Table("replicas"),
                     " (id, seen_at) VALUES ($1, clock_timestamp()) ON "
                     "CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at"),
        {PgParam::Text(replica_id_)}},
       {"idem_forget_replicas",
        absl::StrCat("DELETE FROM ", Table("replicas"),
                     " WHERE seen_at < clock_timestamp() - interval '1 day'"),
        {}}},
      absl::Now() + options_.connection.timeout + kClientGrace);
  SetHealth(probed.status());
  if (!probed.ok()) return;

  // The reaper: short transactions of at most reap_batch rows; rows a
  // writer holds are left for the next pass. A row is deleted only once
  // every reader treats it as absent (expires_at <= now, the state
  // machine's rule), and tokens never come from rows: nothing is lost.
  uint64_t reaped = 0;
  for (size_t pass = 0; pass < options_.reap_batches_per_pass; ++pass) {
    absl::StatusOr<PgResult> deleted = connection.RunOne(
        {"idem_reap",
         absl::StrCat("DELETE FROM ", Table("records"),
                      " WHERE ctid = ANY(ARRAY(SELECT ctid FROM ",
                      Table("records"),
                      " WHERE expires_at_us <= coalesce($1::int8, ", kDbNow,
                      ") LIMIT $2 FOR UPDATE SKIP LOCKED))"),
         {now, PgParam::Int(static_cast<int64_t>(options_.reap_batch))}},
        absl::Now() + options_.connection.timeout);
    if (!deleted.ok()) break;
    reaped += deleted->affected();
    if (deleted->affected() < options_.reap_batch) break;
  }

  // Stats() counts when asked: no figures here, every second, that nobody
  // may read.
  absl::MutexLock lock(&mu_);
  expired_dropped_ += reaped;
}

PgStatement PostgresStore::StatsStatement() const {
  // Cheap figures: rows (counted up to a million, the planner's estimate
  // beyond), the table's size with its indexes, and the expired rows still
  // there (counted up to a million).
  const std::optional<int64_t> now =
      options_.clock != nullptr
          ? std::optional<int64_t>(absl::ToUnixMicros(options_.clock->Now()))
          : std::nullopt;
  return {"idem_stats",
          absl::StrCat(
              "SELECT CASE WHEN c.reltuples < 1000000 THEN (SELECT count(*) "
              "FROM (SELECT 1 FROM ",
              Table("records"),
              " LIMIT 1000000) n) ELSE c.reltuples::int8 END, "
              "pg_total_relation_size(c.oid), (SELECT count(*) FROM (SELECT 1 "
              "FROM ",
              Table("records"), " WHERE expires_at_us <= coalesce($1::int8, ",
              kDbNow, ") LIMIT 1000000) e) FROM pg_class c WHERE c.oid = '",
              Table("records"), "'::regclass"),
          {now.has_value() ? PgParam::Int(*now) : PgParam::Null()}};
}

void PostgresStore::KeepStatsLocked(const PgResult& figures) {
  if (figures.rows() != 1) return;
  stats_.estimated_keys = static_cast<uint64_t>(figures.integer(0, 0));
  stats_.disk_bytes = static_cast<uint64_t>(figures.integer(0, 1));
  stats_.expired_backlog = static_cast<uint64_t>(figures.integer(0, 2));
}

absl::Status PostgresStore::DropSchema() {
  absl::StatusOr<std::vector<PgResult>> dropped = Read(
      {{"",
        absl::StrCat("DROP SCHEMA IF EXISTS \"", options_.schema, "\" CASCADE"),
        {}}});
  return dropped.status();
}

}  // namespace idem::storage
