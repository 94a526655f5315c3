#include "idem/client.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/internal/rpc.h"
#include "client/internal/session.h"
#include "grpc/grpc.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "idem/keys.h"
#include "idem/v1/idempotency.grpc.pb.h"

namespace idem::client {
namespace {

using internal::FromGrpc;
using internal::FromProto;
using internal::ToProto;

constexpr char kErrorKindUrl[] = "type.idem.dev/idem.client.ErrorKind";

absl::Status WithKind(absl::Status status, absl::string_view kind) {
  status.SetPayload(kErrorKindUrl, absl::Cord(kind));
  return status;
}

Result FromProto(const v1::Result& r) {
  Result result;
  result.code = r.code();
  result.body = r.body();
  result.metadata.insert(r.metadata().begin(), r.metadata().end());
  if (r.has_completed_at()) result.completed_at = FromProto(r.completed_at());
  return result;
}

void ToProto(const Result& r, v1::Result* out) {
  out->set_code(r.code);
  out->set_body(r.body);
  out->mutable_metadata()->insert(r.metadata.begin(), r.metadata.end());
}

Outcome FromProto(v1::BeginResponse::Outcome outcome) {
  switch (outcome) {
    case v1::BeginResponse::OUTCOME_ACQUIRED:
      return Outcome::kAcquired;
    case v1::BeginResponse::OUTCOME_COMPLETED:
      return Outcome::kCompleted;
    case v1::BeginResponse::OUTCOME_IN_PROGRESS:
      return Outcome::kInProgress;
    default:
      return Outcome::kMismatch;
  }
}

}  // namespace

bool SameResponse(const Result& a, const Result& b) {
  return a.code == b.code && a.body == b.body && a.metadata == b.metadata;
}

absl::string_view OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kAcquired:
      return "ACQUIRED";
    case Outcome::kCompleted:
      return "COMPLETED";
    case Outcome::kInProgress:
      return "IN_PROGRESS";
    case Outcome::kMismatch:
      return "MISMATCH";
  }
  return "UNKNOWN";
}

absl::string_view KeyStateName(KeyState state) {
  switch (state) {
    case KeyState::kAbsent:
      return "ABSENT";
    case KeyState::kInProgress:
      return "IN_PROGRESS";
    case KeyState::kCompleted:
      return "COMPLETED";
  }
  return "UNKNOWN";
}

ErrorKind ErrorKindOf(const absl::Status& status) {
  absl::optional<absl::Cord> kind = status.GetPayload(kErrorKindUrl);
  if (!kind.has_value()) return ErrorKind::kOther;
  if (*kind == "mismatch") return ErrorKind::kMismatch;
  if (*kind == "in_progress") return ErrorKind::kInProgress;
  if (*kind == "lease_lost") return ErrorKind::kLeaseLost;
  return ErrorKind::kOther;
}

absl::Duration Backoff(const RetryPolicy& policy, int retry,
                       double unit_random) {
  const double factor = std::ldexp(1.0, std::clamp(retry - 1, 0, 30));
  const absl::Duration cap =
      std::min(policy.max_backoff, policy.initial_backoff * factor);
  // Half fixed, half random: retries still spread out, and the pauses
  // add up to a known minimum (a restart of seconds is always ridden out).
  return cap * (0.5 + 0.5 * std::clamp(unit_random, 0.0, 1.0));
}

class Client::Impl {
 public:
  Impl(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options,
       bool replaceable)
      : channels_(std::move(channel), options, replaceable),
        retrier_(options, &channels_),
        session_(options.session
                     ? std::make_unique<internal::SessionMux>(&channels_)
                     : nullptr) {}

  // One attempt of `op`: over the session stream when there is one, else
  // (and against a server without Session) as its unary RPC, `unary`,
  // which answers into `result` too.
  template <typename Unary>
  grpc::Status Attempt(grpc::ClientContext& context, v1::SessionOp* op,
                       v1::SessionResult* result, Unary unary) {
    if (session_ != nullptr && session_->supported()) {
      grpc::Status status =
          session_->Call(op, absl::FromChrono(context.deadline()), result);
      if (status.error_code() != grpc::StatusCode::UNIMPLEMENTED ||
          session_->supported()) {
        return status;
      }
    }
    return unary(*stub());
  }

