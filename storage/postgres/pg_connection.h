// One connection to PostgreSQL over libpq, for the PostgreSQL store: runs a
// list of statements in one round trip (libpq's pipeline mode), never waits
// past a deadline, and says when it broke so that its owner makes a new one.
//
// Usage:
//   absl::StatusOr<std::unique_ptr<PgConnection>> conn =
//       PgConnection::Connect(options);
//   PgStatement read{"read_record", "SELECT record FROM t WHERE k = $1",
//                    {PgParam::Bytes(key)}};
//   absl::StatusOr<std::vector<PgResult>> results =
//       (*conn)->Run({read}, absl::Now() + absl::Seconds(1));
//
// Results are in binary format: bytea and text columns as their bytes,
// int8/int4/int2 as integers, bool as a byte.
//
// Thread safety: a PgConnection is used by one thread at a time.
//
// Errors: UNAVAILABLE for a connection that could not be made, broke, or
// timed out (the connection is then closed: ok() turns false); a statement
// that PostgreSQL refused is UNAVAILABLE too, with its SQLSTATE in the
// message and in sqlstate() (40P01 deadlock, 40001 serialization, 25006 a
// read-only standby, 57014 statement timeout ...).
#ifndef IDEM_STORAGE_POSTGRES_PG_CONNECTION_H_
#define IDEM_STORAGE_POSTGRES_PG_CONNECTION_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

struct pg_conn;
struct pg_result;

namespace idem::storage {

struct PgConnectOptions {
  // A libpq connection URI or key=value string.
  std::string conninfo;
  // Overrides any password in `conninfo` when not empty.
  std::string password;
  // Sent as application_name unless `conninfo` sets one.
  std::string application_name = "idem-server";
  // Bounds the connection attempt, and (as statement_timeout and
  // idle_in_transaction_session_timeout) every statement on the server.
  absl::Duration timeout = absl::Seconds(10);
};

// Checks a libpq connection string (a postgresql:// URI or key=value
// pairs) without connecting: INVALID_ARGUMENT, with libpq's reason, if it
// cannot be parsed. Returns what it sets as key=value pairs, the password
// shown as "****" — what may be logged.
absl::StatusOr<std::string> DescribeConninfo(const std::string& conninfo);

// One statement parameter: text or binary, or SQL NULL.
struct PgParam {
  std::string value;
  bool binary = false;
  bool null = false;

  static PgParam Text(std::string text) { return {std::move(text)}; }
  static PgParam Int(int64_t value);
  static PgParam Bytes(std::string bytes) { return {std::move(bytes), true}; }
  static PgParam Null() { return {{}, false, true}; }
  // A one-dimensional array in binary form: bytea[] ($1::bytea[]) and
  // int8[] ($1::int8[]).
  static PgParam ByteaArray(absl::Span<const std::string> elements);
  static PgParam Int8Array(absl::Span<const int64_t> elements);
  // text[] ($1::text[]); the elements must be valid in the database's
  // encoding.
  static PgParam TextArray(absl::Span<const std::string> elements);
};

struct PgStatement {
  // Nonempty: prepared once per connection under this name, then reused.
  std::string name;
  std::string sql;
  std::vector<PgParam> params;
};

// The rows of one statement, columns in binary format.
class PgResult {
 public:
  explicit PgResult(pg_result* result);
  ~PgResult();
  PgResult(PgResult&& other) noexcept;
  PgResult& operator=(PgResult&& other) noexcept;
  PgResult(const PgResult&) = delete;
  PgResult& operator=(const PgResult&) = delete;

  int rows() const;
  // Rows an INSERT/UPDATE/DELETE touched.
  uint64_t affected() const;
  bool null(int row, int column) const;
  absl::string_view bytes(int row, int column) const;
  // int2, int4 or int8 (0 for NULL).
  int64_t integer(int row, int column) const;

 private:
  pg_result* result_;
};

class PgConnection {
 public:
  static absl::StatusOr<std::unique_ptr<PgConnection>> Connect(
      const PgConnectOptions& options);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Sends every statement, then waits for all their results, in one round
  // trip. Stops at the first statement that fails (later ones are not run)
  // and reports it; outside a transaction block each statement is its own
  // transaction, so those before it stay done.
  absl::StatusOr<std::vector<PgResult>> Run(
      absl::Span<const PgStatement> statements, absl::Time deadline);
  absl::StatusOr<PgResult> RunOne(const PgStatement& statement,
                                  absl::Time deadline);

  // Notifications (LISTEN): waits up to `deadline` for at least one, and
  // returns their payloads (empty: none came).
  absl::StatusOr<std::vector<std::string>> WaitForNotifications(
      absl::Time deadline);

  // False once the connection broke or timed out: make a new one.
  bool ok() const;
  // The SQLSTATE of the last statement PostgreSQL refused, or empty.
  const std::string& sqlstate() const { return sqlstate_; }
  // Whether the last Run() drew PostgreSQL's warning that a COMMIT's wait
  // for the synchronous standby was cancelled: the transaction committed
  // on the primary, the standby may not have it.
  bool replication_wait_cancelled() const {
    return replication_wait_cancelled_;
  }
  // The server's parameter (server_version, ...), or empty.
  std::string parameter(const char* name) const;
  // host:port of the server this connection reached.
  std::string peer() const;

 private:
  explicit PgConnection(pg_conn* conn) : conn_(conn) {}

  // Marks the connection broken and returns UNAVAILABLE with `what`.
  absl::Status Broken(absl::string_view what);
  // Waits until the socket is readable (or writable with `write`).
  absl::Status WaitSocket(bool write, absl::Time deadline);
  absl::Status Flush(absl::Time deadline);
  // The next result of the pipeline, waiting for it.
  absl::StatusOr<pg_result*> NextResult(absl::Time deadline);

  pg_conn* conn_;
  bool broken_ = false;
  bool replication_wait_cancelled_ = false;
  std::string sqlstate_;
  std::set<std::string, std::less<>> prepared_;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_POSTGRES_PG_CONNECTION_H_
