// idem-chaos: concurrent clients do Begin -> work -> Complete / Release on
// overlapping keys against the real idem-server while a nemesis kill -9s and
// restarts it and pauses it (SIGSTOP) for longer than any lease. Every call
// is recorded with its invocation and return time and its reply; at the end
// the history is checked (history_checker.h) and a report printed.
//
//   idem-chaos --duration=60s                       # the CI run
//   idem-chaos --duration=30m --history=h.jsonl     # a soak, history kept
//   idem-chaos --check=h.jsonl                      # re-check a history
//   idem-chaos --postgres                           # replicas over PostgreSQL
//
// Exit code: 0 no violation, 1 violations (or no progress), 2 harness error.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/internal/rpc.h"
#include "client/internal/session.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/faults/history_checker.h"
#include "tests/testing/local_postgres.h"
#include "tests/testing/local_redis_cluster.h"
#include "tests/testing/server_process.h"

ABSL_FLAG(absl::Duration, duration, absl::Seconds(60),
          "how long clients run against the faulty server");
ABSL_FLAG(int, clients, 12, "concurrent clients (one thread each)");
ABSL_FLAG(int, keys, 16,
          "keys in play at once; every --key-generation they are replaced by "
          "fresh ones (completed keys stay completed for the retention)");
ABSL_FLAG(absl::Duration, key_generation, absl::Seconds(3),
          "how long one set of keys stays in play");
ABSL_FLAG(absl::Duration, kill_every, absl::Seconds(2),
          "mean time between faults (kill -9 + restart, or a pause)");
ABSL_FLAG(int, pause_one_in, 4, "one fault in N is a pause instead of a kill");
ABSL_FLAG(absl::Duration, pause_for, absl::Milliseconds(2500),
          "how long a pause lasts (longer than the longest lease, 2 s)");
ABSL_FLAG(std::string, history, "",
          "write the history here (JSON lines); default: not kept");
ABSL_FLAG(std::string, check, "", "only check this history file, run nothing");
ABSL_FLAG(uint32_t, seed, 0, "random seed (0: from the clock)");
ABSL_FLAG(bool, session, false,
          "clients call over one Session stream they all share (the client "
          "library's, as a service's threads do) instead of unary RPCs");
ABSL_FLAG(bool, redis_cluster, false,
          "run the server as a stateless replica over a local Redis Cluster "
          "(3 masters, 3 replicas, started here; --redis-wait-replicas=1) "
          "instead of on RocksDB");
ABSL_FLAG(bool, postgres, false,
          "run two stateless replicas over a local PostgreSQL 15 (started "
          "here); clients split between them, and one fault in "
          "--postgres_crash_one_in is an immediate restart of PostgreSQL "
          "instead of a replica's kill -9");
ABSL_FLAG(int, postgres_crash_one_in, 3,
          "with --postgres: one fault in N crashes (SIGQUIT) and restarts "
          "the database");

namespace idem::faults {
namespace {

using google::protobuf::util::TimeUtil;
using v1::BeginRequest;
using v1::BeginResponse;

constexpr char kNamespace[] = "chaos";
constexpr absl::Duration kCallDeadline = absl::Seconds(1);
constexpr absl::Duration kRetention = absl::Hours(1);

int64_t NowMicros() { return absl::ToUnixMicros(absl::Now()); }

int64_t Micros(const google::protobuf::Timestamp& t) {
  return TimeUtil::TimestampToMicroseconds(t);
}

google::protobuf::Duration ToProto(absl::Duration d) {
  return TimeUtil::MicrosecondsToDuration(absl::ToInt64Microseconds(d));
}

// What a failed call says about its effect: codes that mean "refused before
// anything changed" are definite; the rest (a killed or paused server, and
// RESOURCE_EXHAUSTED, which gRPC may also raise for a reply) are unknown.
HistoryEvent::Result ResultOf(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return HistoryEvent::RESULT_OK;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::OUT_OF_RANGE:
      return HistoryEvent::RESULT_FAILED;
    default:
      return HistoryEvent::RESULT_UNKNOWN;
  }
}

class History {
 public:
  void Add(HistoryEvent event) {
    absl::MutexLock lock(&mu_);
    events_.push_back(std::move(event));
  }
  std::vector<HistoryEvent> Snapshot() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<HistoryEvent> events_ ABSL_GUARDED_BY(mu_);
};

// One client's connection; a new channel after a failure, because gRPC
// 1.51's pick_first takes seconds to notice a restarted server.
class Caller {
 public:
  // With `session` (shared by every Caller; its channels `channels`), calls
  // go over its stream instead of unary RPCs.
  Caller(std::string address, int client, History& history,
         client::internal::SessionMux* session = nullptr,
         client::internal::ChannelHolder* channels = nullptr)
      : address_(std::move(address)),
        client_(client),
        history_(history),
        session_(session),
        channels_(channels) {
    Reconnect();
  }

