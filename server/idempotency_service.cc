#include "server/idempotency_service.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/grpc_status.h"
#include "server/request_validation.h"

namespace idem::server {
namespace {

// A parked call answers this long before the client's deadline, so that the
// client gets IN_PROGRESS rather than DEADLINE_EXCEEDED.
constexpr absl::Duration kDeadlineMargin = absl::Milliseconds(50);

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t nanos = absl::ToUnixNanos(t);
  int64_t seconds = nanos / 1'000'000'000;
  int64_t rest = nanos % 1'000'000'000;
  if (rest < 0) {
    rest += 1'000'000'000;
    --seconds;
  }
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(rest));
}

void SetResult(const storage::Result& result, absl::Time completed_at,
               v1::Result* out) {
  out->set_code(result.code);
  out->set_body(result.body);
  out->mutable_metadata()->insert(result.metadata.begin(),
                                  result.metadata.end());
  SetTimestamp(completed_at, out->mutable_completed_at());
}

void FillBegin(const storage::BeginResult& begun, v1::BeginResponse* out) {
  switch (begun.outcome) {
    case storage::BeginOutcome::kAcquired:
      out->set_outcome(v1::BeginResponse::OUTCOME_ACQUIRED);
      out->mutable_lease()->set_token(begun.token);
      SetTimestamp(begun.lease_expires_at,
                   out->mutable_lease()->mutable_expires_at());
      out->set_attempt(begun.attempt);
      out->set_checkpoint(begun.checkpoint);
      break;
    case storage::BeginOutcome::kCompleted:
      out->set_outcome(v1::BeginResponse::OUTCOME_COMPLETED);
      SetResult(begun.result, begun.completed_at, out->mutable_result());
      SetTimestamp(begun.expires_at, out->mutable_expires_at());
      out->set_attempt(begun.attempt);
      break;
    case storage::BeginOutcome::kInProgress:
      out->set_outcome(v1::BeginResponse::OUTCOME_IN_PROGRESS);
      SetTimestamp(begun.lease_expires_at,
                   out->mutable_lease()->mutable_expires_at());
      break;
    case storage::BeginOutcome::kMismatch:
      out->set_outcome(v1::BeginResponse::OUTCOME_MISMATCH);
      break;
  }
}

std::string WaitKey(const storage::KeyId& id) {
  std::string key = id.name_space;
  key.push_back('\0');
  key.append(id.key);
  return key;
}

absl::Time CallDeadline(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                 const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

// A Begin that may wait. Each attempt reads the store; while the key is in
// progress and the wait has not ended, the call parks in the WaitQueue and
// tries again when woken. Finish() is called exactly once, and is the last
// thing an attempt does with `this`.
class IdempotencyService::BeginReactor final : public grpc::ServerUnaryReactor {
 public:
  BeginReactor(IdempotencyService* service, ValidBegin begin,
               absl::Time wait_until, v1::BeginResponse* response)
      : service_(service),
        command_(std::move(begin.command)),
        wait_key_(WaitKey(command_.id)),
        wait_until_(wait_until),
        response_(response) {}

  void Attempt(bool may_park) {
    const uint64_t epoch = service_->waits_->Epoch(wait_key_);
    absl::StatusOr<storage::BeginResult> begun =
        service_->store_->Begin(command_);
    if (!begun.ok()) {
      Finish(ToGrpcStatus(begun.status()));
      return;
    }
    const absl::Time now = absl::Now();
    if (begun->outcome != storage::BeginOutcome::kInProgress || !may_park ||
        now >= wait_until_) {
      FillBegin(*begun, response_);
      Finish(grpc::Status::OK);
      return;
    }
    // A wake-up may finish the call, and delete `this`, while this thread
    // still holds the lock: keep the lock's owner alive through `park`.
    std::shared_ptr<ParkState> park = park_;
    WaitQueue* waits = service_->waits_;
    absl::MutexLock lock(&park->mu);
    if (park->cancelled) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
      return;
    }
    park->waiter = waits->Park(wait_key_, epoch,
                               std::min(begun->lease_expires_at, wait_until_),
                               [this](WaitQueue::Wake wake) { OnWake(wake); });
  }

  void OnCancel() override {
    WaitQueue::Handle waiter;
    {
      absl::MutexLock lock(&park_->mu);
      park_->cancelled = true;
      waiter = park_->waiter;
    }
    service_->waits_->Cancel(waiter);
  }

  void OnDone() override { delete this; }

 private:
  void OnWake(WaitQueue::Wake wake) {
    switch (wake) {
      case WaitQueue::Wake::kCancelled:
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
        return;
      case WaitQueue::Wake::kShutdown:
        Attempt(/*may_park=*/false);  // Answer with the state as it is.
        return;
      case WaitQueue::Wake::kKeyChanged:
      case WaitQueue::Wake::kRecheck:
        Attempt(/*may_park=*/true);
        return;
    }
  }

  IdempotencyService* const service_;
  const storage::BeginCommand command_;
  const std::string wait_key_;
  const absl::Time wait_until_;
  v1::BeginResponse* const response_;
  // Shared with the thread that parks the call (see Attempt).
  struct ParkState {
    absl::Mutex mu;
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    WaitQueue::Handle waiter ABSL_GUARDED_BY(mu);
  };
  const std::shared_ptr<ParkState> park_ = std::make_shared<ParkState>();
};

