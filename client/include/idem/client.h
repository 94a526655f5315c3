// The C++ client of the Idem idempotency service.
//
// The whole protocol in one call:
//
//   auto client = idem::client::Client::Connect({.target = "idem:50051"});
//   absl::StatusOr<idem::client::RunResult> charged = (*client)->Run(
//       "payments/POST /v1/charges", idempotency_key, request_body,
//       [&](idem::client::RunContext& run) -> absl::StatusOr<Result> {
//         return ChargeCard(...);  // runs once per key, whoever retries
//       });
//   if (charged.ok()) Send(charged->result);  // replayed or fresh
//
// The typed calls (Begin, Complete, Release, Extend, Checkpoint, Lookup) map
// one to one to the RPCs for callers that drive the protocol themselves.
//
// Every call has a per-attempt deadline and retries transient failures
// (UNAVAILABLE, DEADLINE_EXCEEDED of one attempt) with exponential backoff
// and "equal" jitter, within a bounded number of attempts and a total
// deadline.
// Other errors are never retried. Retrying is safe for every call: Begin
// retries carry the same `owner`, so a lost reply gets the same lease back;
// Complete, Release, Extend and Checkpoint are idempotent for the same token.
//
// Errors: normal outcomes (ACQUIRED, COMPLETED, IN_PROGRESS, MISMATCH) are
// values of Begin. Run turns them into results or distinct errors, told apart
// by ErrorKindOf(): kMismatch (FAILED_PRECONDITION), kInProgress
// (UNAVAILABLE: another attempt still runs; try again later) and kLeaseLost
// (ABORTED: another attempt took the key over; retry the whole request to get
// the authoritative result).
//
// Thread safety: a Client is safe for concurrent use and shares one channel.
#ifndef IDEM_CLIENT_INCLUDE_IDEM_CLIENT_H_
#define IDEM_CLIENT_INCLUDE_IDEM_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace idem::client {

// An application response, stored by Complete and replayed to retries.
struct Result {
  int32_t code = 0;
  std::string body;
  std::map<std::string, std::string> metadata;
  // Set by the server when the result was stored; ignored when sent.
  absl::Time completed_at = absl::InfinitePast();
};

// True when the code, body and metadata are the same (completed_at aside).
bool SameResponse(const Result& a, const Result& b);

enum class Outcome { kAcquired, kCompleted, kInProgress, kMismatch };
// "ACQUIRED", "COMPLETED", "IN_PROGRESS", "MISMATCH".
absl::string_view OutcomeName(Outcome outcome);

struct BeginOptions {
  // Raw fingerprint bytes (at most 64), e.g. Fingerprint(request).
  std::string fingerprint;
  // Zero means the server's default (30 s lease, 24 h retention, no wait).
  absl::Duration lease = absl::ZeroDuration();
  absl::Duration retention = absl::ZeroDuration();
  absl::Duration wait = absl::ZeroDuration();
  // Empty: the client picks a random owner, reused by its retries.
  std::string owner;
};

struct BeginReply {
  Outcome outcome = Outcome::kMismatch;
  // kAcquired: the fencing token and lease; kInProgress: the holder's lease
  // expiry (token 0).
  uint64_t token = 0;
  absl::Time lease_expires_at = absl::InfinitePast();
  // kCompleted: the stored result and until when it is kept.
  Result result;
  absl::Time expires_at = absl::InfinitePast();
  uint32_t attempt = 0;
  // kAcquired: the previous holder's last checkpoint, empty if none.
  std::string checkpoint;
  // The owner this Begin used.
  std::string owner;
};

struct Completion {
  absl::Time completed_at;
  absl::Time expires_at;
};

enum class KeyState { kAbsent, kInProgress, kCompleted };
// "ABSENT", "IN_PROGRESS", "COMPLETED".
absl::string_view KeyStateName(KeyState state);

struct KeyInfo {
  KeyState state = KeyState::kAbsent;
  absl::Time lease_expires_at = absl::InfinitePast();
  Result result;
  std::string fingerprint;
  absl::Time created_at = absl::InfinitePast();
  absl::Time expires_at = absl::InfinitePast();
  uint32_t attempt = 0;
  std::string checkpoint;
};

// The defaults ride out a server restart of several seconds: the pauses
// (between half and all of 100 ms, 200 ms, ... capped at 2 s) add up to
// 7.5 s at least and about 15 s at most, within the 20 s bound.
struct RetryPolicy {
  // Attempts per call, the first included. 1 turns retries off.
  int max_attempts = 12;
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  // Bound on one call with all its retries and backoff (plus any Begin wait).
  absl::Duration total_timeout = absl::Seconds(20);
};

struct ClientOptions {
  // gRPC target, e.g. "127.0.0.1:50051" or "dns:///idem.internal:50051".
  std::string target = "127.0.0.1:50051";
  // Null means plaintext (grpc::InsecureChannelCredentials()).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Extra channel settings. The client sets short reconnect backoffs (100 ms
  // to 2 s) unless these override them.
  grpc::ChannelArguments channel_arguments;
  // Deadline of one attempt (a Begin's `wait` is added to it).
  absl::Duration rpc_timeout = absl::Seconds(5);
  RetryPolicy retry;
  // Send calls over one Session stream shared by every thread using this
  // Client (calls made at the same time share messages), falling back to
  // unary RPCs against a server without Session. false: one unary RPC per
  // call. A call whose stream breaks fails over to a new stream like a lost
  // unary reply is retried (docs/api.md#sessions).
  bool session = true;
};

