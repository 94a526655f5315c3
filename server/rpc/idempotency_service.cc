#include "server/rpc/idempotency_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/rpc/grpc_status.h"
#include "server/rpc/proto_conversions.h"
#include "server/rpc/request_validation.h"
#include "server/rpc/unary_call.h"

namespace idem::server {
// A Begin that may wait. Each attempt reads the store; while the key is in
// progress and the wait has not ended, the Begin parks in the WaitQueue and
// tries again when woken. `done` is called exactly once, after which the
// waiter deletes itself: it is the last thing an attempt does.
class IdempotencyService::BeginWaiter {
 public:
  BeginWaiter(IdempotencyService* service, storage::BeginCommand command,
              absl::Time wait_until, v1::BeginResponse* response,
              std::shared_ptr<ParkState> park, OpDone done)
      : service_(service),
        command_(std::move(command)),
        wait_key_(WaitKey(command_.id)),
        wait_until_(wait_until),
        response_(response),
        park_(std::move(park)),
        done_(std::move(done)) {}

  // Reads inline when Begin needs no write; otherwise the store's writer
  // thread continues once the acquisition is durable.
  void Attempt(bool may_park) {
    const uint64_t epoch = service_->waits_->Epoch(wait_key_);
    storage::PeekHint hint;
    std::optional<absl::StatusOr<storage::BeginResult>> peeked =
        service_->store_->PeekBegin(command_, &hint);
    command_.hint = hint;
    if (peeked.has_value()) {
      Handle(*std::move(peeked), epoch, may_park);
      return;
    }
    // The epoch read above precedes the store's read of the key.
    service_->RunBegin(
        command_,
        [this, epoch, may_park](absl::StatusOr<storage::BeginResult> begun) {
          Handle(std::move(begun), epoch, may_park);
        });
  }

 private:
  void Handle(absl::StatusOr<storage::BeginResult> begun, uint64_t epoch,
              bool may_park) {
    if (!begun.ok()) {
      Done(begun.status());
      return;
    }
    const absl::Time now = absl::Now();
    if (begun->outcome != storage::BeginOutcome::kInProgress || !may_park ||
        now >= wait_until_) {
      FillBegin(*begun, response_);
      Done(absl::OkStatus(), OutcomeName(begun->outcome));
      return;
    }
    // A wake-up may answer, and delete `this`, while this thread still
    // holds the lock: keep the lock's owner alive through `park`.
    const std::shared_ptr<ParkState> park = park_;
    WaitQueue* waits = service_->waits_;
    std::function<void()> after_park;
    {
      absl::MutexLock lock(&park->mu);
      if (park->cancelled) {
        Done(absl::CancelledError("call cancelled"));
        return;
      }
      // Set first: once parked, a wake-up may run (and answer) at once.
      const bool waited = parked_before_;
      parked_before_ = true;
      park->waiter = waits->Park(
          wait_key_, epoch,
          std::min({absl::Now() + begun->lease_left, wait_until_,
                    absl::Now() + service_->limits_.wait_recheck}),
          [this](WaitQueue::Wake wake) { OnWake(wake); },
          service_->limits_.max_parked_waiters);
      if (park->waiter == nullptr) {
        NotParked(*begun, waited);
        return;
      }
      if (!waited && park->on_first_park) after_park = park->on_first_park();
    }
    // `this` may be gone: only locals from here.
    if (after_park) after_park();
  }

  // The WaitQueue is full, and no wake-up will come.
  void NotParked(const storage::BeginResult& begun, bool waited) {
    if (waited) {
      // It has waited already: answer with the state as it is.
      FillBegin(begun, response_);
      Done(absl::OkStatus(), OutcomeName(begun.outcome));
      return;
    }
    Done(absl::ResourceExhaustedError(absl::StrCat(
        "the server is overloaded: ", service_->limits_.max_parked_waiters,
        " Begin calls are already waiting (--max-parked-waiters); retry with "
        "backoff, or Begin without wait")));
  }