  void Reconnect() {
    if (channels_ != nullptr) channels_->OnUnavailable();
    stub_ = v1::Idempotency::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }

  // The call as a unary RPC, or as one op of the shared session.
  template <typename Request, typename Response, typename Unary>
  grpc::Status Send(grpc::ClientContext& context, const Request& request,
                    Response* response, Request* (v1::SessionOp::*op_field)(),
                    Response* (v1::SessionResult::*result_field)(),
                    Unary unary) {
    if (session_ == nullptr) return unary();
    v1::SessionOp op;
    *(op.*op_field)() = request;
    v1::SessionResult result;
    grpc::Status status =
        session_->Call(&op, absl::FromChrono(context.deadline()), &result);
    if (status.ok()) response->Swap((result.*result_field)());
    return status;
  }

  HistoryEvent Begin(const std::string& key, const std::string& owner,
                     absl::Duration lease, absl::Duration wait) {
    BeginRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    request.set_fingerprint("same request");
    request.set_owner(owner);
    *request.mutable_lease() = ToProto(lease);
    *request.mutable_retention() = ToProto(kRetention);
    if (wait > absl::ZeroDuration()) *request.mutable_wait() = ToProto(wait);
    BeginResponse response;
    HistoryEvent e = Start(HistoryEvent::OP_BEGIN, key);
    e.set_lease_us(absl::ToInt64Microseconds(lease));
    grpc::ClientContext context;
    SetDeadline(context, wait);
    const grpc::Status status =
        Send(context, request, &response, &v1::SessionOp::mutable_begin,
             &v1::SessionResult::mutable_begin,
             [&] { return stub_->Begin(&context, request, &response); });
    if (status.ok()) {
      switch (response.outcome()) {
        case BeginResponse::OUTCOME_ACQUIRED:
          e.set_outcome(HistoryEvent::OUTCOME_ACQUIRED);
          e.set_reply_token(response.lease().token());
          e.set_lease_expires_at_us(Micros(response.lease().expires_at()));
          break;
        case BeginResponse::OUTCOME_COMPLETED:
          e.set_outcome(HistoryEvent::OUTCOME_COMPLETED);
          e.set_reply_body(response.result().body());
          break;
        case BeginResponse::OUTCOME_IN_PROGRESS:
          e.set_outcome(HistoryEvent::OUTCOME_IN_PROGRESS);
          break;
        default:
          e.set_outcome(HistoryEvent::OUTCOME_MISMATCH);
      }
    }
    return Finish(std::move(e), status);
  }

  HistoryEvent Complete(const std::string& key, uint64_t token,
                        const std::string& body) {
    v1::CompleteRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    request.set_token(token);
    request.mutable_result()->set_code(200);
    request.mutable_result()->set_body(body);
    v1::CompleteResponse response;
    HistoryEvent e = Start(HistoryEvent::OP_COMPLETE, key);
    e.set_token(token);
    e.set_body(body);
    grpc::ClientContext context;
    SetDeadline(context);
    const grpc::Status status =
        Send(context, request, &response, &v1::SessionOp::mutable_complete,
             &v1::SessionResult::mutable_complete,
             [&] { return stub_->Complete(&context, request, &response); });
    if (status.ok()) {
      e.set_result_expires_at_us(Micros(response.expires_at()));
    }
    return Finish(std::move(e), status);
  }