// How Run failed, beyond the status code.
enum class ErrorKind { kOther, kMismatch, kInProgress, kLeaseLost };
ErrorKind ErrorKindOf(const absl::Status& status);

class Client;

// What the work function of Run sees.
class RunContext {
 public:
  // The fencing token of this attempt: hand it to downstream systems that can
  // reject writes from a stale holder.
  uint64_t token() const { return token_; }
  // How many times the key has been acquired, this attempt included.
  uint32_t attempt() const { return attempt_; }
  // True when an earlier holder left steps done (see Step).
  bool resumed() const { return !steps_.empty(); }
  // True once the heartbeat found that another attempt took the key over:
  // stop; whatever this attempt returns will not be stored.
  bool lease_lost() const { return lease_lost_.load(); }

  // Runs `step` unless the checkpoint says an earlier holder of this request
  // already ran it, in which case its recorded output is returned. After a
  // step runs, its name and output are recorded with Checkpoint before Step
  // returns, so a worker that dies later does not redo it. Names must be
  // unique within the work. A failed step is not recorded.
  absl::StatusOr<std::string> Step(
      absl::string_view name,
      absl::FunctionRef<absl::StatusOr<std::string>()> step);
  // How many steps ran in this attempt, and how many were skipped.
  int steps_run() const { return steps_run_; }
  int steps_skipped() const { return steps_skipped_; }

 private:
  friend class Client;
  RunContext(Client* client, std::string name_space, std::string key,
             uint64_t token, uint32_t attempt, absl::string_view checkpoint);

  Client* const client_;
  const std::string name_space_;
  const std::string key_;
  const uint64_t token_;
  const uint32_t attempt_;
  std::vector<std::pair<std::string, std::string>> steps_;
  int steps_run_ = 0;
  int steps_skipped_ = 0;
  std::atomic<bool> lease_lost_{false};
};

struct RunOptions {
  absl::Duration lease = absl::Seconds(30);
  // Zero: the server's default retention.
  absl::Duration retention = absl::ZeroDuration();
  // How long a duplicate waits for an attempt in progress to finish, so that
  // concurrent duplicates get the first one's result instead of an error.
  absl::Duration wait = absl::Seconds(30);
  // How often the lease is extended while the work runs. Zero: lease / 3.
  // absl::InfiniteDuration(): never (the lease then lapses after `lease`).
  absl::Duration heartbeat = absl::ZeroDuration();
  // Results for which the key is released instead of stored, so that a
  // retry runs the work again (e.g. 503s). Default: every result is stored,
  // failures included, as Stripe does.
  std::function<bool(const Result&)> release_if;
  // Empty: a random owner for this call.
  std::string owner;
};

struct RunResult {
  Result result;
  // True when the result is an earlier attempt's, replayed.
  bool replayed = false;
  // False when release_if chose to release instead of storing.
  bool stored = true;
  uint32_t attempt = 0;
};

class Client {
 public:
  // The work of Run: returns the result to store, or an error to release the
  // key (the error is returned to Run's caller). An exception releases the
  // key and propagates.
  using Work = absl::FunctionRef<absl::StatusOr<Result>(RunContext&)>;

  // Creates the channel; does not wait for the server.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options);
  // Uses an existing channel (e.g. shared with other stubs).
  Client(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  absl::StatusOr<BeginReply> Begin(absl::string_view name_space,
                                   absl::string_view key,
                                   const BeginOptions& options);
  absl::StatusOr<Completion> Complete(
      absl::string_view name_space, absl::string_view key, uint64_t token,
      const Result& result,
      std::optional<absl::Duration> retention = std::nullopt);
  absl::Status Release(absl::string_view name_space, absl::string_view key,
                       uint64_t token);
  // Returns the new lease expiry.
  absl::StatusOr<absl::Time> Extend(absl::string_view name_space,
                                    absl::string_view key, uint64_t token,
                                    absl::Duration lease);
  absl::Status Checkpoint(absl::string_view name_space, absl::string_view key,
                          uint64_t token, absl::string_view checkpoint);
  absl::StatusOr<KeyInfo> Lookup(absl::string_view name_space,
                                 absl::string_view key);
  // The standard gRPC health check: OK when the server is serving.
  absl::Status Ping();

  // Begin (waiting for duplicates) → work with a heartbeat → Complete, or
  // Release when the work fails. `request` is fingerprinted with
  // Fingerprint().
  absl::StatusOr<RunResult> Run(absl::string_view name_space,
                                absl::string_view key,
                                absl::string_view request, Work work,
                                const RunOptions& options = {});

 private:
  friend class RunContext;
  class Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The backoff before retry number `retry` (1 for the first retry): a uniform
// random duration in [b/2, b] for b = min(max, initial * 2^(retry-1)).
// `unit_random` is in [0, 1). Exposed for tests.
absl::Duration Backoff(const RetryPolicy& policy, int retry,
                       double unit_random);

}  // namespace idem::client

#endif  // IDEM_CLIENT_INCLUDE_IDEM_CLIENT_H_