  void OnWake(WaitQueue::Wake wake) {
    switch (wake) {
      case WaitQueue::Wake::kCancelled:
        Done(absl::CancelledError("call cancelled"));
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

  // Answers and deletes the waiter: the last use of `this`.
  void Done(const absl::Status& status, absl::string_view outcome = "") {
    OpDone done = std::move(done_);
    delete this;
    done(status, outcome);
  }

  IdempotencyService* const service_;
  storage::BeginCommand command_;  // Its hint changes with each attempt.
  const std::string wait_key_;
  const absl::Time wait_until_;
  v1::BeginResponse* const response_;
  const std::shared_ptr<ParkState> park_;
  OpDone done_;
  bool parked_before_ = false;  // Only touched by the current attempt.
};

// A unary Begin with `wait`: its own reactor, so that a client that goes
// away ends the wait.
class IdempotencyService::WaitingBeginReactor final
    : public grpc::ServerUnaryReactor {
 public:
  explicit WaitingBeginReactor(IdempotencyService* service)
      : service_(service) {}

  const std::shared_ptr<ParkState>& park() const { return park_; }
  void OnCancel() override { service_->CancelWait(park_); }
  void OnDone() override { delete this; }

 private:
  IdempotencyService* const service_;
  const std::shared_ptr<ParkState> park_ = std::make_shared<ParkState>();
};

IdempotencyService::IdempotencyService(storage::Store* store, WaitQueue* waits,
                                       RpcObserver* observer,
                                       const Authorizer* authorizer,
                                       const Limits& limits)
    : store_(store),
      waits_(waits),
      observer_(observer),
      authorizer_(authorizer),
      limits_(limits) {}

absl::Status IdempotencyService::Authorize(
    const grpc::CallbackServerContext& context,
    absl::string_view name_space) const {
  absl::StatusOr<Access> access = authorizer_->Authenticate(context);
  if (!access.ok()) return access.status();
  return authorizer_->CheckNamespace(*access, name_space);
}

void IdempotencyService::RunBegin(const storage::BeginCommand& command,
                                  storage::Done<storage::BeginResult> done) {
  store_->BeginAsync(command, [this, id = command.id, done = std::move(done)](
                                  absl::StatusOr<storage::BeginResult> begun) {
    if (begun.ok() && begun->took_over) {
      observer_->TookOver(id, begun->token, begun->attempt);
    }
    done(std::move(begun));
  });
}

void IdempotencyService::CancelWait(const std::shared_ptr<ParkState>& park) {
  WaitQueue::Handle waiter;
  {
    absl::MutexLock lock(&park->mu);
    park->cancelled = true;
    waiter = park->waiter;
  }
  if (waiter != nullptr) waits_->Cancel(waiter);
}

void IdempotencyService::DoBegin(ValidBegin begin, absl::Time wait_until,
                                 v1::BeginResponse* response,
                                 std::shared_ptr<ParkState> park, OpDone done) {
  if (begin.wait > absl::ZeroDuration()) {
    (new BeginWaiter(this, std::move(begin.command), wait_until, response,
                     std::move(park), std::move(done)))
        ->Attempt(/*may_park=*/true);
    return;
  }
  storage::PeekHint hint;
  std::optional<absl::StatusOr<storage::BeginResult>> peeked =
      store_->PeekBegin(begin.command, &hint);
  begin.command.hint = hint;
  if (peeked.has_value()) {
    if (!peeked->ok()) {
      done(peeked->status(), "");
      return;
    }
    FillBegin(**peeked, response);
    done(absl::OkStatus(), OutcomeName((*peeked)->outcome));
    return;
  }
  RunBegin(begin.command, [response, done = std::move(done)](
                              absl::StatusOr<storage::BeginResult> begun) {
    if (!begun.ok()) {
      done(begun.status(), "");
      return;
    }
    FillBegin(*begun, response);
    done(absl::OkStatus(), OutcomeName(begun->outcome));
  });
}

void IdempotencyService::DoComplete(const storage::CompleteCommand& command,
                                    v1::CompleteResponse* response,
                                    OpDone done) {
  store_->CompleteAsync(
      command, [this, response, done = std::move(done), id = command.id](
                   absl::StatusOr<storage::CompleteResult> completed) {
        if (completed.ok()) {
          SetTimestamp(completed->completed_at,
                       response->mutable_completed_at());
          SetTimestamp(completed->expires_at, response->mutable_expires_at());
          waits_->Notify(WaitKey(id));
        }
        done(completed.status(), "OK");
      });
}

void IdempotencyService::DoRelease(const storage::ReleaseCommand& command,
                                   OpDone done) {
  store_->ReleaseAsync(command, [this, done = std::move(done), id = command.id](
                                    const absl::Status& released) {
    if (released.ok()) waits_->Notify(WaitKey(id));
    done(released, "OK");
  });
}

void IdempotencyService::DoExtend(const storage::ExtendCommand& command,
                                  v1::ExtendResponse* response, OpDone done) {
  store_->ExtendAsync(command, [response, done = std::move(done)](
                                   absl::StatusOr<absl::Time> expires) {
    if (expires.ok()) SetTimestamp(*expires, response->mutable_expires_at());
    done(expires.status(), "OK");
  });
}

void IdempotencyService::DoLookup(const storage::KeyId& id,
                                  v1::LookupResponse* response,
                                  const OpDone& done) {
  absl::StatusOr<storage::KeySnapshot> seen = store_->Lookup(id);
  if (seen.ok()) FillLookup(*seen, response);
  done(seen.status(), "OK");
}

void IdempotencyService::DoCheckpoint(const storage::CheckpointCommand& command,
                                      OpDone done) {
  store_->CheckpointAsync(
      command,
      [done = std::move(done)](const absl::Status& s) { done(s, "OK"); });
}

namespace {

// The OpDone of a unary call.
auto AnswerCall(const UnaryCall& call) {
  return [call](const absl::Status& status, absl::string_view outcome) {
    call.Answer(status, outcome);
  };
}

}  // namespace

grpc::ServerUnaryReactor* IdempotencyService::Begin(
    grpc::CallbackServerContext* context, const v1::BeginRequest* request,
    v1::BeginResponse* response) {
  const absl::Time start = absl::Now();
  if (absl::Status allowed = Authorize(*context, request->namespace_());
      !allowed.ok()) {
    return observer_->Answer(context, "Begin", start, allowed);
  }
  absl::StatusOr<ValidBegin> begin = ValidateBegin(*request, limits_);
  if (!begin.ok()) {
    return observer_->Answer(context, "Begin", start, begin.status());
  }
  const absl::Time deadline = CallDeadline(*context);
  begin->command.deadline = deadline;
  if (begin->wait <= absl::ZeroDuration()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    DoBegin(*std::move(begin), start, response, nullptr,
            AnswerCall(UnaryCall(reactor, observer_, "Begin", start)));
    return reactor;
  }
  const absl::Time wait_until =
      std::min(start + begin->wait, deadline - kWaitMargin);
  auto* reactor = new WaitingBeginReactor(this);
  DoBegin(*std::move(begin), wait_until, response, reactor->park(),
          AnswerCall(UnaryCall(reactor, observer_, "Begin", start)));
  return reactor;
}

grpc::ServerUnaryReactor* IdempotencyService::Complete(
    grpc::CallbackServerContext* context, const v1::CompleteRequest* request,
    v1::CompleteResponse* response) {
  return Serve(
      context, observer_, "Complete",
      [&] { return Authorize(*context, request->namespace_()); },
      [&] { return ValidateComplete(*request, limits_); },
      [this, response](const storage::CompleteCommand& command,
                       UnaryCall call) {
        DoComplete(command, response, AnswerCall(call));
      });
}

grpc::ServerUnaryReactor* IdempotencyService::Release(
    grpc::CallbackServerContext* context, const v1::ReleaseRequest* request,
    v1::ReleaseResponse* /*response*/) {
  return Serve(
      context, observer_, "Release",
      [&] { return Authorize(*context, request->namespace_()); },
      [&] { return ValidateRelease(*request); },
      [this](const storage::ReleaseCommand& command, UnaryCall call) {
        DoRelease(command, AnswerCall(call));
      });
}

grpc::ServerUnaryReactor* IdempotencyService::Extend(
    grpc::CallbackServerContext* context, const v1::ExtendRequest* request,
    v1::ExtendResponse* response) {
  return Serve(
      context, observer_, "Extend",
      [&] { return Authorize(*context, request->namespace_()); },
      [&] { return ValidateExtend(*request, limits_); },
      [this, response](const storage::ExtendCommand& command, UnaryCall call) {
        DoExtend(command, response, AnswerCall(call));
      });
}

grpc::ServerUnaryReactor* IdempotencyService::Lookup(
    grpc::CallbackServerContext* context, const v1::LookupRequest* request,
    v1::LookupResponse* response) {
  return Serve(
      context, observer_, "Lookup",
      [&] { return Authorize(*context, request->namespace_()); },
      [&] { return ValidateLookup(*request); },
      [this, response](const storage::KeyId& id, UnaryCall call) {
        DoLookup(id, response, AnswerCall(call));
      });
}

grpc::ServerUnaryReactor* IdempotencyService::Checkpoint(
    grpc::CallbackServerContext* context, const v1::CheckpointRequest* request,
    v1::CheckpointResponse* /*response*/) {
  return Serve(
      context, observer_, "Checkpoint",
      [&] { return Authorize(*context, request->namespace_()); },
      [&] { return ValidateCheckpoint(*request); },
      [this](const storage::CheckpointCommand& command, UnaryCall call) {
        DoCheckpoint(command, AnswerCall(call));
      });
}

namespace {

void SetBatchStatus(const absl::Status& status, v1::BatchStatus* out) {
  out->set_code(static_cast<int32_t>(status.code()));
  out->set_message(std::string(status.message()));
}

absl::Status CheckBatchSize(int size) {
  if (size < 1 || size > Limits::kMaxBatchSize) {
    return absl::InvalidArgumentError(absl::StrCat("requests must hold 1 to ",
                                                   Limits::kMaxBatchSize,
                                                   " requests; got ", size));
  }
  return absl::OkStatus();
}

// Finishes a batch call once its last entry is answered. Entries are
// answered on the store's writer thread (or inline when invalid); the
// submitting loop holds one count so that the call cannot finish before
// every entry was submitted.
class BatchCountdown {
 public:
  BatchCountdown(int entries, std::function<void()> finish)
      : remaining_(entries + 1), finish_(std::move(finish)) {}
  void Done() {
    if (remaining_.fetch_sub(1) == 1) finish_();
  }

 private:
  std::atomic<int> remaining_;
  std::function<void()> finish_;
};

// What one BeginBatch reply may still carry (Limits::max_reply_bytes).
// Replays of stored results take from it and are refused once it is used
// up; acquisitions are charged but never refused: a lease that was granted
// must reach its holder (with its checkpoint, at most 64 KiB).
class ReplyBudget {
 public:
  explicit ReplyBudget(size_t bytes) : left_(static_cast<int64_t>(bytes)) {}

  bool Take(size_t bytes) {
    const int64_t n = static_cast<int64_t>(bytes);
    int64_t left = left_.load();
    while (left >= n) {
      if (left_.compare_exchange_weak(left, left - n)) return true;
    }
    return false;
  }
  void Charge(size_t bytes) { left_ -= static_cast<int64_t>(bytes); }

 private:
  std::atomic<int64_t> left_;
};

// Bytes `begun` adds to a reply, framing included (an upper bound).
size_t ReplyBytes(const storage::BeginResult& begun) {
  size_t bytes = 128 + begun.checkpoint.size() + begun.result.body.size();
  for (const auto& [key, value] : begun.result.metadata) {
    bytes += key.size() + value.size() + 16;
  }
  return bytes;
}

}  // namespace

// One BeginBatch call. Entries go to the store in request order, so that
// requests for one key in the batch see each other, but at most `window`
// at a time: a store holds every answer of a group until its write is
// durable, and each replay answer carries a copy of its stored result, so a
// batch replaying 1,000 large results at once held gigabytes. The window
// (--max-reply-bytes / the largest result) bounds what is in flight; the
// ReplyBudget bounds what the reply keeps. Deletes itself when answered.
class IdempotencyService::BeginBatchCall {
 public:
  BeginBatchCall(IdempotencyService* service,
                 std::vector<absl::StatusOr<storage::BeginCommand>> commands,
                 v1::BeginBatchResponse* response, std::function<void()> finish)
      : service_(service),
        commands_(std::move(commands)),
        response_(response),
        finish_(std::move(finish)),
        budget_(service->limits_.max_reply_bytes),
        window_(std::max<size_t>(1, service->limits_.max_reply_bytes /
                                        service->limits_.MaxResultBytes())),
        remaining_(static_cast<int>(commands_.size()) + 1) {
    // Every entry exists before any is answered: answers then touch only
    // their own entry.
    for (size_t i = 0; i < commands_.size(); ++i) response_->add_entries();
  }

  void Start() {
    for (size_t i = 0; i < window_; ++i) AddSlot();
    Done();
  }

 private:
  // One more entry may be in flight. One thread at a time submits (in
  // order); a slot added meanwhile is taken by that thread's loop.
  void AddSlot() {
    if (slots_.fetch_add(1) != 0) return;
    remaining_.fetch_add(1);  // Alive while this thread submits.
    do {
      SubmitOne();
    } while (slots_.fetch_sub(1) != 1);
    Done();
  }

  // Submits the next entry that needs the store, answering refused ones on
  // the way. Only the submitting thread touches next_.
  void SubmitOne() {
    while (next_ < commands_.size()) {
      const size_t i = next_++;
      v1::BeginBatchEntry* entry =
          response_->mutable_entries(static_cast<int>(i));
      if (!commands_[i].ok()) {
        SetBatchStatus(commands_[i].status(), entry->mutable_status());
        Done();
        continue;
      }
      service_->RunBegin(
          *commands_[i],
          [this, entry](const absl::StatusOr<storage::BeginResult>& b) {
            Answer(b, entry);
            AddSlot();
            Done();
          });
      return;
    }
  }

  void Answer(const absl::StatusOr<storage::BeginResult>& begun,
              v1::BeginBatchEntry* entry) {
    if (begun.ok() && begun->outcome == storage::BeginOutcome::kCompleted &&
        !budget_.Take(ReplyBytes(*begun))) {
      // A replay writes nothing: refusing it changes nothing stored.
      SetBatchStatus(absl::ResourceExhaustedError(absl::StrCat(
                         "the batch's reply would exceed ",
                         service_->limits_.max_reply_bytes,
                         " bytes (--max-reply-bytes); Begin or Lookup this "
                         "key on its own to get its stored result")),
                     entry->mutable_status());
      return;
    }
    SetBatchStatus(begun.status(), entry->mutable_status());
    if (!begun.ok()) return;
    if (begun->outcome != storage::BeginOutcome::kCompleted) {
      budget_.Charge(ReplyBytes(*begun));
    }
    FillBegin(*begun, entry->mutable_response());
  }

  void Done() {
    if (remaining_.fetch_sub(1) == 1) {
      finish_();
      delete this;
    }
  }

  IdempotencyService* const service_;
  const std::vector<absl::StatusOr<storage::BeginCommand>> commands_;
  v1::BeginBatchResponse* const response_;
  const std::function<void()> finish_;
  ReplyBudget budget_;
  const size_t window_;
  std::atomic<int> remaining_;
  std::atomic<size_t> slots_{0};
  size_t next_ = 0;
};

grpc::ServerUnaryReactor* IdempotencyService::BeginBatch(
    grpc::CallbackServerContext* context, const v1::BeginBatchRequest* request,
    v1::BeginBatchResponse* response) {
  const absl::Time start = absl::Now();
  const int n = request->requests_size();
  if (absl::Status size = CheckBatchSize(n); !size.ok()) {
    return observer_->Answer(context, "BeginBatch", start, size);
  }
  const absl::StatusOr<Access> access = authorizer_->Authenticate(*context);
  if (!access.ok()) {
    return observer_->Answer(context, "BeginBatch", start, access.status());
  }
  std::vector<absl::StatusOr<storage::BeginCommand>> commands;
  commands.reserve(n);
  for (const v1::BeginRequest& one : request->requests()) {
    absl::StatusOr<ValidBegin> begin = ValidateBegin(one, limits_);
    if (absl::Status allowed =
            authorizer_->CheckNamespace(*access, one.namespace_());
        !allowed.ok()) {
      begin = allowed;
    }
    if (begin.ok() && begin->wait > absl::ZeroDuration()) {
      begin = absl::InvalidArgumentError("wait is not allowed in a batch");
    }
    if (begin.ok()) begin->command.deadline = CallDeadline(*context);
    commands.push_back(begin.ok() ? absl::StatusOr<storage::BeginCommand>(
                                        std::move(begin->command))
                                  : begin.status());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  (new BeginBatchCall(this, std::move(commands), response, [=, this] {
    observer_->Finish(reactor, "BeginBatch", start, absl::OkStatus());
  }))->Start();
  return reactor;
}

grpc::ServerUnaryReactor* IdempotencyService::CompleteBatch(
    grpc::CallbackServerContext* context,
    const v1::CompleteBatchRequest* request,
    v1::CompleteBatchResponse* response) {
  const absl::Time start = absl::Now();
  const int n = request->requests_size();
  if (absl::Status size = CheckBatchSize(n); !size.ok()) {
    return observer_->Answer(context, "CompleteBatch", start, size);
  }
  const absl::StatusOr<Access> access = authorizer_->Authenticate(*context);
  if (!access.ok()) {
    return observer_->Answer(context, "CompleteBatch", start, access.status());
  }
  for (int i = 0; i < n; ++i) response->add_entries();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto countdown = std::make_shared<BatchCountdown>(n, [=, this] {
    observer_->Finish(reactor, "CompleteBatch", start, absl::OkStatus());
  });
  for (int i = 0; i < n; ++i) {
    v1::CompleteBatchEntry* entry = response->mutable_entries(i);
    absl::StatusOr<storage::CompleteCommand> command =
        ValidateComplete(request->requests(i), limits_);
    if (absl::Status allowed = authorizer_->CheckNamespace(
            *access, request->requests(i).namespace_());
        !allowed.ok()) {
      command = allowed;
    }
    if (command.ok()) command->deadline = CallDeadline(*context);
    if (!command.ok()) {
      SetBatchStatus(command.status(), entry->mutable_status());
      countdown->Done();
      continue;
    }
    store_->CompleteAsync(
        *command, [this, entry, countdown, id = command->id](
                      absl::StatusOr<storage::CompleteResult> completed) {
          SetBatchStatus(completed.status(), entry->mutable_status());
          if (completed.ok()) {
            SetTimestamp(completed->completed_at,
                         entry->mutable_response()->mutable_completed_at());
            SetTimestamp(completed->expires_at,
                         entry->mutable_response()->mutable_expires_at());
            waits_->Notify(WaitKey(id));
          }
          countdown->Done();
        });
  }
  countdown->Done();
  return reactor;
}

}  // namespace idem::server
