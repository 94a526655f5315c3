#include "storage/postgres/pg_connection.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace idem::storage {
namespace {

constexpr uint32_t kByteaOid = 17;
constexpr uint32_t kInt8Oid = 20;
constexpr uint32_t kTextOid = 25;

void AppendBigEndian32(std::string& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((value >> shift) & 0xff));
  }
}

void AppendBigEndian64(std::string& out, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((value >> shift) & 0xff));
  }
}

// The binary array header of a one-dimensional array of `count` elements.
std::string ArrayHeader(uint32_t element_oid, size_t count) {
  std::string out;
  AppendBigEndian32(out, count == 0 ? 0 : 1);  // Dimensions.
  AppendBigEndian32(out, 0);                   // No NULLs.
  AppendBigEndian32(out, element_oid);
  if (count > 0) {
    AppendBigEndian32(out, static_cast<uint32_t>(count));
    AppendBigEndian32(out, 1);  // Lower bound.
  }
  return out;
}

// libpq's messages end in a newline; log lines should not.
std::string Trimmed(const char* message) {
  return std::string(
      absl::StripTrailingAsciiWhitespace(message != nullptr ? message : ""));
}

PgParam StringArray(uint32_t element_oid,
                    absl::Span<const std::string> elements) {
  std::string out = ArrayHeader(element_oid, elements.size());
  for (const std::string& element : elements) {
    AppendBigEndian32(out, static_cast<uint32_t>(element.size()));
    out += element;
  }
  return PgParam::Bytes(std::move(out));
}

}  // namespace

PgParam PgParam::Int(int64_t value) { return Text(absl::StrCat(value)); }

PgParam PgParam::ByteaArray(absl::Span<const std::string> elements) {
  return StringArray(kByteaOid, elements);
}

PgParam PgParam::TextArray(absl::Span<const std::string> elements) {
  return StringArray(kTextOid, elements);
}

PgParam PgParam::Int8Array(absl::Span<const int64_t> elements) {
  std::string out = ArrayHeader(kInt8Oid, elements.size());
  for (const int64_t element : elements) {
    AppendBigEndian32(out, 8);
    AppendBigEndian64(out, static_cast<uint64_t>(element));
  }
  return Bytes(std::move(out));
}

PgResult::PgResult(pg_result* result) : result_(result) {}
PgResult::~PgResult() {
  if (result_ != nullptr) PQclear(result_);
}
PgResult::PgResult(PgResult&& other) noexcept
    : result_(std::exchange(other.result_, nullptr)) {}
PgResult& PgResult::operator=(PgResult&& other) noexcept {
  if (this != &other) {
    if (result_ != nullptr) PQclear(result_);
    result_ = std::exchange(other.result_, nullptr);
  }
  return *this;
}

int PgResult::rows() const {
  return result_ == nullptr ? 0 : PQntuples(result_);
}

uint64_t PgResult::affected() const {
  if (result_ == nullptr) return 0;
  const char* tuples = PQcmdTuples(result_);
  uint64_t count = 0;
  for (const char* c = tuples; *c >= '0' && *c <= '9'; ++c) {
    count = count * 10 + static_cast<uint64_t>(*c - '0');
  }
  return count;
}

bool PgResult::null(int row, int column) const {
  return PQgetisnull(result_, row, column) != 0;
}

absl::string_view PgResult::bytes(int row, int column) const {
  return {PQgetvalue(result_, row, column),
          static_cast<size_t>(PQgetlength(result_, row, column))};
}

int64_t PgResult::integer(int row, int column) const {
  if (null(row, column)) return 0;
  const absl::string_view raw = bytes(row, column);
  uint64_t value = 0;
  for (const char c : raw) value = (value << 8) | static_cast<unsigned char>(c);
  // Sign-extend int2 and int4.
  const size_t bits = raw.size() * 8;
  if (bits > 0 && bits < 64 && (value >> (bits - 1)) != 0) {
    value |= ~uint64_t{0} << bits;
  }
  return static_cast<int64_t>(value);
}

