// idem-bench: a closed-loop load generator for idem-server.
//
// A fixed number of calls is kept in flight (--concurrency) over a fixed
// number of channels, each its own connection (--channels), on gRPC's
// callback client API: each completed call issues the next one. After a
// warm-up, every call that starts and ends inside the measured window is
// counted and its latency kept; percentiles are exact (every latency is
// sorted, nothing is sampled).
//
// Workloads:
//   ping       the standard health Check: the cost of a trivial RPC (ceiling)
//   begin      Begin on a fresh key (a durable write)
//   request    a full idempotent request: Begin, then Complete with a
//              200-byte body (two durable writes); one op = both calls
//   replay     Begin on keys completed beforehand (a read)
//   lookup     Lookup on keys completed beforehand (a read)
//   contended  many callers on --keys keys with wait: the first acquires and
//              completes, duplicates wait and get its result
//   batch      BeginBatch of --batch-size fresh keys, then CompleteBatch of
//              them: full requests for message consumers; reported per key
//
// Transports (--transport):
//   unary        one RPC per call (the default; grpcurl's way)
//   session      the Session stream, one per channel, shared by the calls
//                on it: calls made while a write is in flight share the
//                next message (begin, request, replay, lookup, contended)
//   client       the C++ client library as a service uses it: --concurrency
//                threads share one idem::client::Client, each calling
//                synchronously (begin, request, replay, lookup)
//   client-unary the same with ClientOptions::session = false
//   http-json    the Connect protocol over HTTP/1.1 (--http-target): one
//                keep-alive connection per --concurrency thread, JSON
//                bodies (begin, request, replay, lookup)
//   http-proto   the same with binary protobuf bodies
//
// With --server-pid, the CPU time and context switches of the server
// process (from /proc) and of idem-bench itself (getrusage) over the
// measured window are reported per op.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/client_callback.h"
#include "idem/client.h"
#include "idem/v1/idempotency.grpc.pb.h"

namespace idem::bench {
namespace {

struct Options {
  std::string target = "127.0.0.1:50051";
  std::string workload = "begin";
  int concurrency = 64;
  int channels = 4;
  absl::Duration warmup = absl::Seconds(2);
  absl::Duration duration = absl::Seconds(10);
  int keys = 10000;  // replay/lookup: keys prepared; contended: hot keys.
  int body_bytes = 200;
  int batch_size = 100;
  // Retention asked for by Begin; zero: the server's default.
  absl::Duration retention = absl::ZeroDuration();
  bool json = false;
  std::string ns = "bench";
  std::string transport = "unary";
  std::string http_target;  // HOST:PORT of --http-listen (http-* only).
  int server_pid = 0;       // Zero: the server's costs are not measured.
};

constexpr char kUsage[] =
    R"(usage: idem-bench [--target=HOST:PORT[,HOST:PORT...]] [--workload=W]
                  [--concurrency=64]
                  [--channels=4] [--warmup=2s] [--duration=10s] [--keys=N]
                  [--body-bytes=200] [--batch-size=100] [--retention=D]
                  [--namespace=bench] [--transport=T]
                  [--http-target=IP:PORT] [--server-pid=PID] [--json]
workloads: ping begin request replay lookup contended batch
transports: unary session client client-unary http-json http-proto
)";

bool ParseArgs(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg == "--json") {
      o.json = true;
      continue;
    }
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::cerr << "idem-bench: bad argument " << arg << "\n" << kUsage;
      return false;
    }
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    bool ok = true;
    if (name == "target") {
      o.target = value;
      ok = !std::vector<std::string>(
                absl::StrSplit(value, ',', absl::SkipEmpty()))
                .empty();
    } else if (name == "workload") {
      o.workload = value;
    } else if (name == "namespace") {
      o.ns = value;
    } else if (name == "transport") {
      o.transport = value;
      ok = value == "unary" || value == "session" || value == "client" ||
           value == "client-unary" || value == "http-json" ||
           value == "http-proto";
    } else if (name == "http-target") {
      o.http_target = value;
    } else if (name == "server-pid") {
      ok = absl::SimpleAtoi(value, &o.server_pid) && o.server_pid > 0 &&
           std::filesystem::exists(absl::StrCat("/proc/", o.server_pid));
    } else if (name == "concurrency") {
      ok = absl::SimpleAtoi(value, &o.concurrency) && o.concurrency > 0;
    } else if (name == "channels") {
      ok = absl::SimpleAtoi(value, &o.channels) && o.channels > 0;
    } else if (name == "keys") {
      ok = absl::SimpleAtoi(value, &o.keys) && o.keys > 0;
    } else if (name == "retention") {
      ok = absl::ParseDuration(value, &o.retention);
    } else if (name == "batch-size") {
      ok = absl::SimpleAtoi(value, &o.batch_size) && o.batch_size > 0 &&
           o.batch_size <= 1000;
    } else if (name == "body-bytes") {
      ok = absl::SimpleAtoi(value, &o.body_bytes) && o.body_bytes >= 0;
    } else if (name == "warmup") {
      ok = absl::ParseDuration(value, &o.warmup);
    } else if (name == "duration") {
      ok = absl::ParseDuration(value, &o.duration) &&
           o.duration > absl::ZeroDuration();
    } else {
      ok = false;
    }
    if (!ok) {
      std::cerr << "idem-bench: bad value for --" << name << ": " << value
                << "\n";
      return false;
    }
  }
  if (absl::StartsWith(o.transport, "http-") && o.http_target.empty()) {
    std::cerr << "idem-bench: --transport=" << o.transport
              << " needs --http-target\n";
    return false;
  }
  if (o.transport != "unary" &&
      (o.workload == "ping" || o.workload == "batch" ||
       (o.transport != "session" && o.workload == "contended"))) {
    std::cerr << "idem-bench: workload " << o.workload
              << " is not measured over --transport=" << o.transport << "\n";
    return false;
  }
  for (const char* w :
       {"ping", "begin", "request", "replay", "lookup", "contended", "batch"}) {
    if (o.workload == w) return true;
  }
  std::cerr << "idem-bench: unknown workload " << o.workload << "\n" << kUsage;
  return false;
}