  HistoryEvent Release(const std::string& key, uint64_t token) {
    v1::ReleaseRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    request.set_token(token);
    v1::ReleaseResponse response;
    HistoryEvent e = Start(HistoryEvent::OP_RELEASE, key);
    e.set_token(token);
    grpc::ClientContext context;
    SetDeadline(context);
    return Finish(
        std::move(e),
        Send(context, request, &response, &v1::SessionOp::mutable_release,
             &v1::SessionResult::mutable_release,
             [&] { return stub_->Release(&context, request, &response); }));
  }

  HistoryEvent Extend(const std::string& key, uint64_t token,
                      absl::Duration lease) {
    v1::ExtendRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    request.set_token(token);
    *request.mutable_lease() = ToProto(lease);
    v1::ExtendResponse response;
    HistoryEvent e = Start(HistoryEvent::OP_EXTEND, key);
    e.set_token(token);
    e.set_lease_us(absl::ToInt64Microseconds(lease));
    grpc::ClientContext context;
    SetDeadline(context);
    const grpc::Status status =
        Send(context, request, &response, &v1::SessionOp::mutable_extend,
             &v1::SessionResult::mutable_extend,
             [&] { return stub_->Extend(&context, request, &response); });
    if (status.ok()) {
      e.set_lease_expires_at_us(Micros(response.expires_at()));
    }
    return Finish(std::move(e), status);
  }

  HistoryEvent Lookup(const std::string& key) {
    v1::LookupRequest request;
    request.set_namespace_(kNamespace);
    request.set_key(key);
    v1::LookupResponse response;
    HistoryEvent e = Start(HistoryEvent::OP_LOOKUP, key);
    grpc::ClientContext context;
    SetDeadline(context);
    const grpc::Status status =
        Send(context, request, &response, &v1::SessionOp::mutable_lookup,
             &v1::SessionResult::mutable_lookup,
             [&] { return stub_->Lookup(&context, request, &response); });
    if (status.ok()) {
      switch (response.state()) {
        case v1::LookupResponse::STATE_COMPLETED:
          e.set_outcome(HistoryEvent::OUTCOME_COMPLETED);
          e.set_reply_body(response.result().body());
          break;
        case v1::LookupResponse::STATE_IN_PROGRESS:
          e.set_outcome(HistoryEvent::OUTCOME_IN_PROGRESS);
          break;
        default:
          e.set_outcome(HistoryEvent::OUTCOME_ABSENT);
      }
    }
    return Finish(std::move(e), status);
  }

 private:
  HistoryEvent Start(HistoryEvent::Op op, const std::string& key) const {
    HistoryEvent e;
    e.set_op(op);
    e.set_key(key);
    e.set_client(client_);
    e.set_invoked_us(NowMicros());
    return e;
  }

  HistoryEvent Finish(HistoryEvent e, const grpc::Status& status) {
    e.set_returned_us(NowMicros());
    e.set_result(ResultOf(status));
    e.set_grpc_code(status.error_code());
    e.set_error(status.error_message());
    if (e.result() == HistoryEvent::RESULT_UNKNOWN) Reconnect();
    history_.Add(e);
    return e;
  }

  static void SetDeadline(grpc::ClientContext& context,
                          absl::Duration wait = absl::ZeroDuration()) {
    context.set_deadline(
        absl::ToChronoTime(absl::Now() + kCallDeadline + wait));
  }

  std::string address_;
  int client_;
  History& history_;
  client::internal::SessionMux* const session_;
  client::internal::ChannelHolder* const channels_;
  std::unique_ptr<v1::Idempotency::Stub> stub_;
};

struct Counters {
  std::atomic<int64_t> kills{0};
  std::atomic<int64_t> pauses{0};
  std::atomic<int64_t> sweeps{0};
};

class Chaos {
 public:
  // Clients split between `servers` (replicas of one store); with
  // `database`, restarting it is one of the faults.
  Chaos(std::vector<testing::ServerProcess*> servers,
        testing::LocalPostgres* database, uint32_t seed)
      : servers_(std::move(servers)),
        server_(*servers_.front()),
        database_(database),
        seed_(seed),
        start_(absl::Now()) {}