namespace {

// The passwords a connection attempt may carry, for scrubbing errors.
std::vector<std::string> Secrets(const PgConnectOptions& options) {
  std::vector<std::string> secrets;
  if (!options.password.empty()) secrets.push_back(options.password);
  PQconninfoOption* parsed = PQconninfoParse(options.conninfo.c_str(), nullptr);
  if (parsed == nullptr) return secrets;
  for (const PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
    if (o->val != nullptr && *o->val != '\0' &&
        std::strcmp(o->keyword, "password") == 0) {
      secrets.emplace_back(o->val);
    }
  }
  PQconninfoFree(parsed);
  return secrets;
}

}  // namespace

absl::StatusOr<std::string> DescribeConninfo(const std::string& conninfo) {
  char* error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &error);
  if (parsed == nullptr) {
    // libpq's reason quotes the offending text, which may be the password.
    PQfreemem(error);
    return absl::InvalidArgumentError(
        "not a valid libpq connection string (not shown: it may hold a "
        "password); see "
        "https://www.postgresql.org/docs/15/libpq-connect.html");
  }
  std::string described;
  absl::Status valid;
  for (const PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    // libpq checks ports only when it connects: a typo would surface as an
    // unreachable database at every start.
    if (std::strcmp(o->keyword, "port") == 0) {
      for (absl::string_view port : absl::StrSplit(o->val, ',')) {
        int number = 0;
        if (!port.empty() && (!absl::SimpleAtoi(port, &number) || number < 1 ||
                              number > 65535)) {
          // Not echoed: a password with a '/' in it ends up here.
          valid = absl::InvalidArgumentError(
              "a port is not a number from 1 to 65535");
        }
      }
    }
    const bool secret = std::strcmp(o->keyword, "password") == 0 ||
                        std::strchr(o->dispchar, '*') != nullptr;
    absl::StrAppend(&described, described.empty() ? "" : " ", o->keyword, "=",
                    secret ? "****" : o->val);
  }
  PQconninfoFree(parsed);
  if (!valid.ok()) return valid;
  return described;
}

absl::StatusOr<std::unique_ptr<PgConnection>> PgConnection::Connect(
    const PgConnectOptions& options) {
  // The connection string first: keywords after it override what it says,
  // and fallback_application_name yields to its application_name.
  const std::string connect_timeout = absl::StrCat(std::max<int64_t>(
      2, absl::ToInt64Seconds(options.timeout + absl::Seconds(1) -
                              absl::Nanoseconds(1))));
  std::vector<const char*> keys = {"dbname", "fallback_application_name",
                                   "connect_timeout"};
  std::vector<const char*> values = {options.conninfo.c_str(),
                                     options.application_name.c_str(),
                                     connect_timeout.c_str()};
  if (!options.password.empty()) {
    keys.push_back("password");
    values.push_back(options.password.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  pg_conn* conn = PQconnectdbParams(keys.data(), values.data(),
                                    /*expand_dbname=*/1);
  if (conn == nullptr) {
    return absl::ResourceExhaustedError(
        "libpq could not allocate a connection");
  }
  std::unique_ptr<PgConnection> connection(new PgConnection(conn));
  if (PQstatus(conn) != CONNECTION_OK) {
    // libpq may quote a host name or option that holds (part of) a
    // password given in the URI.
    std::string why = Trimmed(PQerrorMessage(conn));
    for (const std::string& secret : Secrets(options)) {
      why = absl::StrReplaceAll(why, {{secret, "****"}});
    }
    return absl::UnavailableError(
        absl::StrCat("could not connect to PostgreSQL: ", why));
  }
  // NOTICEs (an IF NOT EXISTS that skipped, a cascade) are not errors and
  // are dropped; the one that says a COMMIT's wait for the synchronous
  // standby was cancelled (with the COMMIT reported a success) is kept.
  PQsetNoticeReceiver(
      conn,
      [](void* arg, const pg_result* notice) {
        const char* primary =
            PQresultErrorField(notice, PG_DIAG_MESSAGE_PRIMARY);
        if (primary != nullptr &&
            std::strstr(primary, "synchronous replication") != nullptr) {
          static_cast<PgConnection*>(arg)->replication_wait_cancelled_ = true;
        }
      },
      connection.get());
  if (PQsetnonblocking(conn, 1) != 0) {
    return absl::UnavailableError(absl::StrCat(
        "libpq refused non-blocking mode: ", Trimmed(PQerrorMessage(conn))));
  }
  // Every statement is bounded on the server too, so that no lock is held
  // by a client that went away, and no call waits forever on a lock. Set
  // with a deadline: a server that stops answering after the handshake
  // must not hold the caller.
  const std::string timeout_ms = absl::StrCat(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(options.timeout)));
  absl::StatusOr<std::vector<PgResult>> set = connection->Run(
      {{"", absl::StrCat("SET statement_timeout = ", timeout_ms), {}},
       {"",
        absl::StrCat("SET idle_in_transaction_session_timeout = ", timeout_ms),
        {}}},
      absl::Now() + options.timeout);
  if (!set.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "could not set the session's timeouts: ", set.status().message()));
  }
  return connection;
}