// CPU time and context switches, of this process and of the server.
struct Usage {
  double client_cpu_us = 0;
  double client_switches = 0;
  double server_cpu_us = 0;
  double server_switches = 0;

  // Now; the server's part only with `server_pid` (all its threads).
  static Usage Take(int server_pid) {
    Usage u;
    rusage self{};
    getrusage(RUSAGE_SELF, &self);
    u.client_cpu_us = Micros(self.ru_utime) + Micros(self.ru_stime);
    u.client_switches = static_cast<double>(self.ru_nvcsw) +
                        static_cast<double>(self.ru_nivcsw);
    if (server_pid == 0) return u;
    const std::string proc = absl::StrCat("/proc/", server_pid);
    std::ifstream stat(proc + "/stat");
    std::string line;
    std::getline(stat, line);
    // Fields after the command name (which may hold spaces): state is the
    // 3rd field, utime and stime the 14th and 15th.
    const std::vector<std::string> fields =
        absl::StrSplit(line.substr(line.rfind(')') + 2), ' ');
    double ticks = 0;
    if (fields.size() > 13) {
      int64_t utime = 0, stime = 0;
      if (absl::SimpleAtoi(fields[11], &utime) &&
          absl::SimpleAtoi(fields[12], &stime)) {
        ticks = static_cast<double>(utime + stime);
      }
    }
    u.server_cpu_us = ticks * 1e6 / static_cast<double>(sysconf(_SC_CLK_TCK));
    std::error_code error;
    for (const auto& task :
         std::filesystem::directory_iterator(proc + "/task", error)) {
      std::ifstream status(task.path() / "status");
      while (std::getline(status, line)) {
        if (line.find("ctxt_switches:") == std::string::npos) continue;
        int64_t n = 0;
        if (absl::SimpleAtoi(line.substr(line.find(':') + 1), &n)) {
          u.server_switches += static_cast<double>(n);
        }
      }
    }
    return u;
  }

  Usage operator-(const Usage& o) const {
    return Usage{
        client_cpu_us - o.client_cpu_us, client_switches - o.client_switches,
        server_cpu_us - o.server_cpu_us, server_switches - o.server_switches};
  }

 private:
  static double Micros(const timeval& t) {
    return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_usec);
  }
};

// What every slot shares: the phase of the run and the results.
class Run {
 public:
  explicit Run(const Options& options) : options_(options) {}

  const Options& options() const { return options_; }
  void StartMeasuring() {
    usage_ = Usage::Take(options_.server_pid);
    measure_from_ = absl::GetCurrentTimeNanos();
  }
  void StopMeasuring() {
    measure_until_ = absl::GetCurrentTimeNanos();
    usage_ = Usage::Take(options_.server_pid) - usage_;
  }
  // After StopMeasuring: what the measured window cost.
  const Usage& usage() const { return usage_; }
  void Stop() { stopping_ = true; }
  bool stopping() const { return stopping_.load(); }
  absl::Duration measured() const {
    return absl::Nanoseconds(measure_until_.load() - measure_from_.load());
  }