  absl::Status Run(absl::Duration duration) {
    const absl::Time end = start_ + duration;
    if (absl::GetFlag(FLAGS_session)) {
      client::ClientOptions options;
      options.target = server_.address();
      channels_ = std::make_unique<client::internal::ChannelHolder>(
          grpc::CreateChannel(server_.address(),
                              grpc::InsecureChannelCredentials()),
          options, /*replaceable=*/true);
      session_ =
          std::make_unique<client::internal::SessionMux>(channels_.get());
    }
    std::vector<std::thread> clients;
    for (int c = 0; c < absl::GetFlag(FLAGS_clients); ++c) {
      clients.emplace_back([this, c, end] { ClientLoop(c, end); });
    }
    absl::Status status = Nemesis(end);
    stop_ = true;
    for (std::thread& t : clients) t.join();
    if (!status.ok()) return status;
    // A last crash, then every key is read back.
    for (testing::ServerProcess* server : servers_) {
      server->Kill();
      ++counters_.kills;
      if (absl::Status s = server->Start(); !s.ok()) return s;
    }
    Sweep();
    return absl::OkStatus();
  }

  const History& history() const { return history_; }
  const Counters& counters() const { return counters_; }
  int64_t database_restarts() const { return database_restarts_; }

 private:
  std::string KeyAt(absl::Time now, int index) const {
    const int64_t generation =
        (now - start_) / absl::GetFlag(FLAGS_key_generation);
    return absl::StrCat("g", generation, "-k", index);
  }

  void ClientLoop(int client, absl::Time end) {
    std::mt19937 rng(seed_ * 7919 + static_cast<uint32_t>(client));
    auto uniform_ms = [&rng](int lo, int hi) {
      return absl::Milliseconds(
          std::uniform_int_distribution<int>(lo, hi)(rng));
    };
    auto chance = [&rng](double p) {
      return std::bernoulli_distribution(p)(rng);
    };
    Caller caller(
        servers_[static_cast<size_t>(client) % servers_.size()]->address(),
        client, history_, session_.get(), channels_.get());
    for (int attempt = 0; !stop_ && absl::Now() < end; ++attempt) {
      const std::string key =
          KeyAt(absl::Now(), std::uniform_int_distribution<int>(
                                 0, absl::GetFlag(FLAGS_keys) - 1)(rng));
      const std::string owner = absl::StrCat("c", client, "-", attempt);
      const absl::Duration lease = uniform_ms(1000, 2000);
      const absl::Duration wait =
          chance(0.3) ? uniform_ms(100, 1500) : absl::ZeroDuration();
      HistoryEvent begun = caller.Begin(key, owner, lease, wait);
      if (begun.result() == HistoryEvent::RESULT_UNKNOWN) {
        // As the client library does: the same owner gets its own lease
        // back if the lost call acquired the key.
        absl::SleepFor(absl::Milliseconds(100));
        begun = caller.Begin(key, owner, lease, wait);
      }
      if (begun.result() != HistoryEvent::RESULT_OK ||
          begun.outcome() != HistoryEvent::OUTCOME_ACQUIRED) {
        absl::SleepFor(uniform_ms(10, 100));
        continue;
      }
      const uint64_t token = begun.reply_token();
      // Work: sometimes past the lease, so that others take over.
      absl::SleepFor(uniform_ms(0, 800));
      if (chance(0.5)) caller.Extend(key, token, lease);
      absl::SleepFor(uniform_ms(0, 800));
      const bool complete = chance(0.75);
      const std::string body =
          absl::StrCat("result of ", key, " by ", owner, " token ", token);
      // A call whose reply was lost is retried as a client library would.
      for (int tries = 0; tries < 3 && !stop_; ++tries) {
        HistoryEvent done = complete ? caller.Complete(key, token, body)
                                     : caller.Release(key, token);
        if (done.result() != HistoryEvent::RESULT_UNKNOWN) break;
        absl::SleepFor(absl::Milliseconds(100));
      }
    }
  }