  // Stubs are cheap: one per call, on the current channel.
  std::unique_ptr<v1::Idempotency::Stub> stub() const {
    return v1::Idempotency::NewStub(channels_.Get());
  }
  std::unique_ptr<grpc::health::v1::Health::Stub> health() const {
    return grpc::health::v1::Health::NewStub(channels_.Get());
  }

  internal::ChannelHolder channels_;
  internal::Retrier retrier_;
  // Declared last: destroyed first, while the channels it uses exist.
  std::unique_ptr<internal::SessionMux> session_;
};

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      internal::MakeChannel(options);
  if (!channel.ok()) return channel.status();
  // The client made this channel, so it may replace it after failures.
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(
      *std::move(channel), options, /*replaceable=*/true)));
}

Client::Client(std::shared_ptr<grpc::Channel> channel,
               const ClientOptions& options)
    : impl_(std::make_unique<Impl>(std::move(channel), options,
                                   /*replaceable=*/false)) {}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() = default;

absl::StatusOr<BeginReply> Client::Begin(absl::string_view name_space,
                                         absl::string_view key,
                                         const BeginOptions& options) {
  v1::SessionOp op;
  v1::BeginRequest& request = *op.mutable_begin();
  request.set_namespace_(std::string(name_space));
  request.set_key(std::string(key));
  request.set_fingerprint(options.fingerprint);
  if (options.lease > absl::ZeroDuration()) {
    ToProto(options.lease, request.mutable_lease());
  }
  if (options.retention > absl::ZeroDuration()) {
    ToProto(options.retention, request.mutable_retention());
  }
  if (options.wait > absl::ZeroDuration()) {
    ToProto(options.wait, request.mutable_wait());
  }
  // Every retry of this Begin carries the same owner: if a reply granting the
  // lease is lost, the retry gets the same lease back.
  request.set_owner(options.owner.empty() ? NewKey() : options.owner);

  v1::SessionResult answer;
  absl::Status status = impl_->retrier_.Run(
      std::max(options.wait, absl::ZeroDuration()),
      [&](grpc::ClientContext& context) {
        return impl_->Attempt(context, &op, &answer, [&](auto& stub) {
          return stub.Begin(&context, request, answer.mutable_begin());
        });
      });
  if (!status.ok()) return status;
  const v1::BeginResponse& response = answer.begin();
  BeginReply reply;
  reply.outcome = FromProto(response.outcome());
  reply.token = response.lease().token();
  if (response.lease().has_expires_at()) {
    reply.lease_expires_at = FromProto(response.lease().expires_at());
  }
  if (response.has_result()) reply.result = FromProto(response.result());
  if (response.has_expires_at()) {
    reply.expires_at = FromProto(response.expires_at());
  }
  reply.attempt = response.attempt();
  reply.checkpoint = response.checkpoint();
  reply.owner = request.owner();
  return reply;
}

absl::StatusOr<Completion> Client::Complete(
    absl::string_view name_space, absl::string_view key, uint64_t token,
    const Result& result, std::optional<absl::Duration> retention) {
  v1::SessionOp op;
  v1::CompleteRequest& request = *op.mutable_complete();
  request.set_namespace_(std::string(name_space));
  request.set_key(std::string(key));
  request.set_token(token);
  ToProto(result, request.mutable_result());
  if (retention.has_value()) ToProto(*retention, request.mutable_retention());
  v1::SessionResult answer;
  absl::Status status = impl_->retrier_.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->Attempt(context, &op, &answer, [&](auto& stub) {
          return stub.Complete(&context, request, answer.mutable_complete());
        });
      });
  if (!status.ok()) return status;
  const v1::CompleteResponse& response = answer.complete();
  return Completion{FromProto(response.completed_at()),
                    FromProto(response.expires_at())};
}

absl::Status Client::Release(absl::string_view name_space,
                             absl::string_view key, uint64_t token) {
  v1::SessionOp op;
  v1::ReleaseRequest& request = *op.mutable_release();
  request.set_namespace_(std::string(name_space));
  request.set_key(std::string(key));
  request.set_token(token);
  v1::SessionResult answer;
  return impl_->retrier_.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->Attempt(context, &op, &answer, [&](auto& stub) {
          return stub.Release(&context, request, answer.mutable_release());
        });
      });
}