  // An op started at `start` just ended.
  void Record(absl::Time start, bool ok, std::vector<int64_t>& latencies) {
    const absl::Time end = absl::Now();
    if (absl::ToUnixNanos(start) < measure_from_.load() ||
        absl::ToUnixNanos(end) > measure_until_.load()) {
      return;
    }
    if (ok) {
      latencies.push_back(absl::ToInt64Nanoseconds(end - start));
    } else {
      errors_.fetch_add(1);
    }
  }
  uint64_t errors() const { return errors_.load(); }
  // Keeps the first error's message for the report.
  void NoteError(const grpc::Status& status) {
    std::call_once(first_error_once_, [&] {
      first_error_ =
          absl::StrCat(status.error_code(), ": ", status.error_message());
    });
  }
  const std::string& first_error() const { return first_error_; }
  uint64_t NextId() { return next_id_.fetch_add(1); }
  // Distinguishes this run's fresh keys from those of earlier runs.
  int64_t run_id() const { return run_id_; }

 private:
  const Options options_;
  Usage usage_;
  std::atomic<bool> stopping_{false};
  // Unix nanoseconds.
  std::atomic<int64_t> measure_from_{std::numeric_limits<int64_t>::max()};
  std::atomic<int64_t> measure_until_{std::numeric_limits<int64_t>::max()};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> next_id_{0};
  const int64_t run_id_ = absl::GetCurrentTimeNanos();
  std::once_flag first_error_once_;
  std::string first_error_;
};

// Contended keys move on to a new generation once completed, so that every
// generation sees a burst of duplicates.
class HotKeys {
 public:
  explicit HotKeys(int n) : generations_(n) {}
  std::string Key(int index) {
    return absl::StrCat("hot-", index, "-", generations_[index].load());
  }
  void Completed(int index, const std::string& key) {
    if (Key(index) == key) generations_[index].fetch_add(1);
  }

 private:
  std::vector<std::atomic<uint64_t>> generations_;
};

// One Session stream, shared by the slots of a channel. Calls sent while a
// write is in flight wait in one message, written when it is done.
class BenchSession final
    : public grpc::ClientBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  // The status the unary call would have had, and the answer when it is OK.
  using Callback = std::function<void(const grpc::Status&, v1::SessionResult*)>;

  explicit BenchSession(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(v1::Idempotency::NewStub(channel)) {
    stub_->async()->Session(&context_, this);
    StartRead(&response_);
    AddHold();  // Until the reads end: Send may write from any thread.
    StartCall();
  }

  void Send(v1::SessionOp& op, Callback done) {
    v1::SessionRequest* write = nullptr;
    Callback refused;  // Set when the stream has ended.
    {
      absl::MutexLock lock(&mu_);
      if (ended_) {
        refused = std::move(done);
      } else {
        Queue(op, std::move(done), &write);
      }
    }
    if (refused) {
      refused(grpc::Status(grpc::StatusCode::UNAVAILABLE, "session ended"),
              nullptr);
      return;
    }
    if (write != nullptr) {
      StartWrite(write);
      RemoveHold();
    }
  }

  void Queue(v1::SessionOp& op, Callback done, v1::SessionRequest** write)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    op.set_id(next_id_++);
    callbacks_.emplace(op.id(), std::move(done));
    *pending_.add_ops() = op;
    if (!writing_) {
      writing_ = true;
      in_flight_.Swap(&pending_);
      *write = &in_flight_;
      AddHold();
    }
  }

  // Ends the stream and waits until gRPC is done with it.
  void Close() {
    context_.TryCancel();
    done_.WaitForNotification();
  }

  void OnWriteDone(bool ok) override {
    v1::SessionRequest* write = nullptr;
    {
      absl::MutexLock lock(&mu_);
      in_flight_.Clear();
      if (ok && pending_.ops_size() > 0) {
        in_flight_.Swap(&pending_);
        write = &in_flight_;
      } else {
        writing_ = false;
      }
    }
    if (write != nullptr) StartWrite(write);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      {
        absl::MutexLock lock(&mu_);
        ended_ = true;
      }
      RemoveHold();
      return;
    }
    std::vector<std::pair<Callback, v1::SessionResult*>> answered;
    {
      absl::MutexLock lock(&mu_);
      for (v1::SessionResult& result : *response_.mutable_results()) {
        auto it = callbacks_.find(result.id());
        if (it == callbacks_.end()) continue;
        answered.emplace_back(std::move(it->second), &result);
        callbacks_.erase(it);
      }
    }
    for (auto& [callback, result] : answered) {
      const v1::BatchStatus& status = result->status();
      callback(status.code() == 0
                   ? grpc::Status::OK
                   : grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                                  status.message()),
               result);
    }
    response_.Clear();
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    std::map<uint64_t, Callback> callbacks;
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
      callbacks.swap(callbacks_);
    }
    for (auto& [id, callback] : callbacks) {
      callback(status.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                          "session ended")
                           : status,
               nullptr);
    }
    done_.Notify();
  }

 private:
  std::unique_ptr<v1::Idempotency::Stub> stub_;
  grpc::ClientContext context_;
  v1::SessionResponse response_;
  absl::Notification done_;
  absl::Mutex mu_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Callback> callbacks_ ABSL_GUARDED_BY(mu_);
  v1::SessionRequest pending_ ABSL_GUARDED_BY(mu_);
  v1::SessionRequest in_flight_;  // Touched by the one write in flight.
};