PgConnection::~PgConnection() { PQfinish(conn_); }

bool PgConnection::ok() const {
  return !broken_ && PQstatus(conn_) == CONNECTION_OK;
}

std::string PgConnection::parameter(const char* name) const {
  const char* value = PQparameterStatus(conn_, name);
  return value != nullptr ? value : "";
}

std::string PgConnection::peer() const {
  const char* host = PQhost(conn_);
  const char* port = PQport(conn_);
  return absl::StrCat(host != nullptr ? host : "?", ":",
                      port != nullptr ? port : "?");
}

absl::Status PgConnection::Broken(absl::string_view what) {
  broken_ = true;
  const std::string detail = Trimmed(PQerrorMessage(conn_));
  return absl::UnavailableError(
      absl::StrCat("PostgreSQL connection to ", peer(), " lost (", what, ")",
                   detail.empty() ? "" : ": ", detail));
}

absl::Status PgConnection::WaitSocket(bool write, absl::Time deadline) {
  pollfd fd{};
  fd.fd = PQsocket(conn_);
  fd.events = static_cast<short>(POLLIN | (write ? POLLOUT : 0));
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("timed out");
    }
    const int timeout_ms = static_cast<int>(std::min<int64_t>(
        absl::ToInt64Milliseconds(left + absl::Milliseconds(1) -
                                  absl::Nanoseconds(1)),
        60'000));
    const int ready = poll(&fd, 1, timeout_ms);
    if (ready > 0) return absl::OkStatus();
    if (ready < 0 && errno != EINTR) {
      return absl::UnavailableError(
          absl::StrCat("poll: ", std::strerror(errno)));
    }
  }
}

absl::Status PgConnection::Flush(absl::Time deadline) {
  for (;;) {
    const int flushed = PQflush(conn_);
    if (flushed == 0) return absl::OkStatus();
    if (flushed < 0) return Broken("send");
    // The server may be waiting for us to read its results before it reads
    // more: read while waiting to write.
    absl::Status waited = WaitSocket(/*write=*/true, deadline);
    if (!waited.ok()) return Broken(waited.message());
    if (PQconsumeInput(conn_) == 0) return Broken("receive");
  }
}

absl::StatusOr<pg_result*> PgConnection::NextResult(absl::Time deadline) {
  while (PQisBusy(conn_) != 0) {
    absl::Status waited = WaitSocket(/*write=*/false, deadline);
    if (!waited.ok()) return Broken(waited.message());
    if (PQconsumeInput(conn_) == 0) return Broken("receive");
  }
  return PQgetResult(conn_);
}