absl::StatusOr<absl::Time> Client::Extend(absl::string_view name_space,
                                          absl::string_view key, uint64_t token,
                                          absl::Duration lease) {
  v1::SessionOp op;
  v1::ExtendRequest& request = *op.mutable_extend();
  request.set_namespace_(std::string(name_space));
  request.set_key(std::string(key));
  request.set_token(token);
  if (lease > absl::ZeroDuration()) ToProto(lease, request.mutable_lease());
  v1::SessionResult answer;
  absl::Status status = impl_->retrier_.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->Attempt(context, &op, &answer, [&](auto& stub) {
          return stub.Extend(&context, request, answer.mutable_extend());
        });
      });
  if (!status.ok()) return status;
  return FromProto(answer.extend().expires_at());
}

absl::Status Client::Checkpoint(absl::string_view name_space,
                                absl::string_view key, uint64_t token,
                                absl::string_view checkpoint) {
  v1::SessionOp op;
  v1::CheckpointRequest& request = *op.mutable_checkpoint();
  request.set_namespace_(std::string(name_space));
  request.set_key(std::string(key));
  request.set_token(token);
  request.set_checkpoint(std::string(checkpoint));
  v1::SessionResult answer;
  return impl_->retrier_.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->Attempt(context, &op, &answer, [&](auto& stub) {
          return stub.Checkpoint(&context, request,
                                 answer.mutable_checkpoint());
        });
      });
}

absl::StatusOr<KeyInfo> Client::Lookup(absl::string_view name_space,
                                       absl::string_view key) {
  v1::SessionOp op;
  v1::LookupRequest& request = *op.mutable_lookup();
  request.set_namespace_(std::string(name_space));
  request.set_key(std::string(key));
  v1::SessionResult answer;
  absl::Status status = impl_->retrier_.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->Attempt(context, &op, &answer, [&](auto& stub) {
          return stub.Lookup(&context, request, answer.mutable_lookup());
        });
      });
  if (!status.ok()) return status;
  const v1::LookupResponse& response = answer.lookup();
  KeyInfo info;
  switch (response.state()) {
    case v1::LookupResponse::STATE_IN_PROGRESS:
      info.state = KeyState::kInProgress;
      break;
    case v1::LookupResponse::STATE_COMPLETED:
      info.state = KeyState::kCompleted;
      break;
    default:
      info.state = KeyState::kAbsent;
      break;
  }
  if (response.lease().has_expires_at()) {
    info.lease_expires_at = FromProto(response.lease().expires_at());
  }
  if (response.has_result()) info.result = FromProto(response.result());
  info.fingerprint = response.fingerprint();
  if (response.has_created_at()) {
    info.created_at = FromProto(response.created_at());
  }
  if (response.has_expires_at()) {
    info.expires_at = FromProto(response.expires_at());
  }
  info.attempt = response.attempt();
  info.checkpoint = response.checkpoint();
  return info;
}

absl::Status Client::Ping() {
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  absl::Status status = impl_->retrier_.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->health()->Check(&context, request, &response);
      });
  if (!status.ok()) return status;
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(
        absl::StrCat("server is not serving (health status ",
                     grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                         response.status()),
                     ")"));
  }
  return absl::OkStatus();
}

RunContext::RunContext(Client* client, std::string name_space, std::string key,
                       uint64_t token, uint32_t attempt,
                       absl::string_view checkpoint)
    : client_(client),
      name_space_(std::move(name_space)),
      key_(std::move(key)),
      token_(token),
      attempt_(attempt) {
  v1::StepLog log;
  // A checkpoint this client cannot read is treated as no progress.
  if (!checkpoint.empty() &&
      log.ParseFromArray(checkpoint.data(),
                         static_cast<int>(checkpoint.size()))) {
    for (const v1::StepLog::Step& step : log.steps()) {
      steps_.emplace_back(step.name(), step.output());
    }
  }
}