// One call in flight, issuing the next when it completes.
class Slot {
 public:
  Slot(Run* run, const std::shared_ptr<grpc::Channel>& channel,
       BenchSession* session, HotKeys* hot, uint32_t seed)
      : run_(run),
        session_(session),
        stub_(v1::Idempotency::NewStub(channel)),
        health_(grpc::health::v1::Health::NewStub(channel)),
        hot_(hot),
        random_(seed),
        body_(run->options().body_bytes, 'x') {
    latencies_.reserve(1 << 16);
  }

  void Start() { Next(); }
  void WaitDone() { done_.WaitForNotification(); }
  const std::vector<int64_t>& latencies() const { return latencies_; }

 private:
  void Next() {
    if (run_->stopping()) {
      done_.Notify();
      return;
    }
    start_ = absl::Now();
    const Options& o = run_->options();
    context_ = std::make_unique<grpc::ClientContext>();
    context_->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    if (o.workload == "ping") {
      health_->async()->Check(context_.get(), &health_request_,
                              &health_response_,
                              [this](const grpc::Status& s) { Done(s.ok()); });
      return;
    }
    if (o.workload == "lookup") {
      lookup_.set_namespace_(o.ns);
      lookup_.set_key(PreparedKey());
      if (session_ != nullptr) {
        op_.Clear();
        *op_.mutable_lookup() = lookup_;
        session_->Send(op_, [this](const grpc::Status& s, v1::SessionResult*) {
          Done(s.ok());
        });
        return;
      }
      stub_->async()->Lookup(context_.get(), &lookup_, &lookup_response_,
                             [this](const grpc::Status& s) { Done(s.ok()); });
      return;
    }
    if (o.workload == "batch") {
      StartBatch();
      return;
    }
    begin_.Clear();
    begin_.set_namespace_(o.ns);
    begin_.set_fingerprint("bench-fingerprint");
    SetRetention(&begin_);
    if (o.workload == "replay") {
      begin_.set_key(PreparedKey());
    } else if (o.workload == "contended") {
      hot_index_ = static_cast<int>(random_() % o.keys);
      begin_.set_key(hot_->Key(hot_index_));
      begin_.mutable_wait()->set_seconds(5);
    } else {
      begin_.set_key(
          absl::StrCat("fresh-", run_->run_id(), "-", run_->NextId()));
    }
    if (session_ != nullptr) {
      op_.Clear();
      *op_.mutable_begin() = begin_;
      session_->Send(op_,
                     [this](const grpc::Status& s, v1::SessionResult* result) {
                       if (result != nullptr && s.ok()) {
                         begin_response_.Swap(result->mutable_begin());
                       }
                       Begun(s);
                     });
      return;
    }
    stub_->async()->Begin(context_.get(), &begin_, &begin_response_,
                          [this](const grpc::Status& s) { Begun(s); });
  }

  void Begun(const grpc::Status& status) {
    if (!status.ok()) run_->NoteError(status);
    const std::string& w = run_->options().workload;
    const bool acquired =
        status.ok() &&
        begin_response_.outcome() == v1::BeginResponse::OUTCOME_ACQUIRED;
    if (!((w == "request" || w == "contended") && acquired)) {
      const bool expected =
          status.ok() &&
          (w != "replay" ||
           begin_response_.outcome() == v1::BeginResponse::OUTCOME_COMPLETED);
      Done(expected);
      return;
    }
    complete_.set_namespace_(begin_.namespace_());
    complete_.set_key(begin_.key());
    complete_.set_token(begin_response_.lease().token());
    complete_.mutable_result()->set_code(201);
    complete_.mutable_result()->set_body(body_);
    if (session_ != nullptr) {
      op_.Clear();
      *op_.mutable_complete() = complete_;
      session_->Send(op_, [this](const grpc::Status& s, v1::SessionResult*) {
        Completed(s);
      });
      return;
    }
    context_ = std::make_unique<grpc::ClientContext>();
    context_->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    stub_->async()->Complete(context_.get(), &complete_, &complete_response_,
                             [this](const grpc::Status& s) { Completed(s); });
  }

  void Completed(const grpc::Status& s) {
    if (!s.ok()) run_->NoteError(s);
    if (s.ok() && run_->options().workload == "contended") {
      hot_->Completed(hot_index_, complete_.key());
    }
    Done(s.ok());
  }

  void SetRetention(v1::BeginRequest* request) {
    const absl::Duration retention = run_->options().retention;
    if (retention <= absl::ZeroDuration()) return;
    request->mutable_retention()->set_seconds(absl::ToInt64Seconds(retention));
  }