IdempotencyService::IdempotencyService(storage::Store* store, WaitQueue* waits,
                                       const Limits& limits)
    : store_(store), waits_(waits), limits_(limits) {}

grpc::ServerUnaryReactor* IdempotencyService::Begin(
    grpc::CallbackServerContext* context, const v1::BeginRequest* request,
    v1::BeginResponse* response) {
  absl::StatusOr<ValidBegin> begin = ValidateBegin(*request, limits_);
  if (!begin.ok()) return Answer(context, begin.status());
  if (begin->wait <= absl::ZeroDuration()) {
    absl::StatusOr<storage::BeginResult> begun = store_->Begin(begin->command);
    if (begun.ok()) FillBegin(*begun, response);
    return Answer(context, begun.status());
  }
  const absl::Time wait_until = std::min(
      absl::Now() + begin->wait, CallDeadline(context) - kDeadlineMargin);
  auto* reactor =
      new BeginReactor(this, *std::move(begin), wait_until, response);
  reactor->Attempt(/*may_park=*/true);
  return reactor;
}

grpc::ServerUnaryReactor* IdempotencyService::Complete(
    grpc::CallbackServerContext* context, const v1::CompleteRequest* request,
    v1::CompleteResponse* response) {
  absl::StatusOr<storage::CompleteCommand> command =
      ValidateComplete(*request, limits_);
  if (!command.ok()) return Answer(context, command.status());
  absl::StatusOr<storage::CompleteResult> completed =
      store_->Complete(*command);
  if (completed.ok()) {
    SetTimestamp(completed->completed_at, response->mutable_completed_at());
    SetTimestamp(completed->expires_at, response->mutable_expires_at());
    waits_->Notify(WaitKey(command->id));
  }
  return Answer(context, completed.status());
}

grpc::ServerUnaryReactor* IdempotencyService::Release(
    grpc::CallbackServerContext* context, const v1::ReleaseRequest* request,
    v1::ReleaseResponse* /*response*/) {
  absl::StatusOr<storage::ReleaseCommand> command = ValidateRelease(*request);
  if (!command.ok()) return Answer(context, command.status());
  absl::Status released = store_->Release(*command);
  if (released.ok()) waits_->Notify(WaitKey(command->id));
  return Answer(context, released);
}

grpc::ServerUnaryReactor* IdempotencyService::Extend(
    grpc::CallbackServerContext* context, const v1::ExtendRequest* request,
    v1::ExtendResponse* response) {
  absl::StatusOr<storage::ExtendCommand> command =
      ValidateExtend(*request, limits_);
  if (!command.ok()) return Answer(context, command.status());
  absl::StatusOr<absl::Time> expires = store_->Extend(*command);
  if (expires.ok()) SetTimestamp(*expires, response->mutable_expires_at());
  return Answer(context, expires.status());
}

grpc::ServerUnaryReactor* IdempotencyService::Lookup(
    grpc::CallbackServerContext* context, const v1::LookupRequest* request,
    v1::LookupResponse* response) {
  absl::StatusOr<storage::KeyId> id = ValidateLookup(*request);
  if (!id.ok()) return Answer(context, id.status());
  absl::StatusOr<storage::KeySnapshot> seen = store_->Lookup(*id);
  if (!seen.ok()) return Answer(context, seen.status());
  switch (seen->state) {
    case storage::KeyState::kAbsent:
      response->set_state(v1::LookupResponse::STATE_ABSENT);
      break;
    case storage::KeyState::kInProgress:
      response->set_state(v1::LookupResponse::STATE_IN_PROGRESS);
      SetTimestamp(seen->lease_expires_at,
                   response->mutable_lease()->mutable_expires_at());
      break;
    case storage::KeyState::kCompleted:
      response->set_state(v1::LookupResponse::STATE_COMPLETED);
      SetResult(seen->result, seen->completed_at, response->mutable_result());
      break;
  }
  if (seen->attempt > 0) {
    response->set_fingerprint(seen->fingerprint);
    SetTimestamp(seen->created_at, response->mutable_created_at());
    response->set_attempt(seen->attempt);
    response->set_checkpoint(seen->checkpoint);
  }
  if (seen->state != storage::KeyState::kAbsent) {
    SetTimestamp(seen->expires_at, response->mutable_expires_at());
  }
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* IdempotencyService::Checkpoint(
    grpc::CallbackServerContext* context, const v1::CheckpointRequest* request,
    v1::CheckpointResponse* /*response*/) {
  absl::StatusOr<storage::CheckpointCommand> command =
      ValidateCheckpoint(*request);
  if (!command.ok()) return Answer(context, command.status());
  return Answer(context, store_->Checkpoint(*command));
}

}  // namespace idem::server