  absl::Status Nemesis(absl::Time end) {
    std::mt19937 rng(seed_);
    const absl::Duration mean = absl::GetFlag(FLAGS_kill_every);
    std::uniform_real_distribution<double> jitter(0.5, 1.5);
    while (true) {
      const absl::Time next = absl::Now() + mean * jitter(rng);
      if (next >= end) break;
      absl::SleepFor(next - absl::Now());
      const int pause_one_in = absl::GetFlag(FLAGS_pause_one_in);
      if (pause_one_in > 0 &&
          std::uniform_int_distribution<int>(1, pause_one_in)(rng) == 1) {
        server_.Signal(SIGSTOP);
        absl::SleepFor(absl::GetFlag(FLAGS_pause_for));
        server_.Signal(SIGCONT);
        ++counters_.pauses;
      } else if (database_ != nullptr &&
                 std::uniform_int_distribution<int>(
                     1, absl::GetFlag(FLAGS_postgres_crash_one_in))(rng) == 1) {
        // An immediate shutdown: no checkpoint, crash recovery on start.
        database_->Crash();
        absl::SleepFor(absl::Milliseconds(
            std::uniform_int_distribution<int>(0, 1000)(rng)));
        if (absl::Status s = database_->Restart(); !s.ok()) {
          return absl::InternalError(
              absl::StrCat("PostgreSQL did not restart: ", s.message()));
        }
        ++database_restarts_;
        Sweep();
      } else {
        testing::ServerProcess& victim =
            *servers_[std::uniform_int_distribution<size_t>(
                0, servers_.size() - 1)(rng)];
        victim.Kill();
        ++counters_.kills;
        if (absl::Status s = victim.Start(); !s.ok()) {
          return absl::InternalError(absl::StrCat(
              "idem-server did not restart after kill -9: ", s.message()));
        }
        Sweep();
      }
    }
    if (absl::Now() < end) absl::SleepFor(end - absl::Now());
    return absl::OkStatus();
  }

  // Reads back every key touched so far: what was acknowledged before the
  // crash must still be there (the checker holds every read to that).
  void Sweep() {
    std::vector<std::string> keys;
    for (const HistoryEvent& e : history_.Snapshot()) keys.push_back(e.key());
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    Caller reader(server_.address(), /*client=*/-1, history_);
    for (const std::string& key : keys) reader.Lookup(key);
    ++counters_.sweeps;
  }