  void StartBatch() {
    const Options& o = run_->options();
    begin_batch_.Clear();
    for (int i = 0; i < o.batch_size; ++i) {
      v1::BeginRequest* request = begin_batch_.add_requests();
      request->set_namespace_(o.ns);
      request->set_key(
          absl::StrCat("batch-", run_->run_id(), "-", run_->NextId()));
      request->set_fingerprint("bench-fingerprint");
      SetRetention(request);
    }
    stub_->async()->BeginBatch(
        context_.get(), &begin_batch_, &begin_batch_response_,
        [this](const grpc::Status& s) {
          if (!s.ok()) {
            run_->NoteError(s);
            Done(false);
            return;
          }
          complete_batch_.Clear();
          for (int i = 0; i < begin_batch_response_.entries_size(); ++i) {
            const auto& entry = begin_batch_response_.entries(i);
            if (entry.response().outcome() !=
                v1::BeginResponse::OUTCOME_ACQUIRED) {
              continue;
            }
            v1::CompleteRequest* request = complete_batch_.add_requests();
            request->set_namespace_(begin_batch_.requests(i).namespace_());
            request->set_key(begin_batch_.requests(i).key());
            request->set_token(entry.response().lease().token());
            request->mutable_result()->set_code(201);
            request->mutable_result()->set_body(body_);
          }
          if (complete_batch_.requests_size() != begin_batch_.requests_size()) {
            Done(false);
            return;
          }
          context_ = std::make_unique<grpc::ClientContext>();
          context_->set_deadline(
              absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
          stub_->async()->CompleteBatch(
              context_.get(), &complete_batch_, &complete_batch_response_,
              [this](const grpc::Status& s) {
                if (!s.ok()) run_->NoteError(s);
                bool all_ok = s.ok();
                for (const auto& e : complete_batch_response_.entries()) {
                  all_ok = all_ok && e.status().code() == 0;
                }
                Done(all_ok);
              });
        });
  }

  void Done(bool ok) {
    run_->Record(start_, ok, latencies_);
    Next();
  }

  std::string PreparedKey() {
    return absl::StrCat("prepared-", random_() % run_->options().keys);
  }

  Run* const run_;
  BenchSession* const session_;  // Null: unary calls.
  v1::SessionOp op_;
  std::unique_ptr<v1::Idempotency::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  HotKeys* const hot_;
  std::minstd_rand random_;
  const std::string body_;
  absl::Time start_;
  int hot_index_ = 0;
  std::unique_ptr<grpc::ClientContext> context_;
  grpc::health::v1::HealthCheckRequest health_request_;
  grpc::health::v1::HealthCheckResponse health_response_;
  v1::LookupRequest lookup_;
  v1::LookupResponse lookup_response_;
  v1::BeginRequest begin_;
  v1::BeginResponse begin_response_;
  v1::CompleteRequest complete_;
  v1::CompleteResponse complete_response_;
  v1::BeginBatchRequest begin_batch_;
  v1::BeginBatchResponse begin_batch_response_;
  v1::CompleteBatchRequest complete_batch_;
  v1::CompleteBatchResponse complete_batch_response_;
  std::vector<int64_t> latencies_;
  absl::Notification done_;
};

// Completes --keys keys so that replay and lookup read existing records.
bool Prepare(const Options& o, const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::Idempotency::NewStub(channel);
  for (int i = 0; i < o.keys; ++i) {
    grpc::ClientContext begin_context;
    v1::BeginRequest begin;
    begin.set_namespace_(o.ns);
    begin.set_key(absl::StrCat("prepared-", i));
    begin.set_fingerprint("bench-fingerprint");
    v1::BeginResponse begun;
    if (!stub->Begin(&begin_context, begin, &begun).ok()) return false;
    if (begun.outcome() != v1::BeginResponse::OUTCOME_ACQUIRED) continue;
    grpc::ClientContext complete_context;
    v1::CompleteRequest complete;
    complete.set_namespace_(o.ns);
    complete.set_key(begin.key());
    complete.set_token(begun.lease().token());
    complete.mutable_result()->set_code(200);
    complete.mutable_result()->set_body(std::string(o.body_bytes, 'x'));
    v1::CompleteResponse completed;
    if (!stub->Complete(&complete_context, complete, &completed).ok()) {
      return false;
    }
  }
  return true;
}

// The transports whose --concurrency threads each make one call at a time
// (client, client-unary, http-*): the threads, their latencies and the
// measured window. Subclasses say what one thread does.
class CallerThreads {
 public:
  virtual ~CallerThreads() = default;