absl::StatusOr<std::string> RunContext::Step(
    absl::string_view name,
    absl::FunctionRef<absl::StatusOr<std::string>()> step) {
  for (const auto& [done, output] : steps_) {
    if (done == name) {
      ++steps_skipped_;
      return output;
    }
  }
  absl::StatusOr<std::string> output = step();
  if (!output.ok()) return output;
  ++steps_run_;
  steps_.emplace_back(std::string(name), *output);
  v1::StepLog log;
  for (const auto& [done, recorded] : steps_) {
    v1::StepLog::Step* entry = log.add_steps();
    entry->set_name(done);
    entry->set_output(recorded);
  }
  absl::Status recorded =
      client_->Checkpoint(name_space_, key_, token_, log.SerializeAsString());
  if (recorded.code() == absl::StatusCode::kFailedPrecondition) {
    lease_lost_ = true;
    return WithKind(absl::AbortedError(absl::StrCat(
                        "step \"", name,
                        "\" ran but the lease was lost: ", recorded.message())),
                    "lease_lost");
  }
  if (!recorded.ok()) return recorded;
  return output;
}

absl::StatusOr<RunResult> Client::Run(absl::string_view name_space,
                                      absl::string_view key,
                                      absl::string_view request, Work work,
                                      const RunOptions& options) {
  BeginOptions begin;
  begin.fingerprint = Fingerprint(request);
  begin.lease = options.lease;
  begin.retention = options.retention;
  begin.wait = options.wait;
  begin.owner = options.owner;
  absl::StatusOr<BeginReply> begun = Begin(name_space, key, begin);
  if (!begun.ok()) return begun.status();

  switch (begun->outcome) {
    case Outcome::kCompleted:
      return RunResult{begun->result, /*replayed=*/true, /*stored=*/true,
                       begun->attempt};
    case Outcome::kMismatch:
      return WithKind(absl::FailedPreconditionError(absl::StrCat(
                          "idempotency key \"", key,
                          "\" was already used with a different request")),
                      "mismatch");
    case Outcome::kInProgress:
      return WithKind(
          absl::UnavailableError(absl::StrCat(
              "another attempt with idempotency key \"", key,
              "\" is still in progress (lease until ",
              absl::FormatTime(begun->lease_expires_at), "); retry later")),
          "in_progress");
    case Outcome::kAcquired:
      break;
  }

  RunContext context(this, std::string(name_space), std::string(key),
                     begun->token, begun->attempt, begun->checkpoint);

  // The heartbeat: extends the lease until the work returns.
  const absl::Duration interval = options.heartbeat == absl::ZeroDuration()
                                      ? options.lease / 3
                                      : options.heartbeat;
  absl::Mutex heartbeat_mu;
  bool work_done = false;
  std::thread heartbeat;
  if (interval != absl::InfiniteDuration()) {
    heartbeat = std::thread([&] {
      absl::MutexLock lock(&heartbeat_mu);
      while (!heartbeat_mu.AwaitWithTimeout(absl::Condition(&work_done),
                                            interval)) {
        heartbeat_mu.Unlock();
        absl::StatusOr<absl::Time> extended =
            Extend(name_space, key, begun->token, options.lease);
        heartbeat_mu.Lock();
        if (extended.status().code() == absl::StatusCode::kFailedPrecondition) {
          context.lease_lost_ = true;
          return;
        }
      }
    });
  }
  auto stop_heartbeat = [&] {
    {
      absl::MutexLock lock(&heartbeat_mu);
      work_done = true;
    }
    if (heartbeat.joinable()) heartbeat.join();
  };

  absl::StatusOr<Result> result;
  try {
    result = work(context);
  } catch (...) {
    stop_heartbeat();
    Release(name_space, key, begun->token).IgnoreError();
    throw;
  }
  stop_heartbeat();

  if (!result.ok() || (options.release_if && options.release_if(*result))) {
    // Best effort: if the release is lost, the lease lapses on its own.
    Release(name_space, key, begun->token).IgnoreError();
    if (!result.ok()) return result.status();
    return RunResult{*std::move(result), /*replayed=*/false, /*stored=*/false,
                     begun->attempt};
  }
  absl::StatusOr<Completion> completed =
      Complete(name_space, key, begun->token, *result, std::nullopt);
  if (completed.status().code() == absl::StatusCode::kFailedPrecondition) {
    return WithKind(absl::AbortedError(absl::StrCat(
                        "the work ran but its result was not stored: ",
                        completed.status().message(),
                        ". Retry the request to get the stored result")),
                    "lease_lost");
  }
  if (!completed.ok()) return completed.status();
  result->completed_at = completed->completed_at;
  return RunResult{*std::move(result), /*replayed=*/false, /*stored=*/true,
                   begun->attempt};
}

}  // namespace idem::client