absl::StatusOr<std::vector<PgResult>> PgConnection::Run(
    absl::Span<const PgStatement> statements, absl::Time deadline) {
  sqlstate_.clear();
  replication_wait_cancelled_ = false;
  for (const PgStatement& s : statements) {
    for (const PgParam& p : s.params) {
      // libpq takes an int length, and PostgreSQL refuses messages over
      // 1 GiB: refused here, before anything is sent.
      if (p.value.size() >= (size_t{1} << 30)) {
        return absl::ResourceExhaustedError(
            absl::StrCat("a statement parameter of ", p.value.size(),
                         " bytes exceeds PostgreSQL's 1 GiB message limit"));
      }
    }
  }
  if (!ok()) return Broken("already closed");
  if (PQenterPipelineMode(conn_) == 0) return Broken("pipeline mode");

  // What each result read back belongs to: a Prepare of statement i, or
  // statement i itself.
  struct Expected {
    size_t statement;
    bool prepare;
  };
  std::vector<Expected> expected;
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<int> formats;
  for (size_t i = 0; i < statements.size(); ++i) {
    const PgStatement& s = statements[i];
    values.clear();
    lengths.clear();
    formats.clear();
    for (const PgParam& p : s.params) {
      values.push_back(p.null ? nullptr : p.value.data());
      lengths.push_back(static_cast<int>(p.value.size()));
      formats.push_back(p.binary ? 1 : 0);
    }
    const int count = static_cast<int>(s.params.size());
    const std::string& sql = s.sql;
    int sent = 0;
    if (s.name.empty()) {
      sent = PQsendQueryParams(conn_, sql.c_str(), count, nullptr,
                               values.data(), lengths.data(), formats.data(),
                               /*resultFormat=*/1);
    } else {
      const std::string& name = s.name;
      if (!prepared_.contains(name)) {
        if (PQsendPrepare(conn_, name.c_str(), sql.c_str(), count, nullptr) ==
            0) {
          return Broken("prepare");
        }
        expected.push_back({i, true});
      }
      sent = PQsendQueryPrepared(conn_, name.c_str(), count, values.data(),
                                 lengths.data(), formats.data(),
                                 /*resultFormat=*/1);
    }
    if (sent == 0) return Broken("send");
    expected.push_back({i, false});
  }
  if (PQpipelineSync(conn_) == 0) return Broken("sync");
  if (absl::Status flushed = Flush(deadline); !flushed.ok()) return flushed;

  std::vector<PgResult> results;
  results.reserve(statements.size());
  absl::Status failure;
  size_t next = 0;  // Index into `expected` of the query being read.
  bool have_result = false;
  for (;;) {
    absl::StatusOr<pg_result*> got = NextResult(deadline);
    if (!got.ok()) return got.status();
    pg_result* r = *got;
    if (r == nullptr) {  // The end of one query's results.
      if (next < expected.size() && !have_result) {
        return Broken("a statement returned no result");
      }
      ++next;
      have_result = false;
      continue;
    }
    const ExecStatusType status = PQresultStatus(r);
    if (status == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      break;
    }
    if (next >= expected.size()) {
      PQclear(r);
      return Broken("more results than statements");
    }
    have_result = true;
    const Expected& e = expected[next];
    if (status == PGRES_FATAL_ERROR) {
      if (failure.ok()) {
        const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        sqlstate_ = state != nullptr ? state : "";
        failure = absl::UnavailableError(absl::StrCat(
            "PostgreSQL refused ", e.prepare ? "to prepare " : "",
            statements[e.statement].name.empty()
                ? absl::string_view("a statement")
                : statements[e.statement].name,
            " (SQLSTATE ", sqlstate_, "): ", Trimmed(PQresultErrorMessage(r))));
      }
      PQclear(r);
    } else if (status == PGRES_PIPELINE_ABORTED) {
      PQclear(r);
    } else if (e.prepare) {
      prepared_.emplace(statements[e.statement].name);
      PQclear(r);
    } else {
      results.emplace_back(r);
    }
  }
  if (PQexitPipelineMode(conn_) == 0) return Broken("pipeline exit");
  if (PQstatus(conn_) != CONNECTION_OK) return Broken("closed by the server");
  if (!failure.ok()) return failure;
  if (results.size() != statements.size()) {
    return Broken("results missing");
  }
  return results;
}

absl::StatusOr<PgResult> PgConnection::RunOne(const PgStatement& statement,
                                              absl::Time deadline) {
  absl::StatusOr<std::vector<PgResult>> results =
      Run(absl::MakeConstSpan(&statement, 1), deadline);
  if (!results.ok()) return results.status();
  return std::move(results->front());
}

absl::StatusOr<std::vector<std::string>> PgConnection::WaitForNotifications(
    absl::Time deadline) {
  std::vector<std::string> payloads;
  auto drain = [&] {
    while (PGnotify* n = PQnotifies(conn_)) {
      payloads.emplace_back(n->extra != nullptr ? n->extra : "");
      PQfreemem(n);
    }
  };
  if (!ok()) return Broken("already closed");
  if (PQconsumeInput(conn_) == 0) return Broken("receive");
  drain();
  if (!payloads.empty()) return payloads;
  absl::Status waited = WaitSocket(/*write=*/false, deadline);
  if (absl::IsDeadlineExceeded(waited)) return payloads;
  if (!waited.ok()) return Broken(waited.message());
  if (PQconsumeInput(conn_) == 0) return Broken("receive");
  drain();
  return payloads;
}

}  // namespace idem::storage