  // Starts the threads, waits out --warmup and --duration, stops `run` and
  // returns every latency measured.
  std::vector<int64_t> Measure(Run* run) {
    const Options& o = run->options();
    std::vector<std::vector<int64_t>> latencies(
        static_cast<size_t>(o.concurrency));
    std::vector<std::thread> threads;
    for (int i = 0; i < o.concurrency; ++i) {
      threads.emplace_back([this, i, &latencies] {
        std::vector<int64_t>& mine = latencies[static_cast<size_t>(i)];
        mine.reserve(1 << 16);
        Loop(i, mine);
      });
    }
    absl::SleepFor(o.warmup);
    run->StartMeasuring();
    absl::SleepFor(o.duration);
    run->StopMeasuring();
    run->Stop();
    for (std::thread& thread : threads) thread.join();
    std::vector<int64_t> all;
    for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
    return all;
  }

 protected:
  // One thread's calls until the run stops, each recorded in `latencies`.
  virtual void Loop(int index, std::vector<int64_t>& latencies) = 0;
};

// --transport=client: threads calling through the C++ client library, each
// one call at a time, as a service's request threads do.
class ClientThreads final : public CallerThreads {
 public:
  ClientThreads(Run* run, client::Client* client)
      : run_(run), client_(client) {}

 private:
  void Loop(int index, std::vector<int64_t>& latencies) override {
    const Options& o = run_->options();
    std::minstd_rand random(static_cast<uint32_t>(index + 1));
    const std::string body(static_cast<size_t>(o.body_bytes), 'x');
    client::BeginOptions begin;
    begin.fingerprint = "bench-fingerprint";
    begin.retention = o.retention;
    while (!run_->stopping()) {
      const absl::Time start = absl::Now();
      bool ok = false;
      if (o.workload == "lookup") {
        ok = client_->Lookup(o.ns, absl::StrCat("prepared-", random() % o.keys))
                 .ok();
      } else {
        const std::string key =
            o.workload == "replay"
                ? absl::StrCat("prepared-", random() % o.keys)
                : absl::StrCat("fresh-", run_->run_id(), "-", run_->NextId());
        begin.owner.clear();
        absl::StatusOr<client::BeginReply> begun =
            client_->Begin(o.ns, key, begin);
        ok = begun.ok();
        if (ok && o.workload == "request") {
          ok = begun->outcome == client::Outcome::kAcquired &&
               client_
                   ->Complete(o.ns, key, begun->token,
                              client::Result{201, body, {}})
                   .ok();
        } else if (ok && o.workload == "replay") {
          ok = begun->outcome == client::Outcome::kCompleted;
        }
        if (!begun.ok()) {
          run_->NoteError(
              grpc::Status(static_cast<grpc::StatusCode>(begun.status().code()),
                           std::string(begun.status().message())));
        }
      }
      run_->Record(start, ok, latencies);
    }
  }

  Run* const run_;
  client::Client* const client_;
};

// --transport=http-json / http-proto: threads calling the Connect protocol,
// each over its own keep-alive HTTP/1.1 connection, one call at a time.
class HttpThreads final : public CallerThreads {
 public:
  explicit HttpThreads(Run* run) : run_(run) {}

 private:
  // One connection; Call() reconnects after a failure.
  class Connection {
   public:
    explicit Connection(const std::string& target) : host_(target) {
      const size_t colon = target.rfind(':');
      address_.sin_family = AF_INET;
      int port = 0;
      if (colon == std::string::npos ||
          !absl::SimpleAtoi(target.substr(colon + 1), &port) ||
          inet_pton(AF_INET, target.substr(0, colon).c_str(),
                    &address_.sin_addr) != 1) {
        return;
      }
      address_.sin_port = htons(static_cast<uint16_t>(port));
    }
    ~Connection() { Close(); }

    // POSTs `body` to `path`; the response body on HTTP 200.
    std::optional<std::string> Call(const std::string& path,
                                    const std::string& content_type,
                                    const std::string& body) {
      if (fd_ < 0 && !Open()) return std::nullopt;
      const std::string request =
          absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: ", host_,
                       "\r\nContent-Type: ", content_type,
                       "\r\nContent-Length: ", body.size(), "\r\n\r\n", body);
      if (send(fd_, request.data(), request.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(request.size())) {
        Close();
        return std::nullopt;
      }
      size_t head_end = std::string::npos;
      while ((head_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
        if (!Fill()) return std::nullopt;
      }
      const size_t at = buffer_.find("Content-Length: ");
      size_t length = 0;
      if (at == std::string::npos || at > head_end ||
          !absl::SimpleAtoi(
              buffer_.substr(at + 16, buffer_.find("\r\n", at) - at - 16),
              &length)) {
        Close();
        return std::nullopt;
      }
      while (buffer_.size() < head_end + 4 + length) {
        if (!Fill()) return std::nullopt;
      }
      const bool ok = absl::StartsWith(buffer_, "HTTP/1.1 200 ");
      std::string response = buffer_.substr(head_end + 4, length);
      buffer_.erase(0, head_end + 4 + length);
      if (!ok) return std::nullopt;
      return response;
    }

   private:
    bool Open() {
      fd_ = socket(AF_INET, SOCK_STREAM, 0);
      const int yes = 1;
      setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
      if (connect(fd_, reinterpret_cast<sockaddr*>(&address_),
                  sizeof(address_)) != 0) {
        Close();
        return false;
      }
      buffer_.clear();
      return true;
    }
    bool Fill() {
      char chunk[16384];
      const ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) {
        Close();
        return false;
      }
      buffer_.append(chunk, static_cast<size_t>(n));
      return true;
    }
    void Close() {
      if (fd_ >= 0) close(fd_);
      fd_ = -1;
    }