  const std::vector<testing::ServerProcess*> servers_;
  // The first replica: the session's, the pauses' and the sweeps'.
  testing::ServerProcess& server_;
  testing::LocalPostgres* const database_;
  int64_t database_restarts_ = 0;
  const uint32_t seed_;
  const absl::Time start_;
  std::atomic<bool> stop_{false};
  History history_;
  Counters counters_;
  // --session: the stream every client shares (destroyed first).
  std::unique_ptr<client::internal::ChannelHolder> channels_;
  std::unique_ptr<client::internal::SessionMux> session_;
};

absl::Status WriteHistory(const std::vector<HistoryEvent>& history,
                          const std::string& path) {
  std::ofstream out(path);
  for (const HistoryEvent& e : history) {
    absl::StatusOr<std::string> line = HistoryLine(e);
    if (!line.ok()) return line.status();
    out << *line << '\n';
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

int PrintReport(const HistoryReport& report) {
  std::printf(
      "history: %lld events on %lld keys; %lld acquisitions, %lld "
      "completions acknowledged, %lld replays, %lld replies lost\n",
      static_cast<long long>(report.events),
      static_cast<long long>(report.keys),
      static_cast<long long>(report.acquisitions),
      static_cast<long long>(report.completions),
      static_cast<long long>(report.replays),
      static_cast<long long>(report.unknown_results));
  std::printf("violations: %zu\n", report.violations.size());
  size_t shown = 0;
  for (const Violation& v : report.violations) {
    if (++shown > 20) {
      std::printf("  ... and %zu more\n", report.violations.size() - 20);
      break;
    }
    std::printf("  [%s] key %s: %s\n", v.rule.c_str(), v.key.c_str(),
                v.detail.c_str());
  }
  return report.violations.empty() ? 0 : 1;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Runs clients against a kill -9'd and paused idem-server and checks "
      "the history. See the file comment of tests/faults/chaos.cc.");
  absl::ParseCommandLine(argc, argv);

  if (const std::string path = absl::GetFlag(FLAGS_check); !path.empty()) {
    absl::StatusOr<std::vector<HistoryEvent>> history = ReadHistory(path);
    if (!history.ok()) {
      std::fprintf(stderr, "%s\n", history.status().ToString().c_str());
      return 2;
    }
    return PrintReport(CheckHistory(*history));
  }

  uint32_t seed = absl::GetFlag(FLAGS_seed);
  if (seed == 0) seed = static_cast<uint32_t>(absl::ToUnixNanos(absl::Now()));
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  std::printf("idem-chaos: %d clients, %s, seed %u\n",
              absl::GetFlag(FLAGS_clients),
              absl::FormatDuration(duration).c_str(), seed);
  std::fflush(stdout);

  std::unique_ptr<testing::LocalRedisCluster> redis;
  std::vector<std::string> server_flags;
  if (absl::GetFlag(FLAGS_redis_cluster)) {
    absl::StatusOr<std::unique_ptr<testing::LocalRedisCluster>> started =
        testing::LocalRedisCluster::Start(3, 1);
    if (!started.ok()) {
      std::fprintf(stderr, "%s\n", started.status().ToString().c_str());
      return 2;
    }
    redis = *std::move(started);
    server_flags = {"--store=redis-cluster://" + redis->Seeds(),
                    "--redis-wait-replicas=1"};
    std::printf("idem-chaos: over Redis Cluster %s\n", redis->Seeds().c_str());
  }
  std::unique_ptr<testing::LocalPostgres> postgres;
  int replicas = 1;
  if (absl::GetFlag(FLAGS_postgres)) {
    absl::StatusOr<std::unique_ptr<testing::LocalPostgres>> started =
        testing::LocalPostgres::Start();
    if (!started.ok()) {
      std::fprintf(stderr, "%s\n", started.status().ToString().c_str());
      return 2;
    }
    postgres = *std::move(started);
    // A short statement timeout: calls during a database restart fail fast.
    server_flags = {"--store=" + postgres->uri(), "--postgres-timeout=3s"};
    replicas = 2;
    std::printf("idem-chaos: 2 replicas over PostgreSQL %s\n",
                postgres->uri().c_str());
  }
  std::vector<std::unique_ptr<testing::ServerProcess>> servers;
  std::vector<testing::ServerProcess*> server_pointers;
  for (int i = 0; i < replicas; ++i) {
    servers.push_back(std::make_unique<testing::ServerProcess>(server_flags));
    if (absl::Status s = servers.back()->Start(); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 2;
    }
    server_pointers.push_back(servers.back().get());
  }
  Chaos chaos(server_pointers, postgres.get(), seed);
  const absl::Status run = chaos.Run(duration);
  for (const auto& server : servers) server->Kill();
  if (!run.ok()) {
    std::fprintf(stderr, "%s\n", run.ToString().c_str());
    for (const auto& server : servers) {
      std::fprintf(stderr, "server log:\n%s\n", server->log().c_str());
    }
    if (postgres != nullptr) {
      std::fprintf(stderr, "postgres log:\n%s\n", postgres->log().c_str());
    }
    return 2;
  }

  const std::vector<HistoryEvent> history = chaos.history().Snapshot();
  if (const std::string path = absl::GetFlag(FLAGS_history); !path.empty()) {
    if (absl::Status s = WriteHistory(history, path); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 2;
    }
  }
  std::printf(
      "faults: %lld kill -9 + restart, %lld pauses of %s; %lld "
      "read-back sweeps\n",
      static_cast<long long>(chaos.counters().kills.load()),
      static_cast<long long>(chaos.counters().pauses.load()),
      absl::FormatDuration(absl::GetFlag(FLAGS_pause_for)).c_str(),
      static_cast<long long>(chaos.counters().sweeps.load()));
  if (postgres != nullptr) {
    std::printf("faults: %lld immediate restarts of PostgreSQL\n",
                static_cast<long long>(chaos.database_restarts()));
  }
  const HistoryReport report = CheckHistory(history);
  int exit_code = PrintReport(report);
  // A run that did nothing proves nothing.
  if (report.completions == 0 || report.replays == 0 ||
      chaos.counters().kills.load() < 2) {
    std::printf("FAILED: too little happened to prove anything\n");
    exit_code = 1;
  }
  return exit_code;
}

}  // namespace
}  // namespace idem::faults

int main(int argc, char** argv) { return idem::faults::Main(argc, argv); }