    const std::string host_;  // The Host header: the target itself.
    sockaddr_in address_{};
    int fd_ = -1;
    std::string buffer_;
  };

  // `message` in the transport's encoding.
  std::string Encode(const google::protobuf::Message& message) const {
    std::string body;
    if (json_) {
      (void)google::protobuf::util::MessageToJsonString(message, &body);
    } else {
      message.SerializeToString(&body);
    }
    return body;
  }
  bool Decode(const std::optional<std::string>& body,
              google::protobuf::Message* message) const {
    if (!body.has_value()) return false;
    return json_ ? google::protobuf::util::JsonStringToMessage(*body, message)
                       .ok()
                 : message->ParseFromString(*body);
  }

  void Loop(int index, std::vector<int64_t>& latencies) override {
    const Options& o = run_->options();
    Connection connection(o.http_target);
    const std::string type = json_ ? "application/json" : "application/proto";
    std::minstd_rand random(static_cast<uint32_t>(index + 1));
    const std::string body(static_cast<size_t>(o.body_bytes), 'x');
    while (!run_->stopping()) {
      const absl::Time start = absl::Now();
      bool ok = false;
      if (o.workload == "lookup") {
        v1::LookupRequest lookup;
        lookup.set_namespace_(o.ns);
        lookup.set_key(absl::StrCat("prepared-", random() % o.keys));
        v1::LookupResponse seen;
        ok = Decode(connection.Call("/idem.v1.Idempotency/Lookup", type,
                                    Encode(lookup)),
                    &seen);
      } else {
        v1::BeginRequest begin;
        begin.set_namespace_(o.ns);
        begin.set_key(
            o.workload == "replay"
                ? absl::StrCat("prepared-", random() % o.keys)
                : absl::StrCat("fresh-", run_->run_id(), "-", run_->NextId()));
        begin.set_fingerprint("bench-fingerprint");
        v1::BeginResponse begun;
        ok = Decode(
            connection.Call("/idem.v1.Idempotency/Begin", type, Encode(begin)),
            &begun);
        if (ok && o.workload == "request") {
          v1::CompleteRequest complete;
          complete.set_namespace_(o.ns);
          complete.set_key(begin.key());
          complete.set_token(begun.lease().token());
          complete.mutable_result()->set_code(201);
          complete.mutable_result()->set_body(body);
          v1::CompleteResponse completed;
          ok = begun.outcome() == v1::BeginResponse::OUTCOME_ACQUIRED &&
               Decode(connection.Call("/idem.v1.Idempotency/Complete", type,
                                      Encode(complete)),
                      &completed);
        } else if (ok && o.workload == "replay") {
          ok = begun.outcome() == v1::BeginResponse::OUTCOME_COMPLETED;
        }
      }
      if (!ok) {
        run_->NoteError(grpc::Status(grpc::StatusCode::UNKNOWN,
                                     "an HTTP call failed or was refused"));
      }
      run_->Record(start, ok, latencies);
    }
  }

  Run* const run_;
  const bool json_ = run_->options().transport == "http-json";
};

double Percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t index =
      std::min(sorted.size() - 1,
               static_cast<size_t>(q * static_cast<double>(sorted.size())));
  return static_cast<double>(sorted[index]) / 1e6;  // ms
}

int Main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, o)) return 2;

  // Several targets (replicas sharing a store): channels go round-robin.
  const std::vector<std::string> targets =
      absl::StrSplit(o.target, ',', absl::SkipEmpty());
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < o.channels; ++i) {
    grpc::ChannelArguments args;
    // A distinct argument per channel gives each its own connection.
    args.SetInt("idem.bench.channel", i);
    channels.push_back(grpc::CreateCustomChannel(
        targets[static_cast<size_t>(i) % targets.size()],
        grpc::InsecureChannelCredentials(), args));
  }
  for (const auto& channel : channels) {
    if (!channel->WaitForConnected(
            absl::ToChronoTime(absl::Now() + absl::Seconds(10)))) {
      std::cerr << "idem-bench: cannot connect to " << o.target << "\n";
      return 1;
    }
  }
  if ((o.workload == "replay" || o.workload == "lookup") &&
      !Prepare(o, channels[0])) {
    std::cerr << "idem-bench: preparing keys failed\n";
    return 1;
  }

  Run run(o);
  HotKeys hot(o.keys);
  std::vector<int64_t> all;
  if (absl::StartsWith(o.transport, "http-")) {
    all = HttpThreads(&run).Measure(&run);
  } else if (o.transport == "client" || o.transport == "client-unary") {
    // One Client, on its own channel, as a service would have it.
    client::ClientOptions client_options;
    client_options.target = targets[0];
    client_options.session = o.transport == "client";
    absl::StatusOr<std::unique_ptr<client::Client>> client =
        client::Client::Connect(client_options);
    if (!client.ok()) {
      std::cerr << "idem-bench: " << client.status() << "\n";
      return 1;
    }
    all = ClientThreads(&run, client->get()).Measure(&run);
  } else {
    std::vector<std::unique_ptr<BenchSession>> sessions;
    if (o.transport == "session") {
      for (const auto& channel : channels) {
        sessions.push_back(std::make_unique<BenchSession>(channel));
      }
    }
    std::vector<std::unique_ptr<Slot>> slots;
    for (int i = 0; i < o.concurrency; ++i) {
      const size_t c = static_cast<size_t>(i) % channels.size();
      slots.push_back(std::make_unique<Slot>(
          &run, channels[c], sessions.empty() ? nullptr : sessions[c].get(),
          &hot, static_cast<uint32_t>(i + 1)));
    }
    for (auto& slot : slots) slot->Start();
    absl::SleepFor(o.warmup);
    run.StartMeasuring();
    absl::SleepFor(o.duration);
    run.StopMeasuring();
    run.Stop();
    for (auto& slot : slots) slot->WaitDone();
    for (auto& session : sessions) session->Close();
    for (const auto& slot : slots) {
      all.insert(all.end(), slot->latencies().begin(), slot->latencies().end());
    }
  }
  const absl::Duration measured = run.measured();
  std::sort(all.begin(), all.end());
  // A batch op stands for batch-size keys: report keys per second.
  const double per_op = o.workload == "batch" ? o.batch_size : 1;
  const double ops = per_op * static_cast<double>(all.size()) /
                     absl::ToDoubleSeconds(measured);
  const double p50 = Percentile(all, 0.50), p99 = Percentile(all, 0.99),
               p999 = Percentile(all, 0.999),
               max = all.empty() ? 0 : static_cast<double>(all.back()) / 1e6;
  // Costs per op (per key for batches) over the measured window.
  const double counted = std::max(1.0, ops * absl::ToDoubleSeconds(measured));
  const Usage& usage = run.usage();
  if (o.json) {
    std::cout << absl::StrFormat(
        "{\"workload\":\"%s\",\"transport\":\"%s\",\"concurrency\":%d,"
        "\"channels\":%d,"
        "\"duration_s\":%.3f,\"ops\":%d,\"ops_per_s\":%.1f,\"errors\":%d,"
        "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,"
        "\"client_cpu_us_per_op\":%.2f,\"client_switches_per_op\":%.3f,"
        "\"server_cpu_us_per_op\":%.2f,\"server_switches_per_op\":%.3f}\n",
        o.workload, o.transport, o.concurrency, o.channels,
        absl::ToDoubleSeconds(measured), all.size(), ops, run.errors(), p50,
        p99, p999, max, usage.client_cpu_us / counted,
        usage.client_switches / counted, usage.server_cpu_us / counted,
        usage.server_switches / counted);
  } else {
    std::cout << absl::StrFormat(
        "%-10s %-12s %6d in flight %3d ch  %10.0f ops/s  p50 %7.3f ms  p99 "
        "%7.3f ms  "
        "p999 %7.3f ms  max %8.3f ms  errors %d\n",
        o.workload, o.transport, o.concurrency, o.channels, ops, p50, p99, p999,
        max, run.errors());
    std::cout << absl::StrFormat("  per op: client %.1f us CPU, %.2f switches",
                                 usage.client_cpu_us / counted,
                                 usage.client_switches / counted);
    if (o.server_pid != 0) {
      std::cout << absl::StrFormat("; server %.1f us CPU, %.2f switches",
                                   usage.server_cpu_us / counted,
                                   usage.server_switches / counted);
    }
    std::cout << "\n";
  }
  if (run.errors() > 0) {
    std::cerr << "idem-bench: first error: " << run.first_error() << "\n";
  }
  return run.errors() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace idem::bench

int main(int argc, char** argv) { return idem::bench::Main(argc, argv); }
