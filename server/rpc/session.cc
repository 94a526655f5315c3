// idem.v1.Idempotency/Session: many operations over one bidirectional
// stream, each run by the same Do* function as its unary RPC.
//
// One stream, step by step:
//  - The client is authenticated once, when the stream opens; each
//    operation's namespace is then checked like a unary call's.
//  - One SessionRequest is read at a time. Its operations are started in
//    order (two on one key see each other); the next message is read once
//    all of them have started.
//  - Each answer joins the outgoing queue. One write is in flight at a time;
//    answers that finish meanwhile share the next message (up to
//    kMessageBytes), so that under load many answers travel together.
//  - Bounds, whatever the client does: at most kMaxRunning operations run at
//    once, of which at most heavy_window_ Begins and Lookups (each may answer
//    with a stored result of up to Limits::MaxResultBytes()); and nothing new
//    starts while answers not yet written exceed --max-reply-bytes. A stream
//    thus holds about 2 x --max-reply-bytes of answers at most; a client
//    that stops reading stops this side reading too (HTTP/2 flow control)
//    instead of growing the server's memory. A waiting Begin leaves the
//    window once it parks: parked Begins are bounded by
//    --max-parked-waiters, as unary ones are, and must not stall the
//    Completes that would wake them.
//  - The stream ends when the client has half-closed and every answer is
//    written, or when the client goes away: parked Begins are cancelled and
//    the operations already running finish (their answers are dropped).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/rpc/grpc_status.h"
#include "server/rpc/idempotency_service.h"
#include "server/rpc/request_validation.h"
#include "server/rpc/unary_call.h"
#include "storage/finish_group.h"

namespace idem::server {
namespace {

// Operations running at once on one stream (parked Begins not counted).
constexpr int kMaxRunning = 1024;
// Answers share a message up to this size (one larger answer goes alone).
constexpr size_t kMessageBytes = size_t{1} << 20;

bool IsHeavy(v1::SessionOp::OpCase op) {
  return op == v1::SessionOp::kBegin || op == v1::SessionOp::kLookup;
}

}  // namespace

class IdempotencyService::SessionReactor final
    : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  SessionReactor(IdempotencyService* service,
                 grpc::CallbackServerContext* context)
      : service_(service),
        metrics_(service->observer_->metrics()),
        stream_deadline_(CallDeadline(*context)),
        heavy_window_(static_cast<int>(
            std::max<size_t>(1, service->limits_.max_reply_bytes /
                                    service->limits_.MaxResultBytes()))) {
    const absl::Time start = absl::Now();
    absl::StatusOr<Access> access =
        service_->authorizer_->Authenticate(*context);
    if (!access.ok()) {
      service_->observer_->Answered("Session", start, access.status());
      finished_ = true;
      Finish(ToGrpcStatus(access.status()));
      return;
    }
    access_ = *std::move(access);
    metrics_->RecordSessionOpen(+1);
    opened_ = true;
    read_pending_ = true;
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      read_pending_ = false;
      if (!ok) {
        reads_done_ = true;
      } else {
        metrics_->RecordSessionMessages(1, 0);
        metrics_->RecordSessionOperations(request_.ops_size());
        next_op_ = 0;
        dispatching_ = true;
      }
    }
    if (ok) {
      Dispatch();
    } else {
      Act(Decide());
    }
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      queued_bytes_ -= writing_bytes_;
      writing_.reset();
      writing_bytes_ = 0;
      if (!ok) Break();
    }
    Act(Decide());
  }

  void OnCancel() override {
    std::vector<std::shared_ptr<ParkState>> parks;
    {
      absl::MutexLock lock(&mu_);
      Break();
      for (Op* op : waiting_) parks.push_back(op->park);
    }
    for (const auto& park : parks) service_->CancelWait(park);
    Act(Decide());
  }

  void OnDone() override {
    if (opened_) metrics_->RecordSessionOpen(-1);
    delete this;
  }

 private:
  // One operation, from its start to its answer.
  struct Op {
    uint64_t id = 0;
    absl::string_view method = "Session";  // A literal.
    absl::Time start;
    bool heavy = false;
    bool windowed = true;  // Counted in running_ (and heavy_) until then.
    std::unique_ptr<v1::SessionResult> result =
        std::make_unique<v1::SessionResult>();
    std::shared_ptr<ParkState> park;  // A waiting Begin's.
  };

  // What to do once the lock is released.
  struct Actions {
    v1::SessionResponse* write = nullptr;
    bool dispatch = false;
    bool finish = false;
  };

  // Starts the current message's operations in order while the window
  // allows, then reads the next message. One thread at a time dispatches
  // (dispatching_); a full window pauses it, and the answer that opens the
  // window resumes it (Decide).
  void Dispatch() {
    // Answers given while starting (refusals, replays) share a message.
    storage::FinishGroup group;
    bool read = false;
    for (;;) {
      const v1::SessionOp* next = nullptr;
      {
        absl::MutexLock lock(&mu_);
        if (broken_) {
          dispatching_ = false;
          break;
        }
        if (next_op_ == request_.ops_size()) {
          dispatching_ = false;
          read_pending_ = true;
          read = true;
          break;
        }
        next = &request_.ops(next_op_);
        if (!WindowOpen(*next)) {
          dispatching_ = false;
          paused_ = true;
          break;
        }
        ++next_op_;
        ++outstanding_;
        ++running_;
        if (IsHeavy(next->op_case())) ++heavy_;
      }
      Start(*next);
    }
    // Every operation of request_ has started (and copied what it needs):
    // the message may be overwritten.
    if (read) {
      StartRead(&request_);
    } else {
      Act(Decide());
    }
  }

  bool WindowOpen(const v1::SessionOp& op) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return running_ < kMaxRunning &&
           (!IsHeavy(op.op_case()) || heavy_ < heavy_window_) &&
           queued_bytes_ < service_->limits_.max_reply_bytes;
  }

  // Validates, authorizes and runs one operation (already counted).
  void Start(const v1::SessionOp& message) {
    auto op = std::make_unique<Op>();
    op->id = message.id();
    op->start = absl::Now();
    op->heavy = IsHeavy(message.op_case());
    absl::StatusOr<absl::Duration> timeout = ValidateSessionTimeout(message);
    if (!timeout.ok()) {
      Answer(std::move(op), timeout.status());
      return;
    }
    const absl::Time deadline =
        *timeout == absl::InfiniteDuration()
            ? stream_deadline_
            : std::min(stream_deadline_, op->start + *timeout);
    v1::SessionResult* result = op->result.get();
    IdempotencyService* service = service_;
    switch (message.op_case()) {
      case v1::SessionOp::kBegin: {
        op->method = "Begin";
        absl::StatusOr<ValidBegin> begin = Admit(
            message.begin().namespace_(),
            [&] { return ValidateBegin(message.begin(), service->limits_); });
        if (!begin.ok()) {
          Answer(std::move(op), begin.status());
          return;
        }
        begin->command.deadline = deadline;
        const absl::Time wait_until =
            std::min(op->start + begin->wait, deadline - kWaitMargin);
        if (begin->wait > absl::ZeroDuration()) {
          op->park = std::make_shared<ParkState>();
          op->park->on_first_park = [this, raw = op.get()] {
            return Parked(raw);
          };
          absl::MutexLock lock(&mu_);
          waiting_.insert(op.get());
        }
        std::shared_ptr<ParkState> park = op->park;
        service->DoBegin(*std::move(begin), wait_until, result->mutable_begin(),
                         std::move(park), Done(std::move(op)));
        return;
      }
      case v1::SessionOp::kComplete: {
        op->method = "Complete";
        absl::StatusOr<storage::CompleteCommand> command =
            Admit(message.complete().namespace_(), [&] {
              return ValidateComplete(message.complete(), service->limits_);
            });
        if (!command.ok()) {
          Answer(std::move(op), command.status());
          return;
        }
        command->deadline = deadline;
        service->DoComplete(*command, result->mutable_complete(),
                            Done(std::move(op)));
        return;
      }
      case v1::SessionOp::kRelease: {
        op->method = "Release";
        absl::StatusOr<storage::ReleaseCommand> command =
            Admit(message.release().namespace_(),
                  [&] { return ValidateRelease(message.release()); });
        if (!command.ok()) {
          Answer(std::move(op), command.status());
          return;
        }
        command->deadline = deadline;
        result->mutable_release();
        service->DoRelease(*command, Done(std::move(op)));
        return;
      }
      case v1::SessionOp::kExtend: {
        op->method = "Extend";
        absl::StatusOr<storage::ExtendCommand> command = Admit(
            message.extend().namespace_(),
            [&] { return ValidateExtend(message.extend(), service->limits_); });
        if (!command.ok()) {
          Answer(std::move(op), command.status());
          return;
        }
        command->deadline = deadline;
        service->DoExtend(*command, result->mutable_extend(),
                          Done(std::move(op)));
        return;
      }
      case v1::SessionOp::kLookup: {
        op->method = "Lookup";
        absl::StatusOr<storage::KeyId> id =
            Admit(message.lookup().namespace_(),
                  [&] { return ValidateLookup(message.lookup()); });
        if (!id.ok()) {
          Answer(std::move(op), id.status());
          return;
        }
        service->DoLookup(*id, result->mutable_lookup(), Done(std::move(op)));
        return;
      }
      case v1::SessionOp::kCheckpoint: {
        op->method = "Checkpoint";
        absl::StatusOr<storage::CheckpointCommand> command =
            Admit(message.checkpoint().namespace_(),
                  [&] { return ValidateCheckpoint(message.checkpoint()); });
        if (!command.ok()) {
          Answer(std::move(op), command.status());
          return;
        }
        command->deadline = deadline;
        result->mutable_checkpoint();
        service->DoCheckpoint(*command, Done(std::move(op)));
        return;
      }
      case v1::SessionOp::OP_NOT_SET:
        break;
    }
    Answer(std::move(op),
           absl::InvalidArgumentError(
               "a session operation must set one of begin, complete, release, "
               "extend, lookup or checkpoint"));
  }

  // The caller may use `name_space`, then the request is valid (the order
  // of the unary RPCs).
  template <typename Validate>
  auto Admit(absl::string_view name_space, Validate validate)
      -> decltype(validate()) {
    if (absl::Status allowed =
            service_->authorizer_->CheckNamespace(access_, name_space);
        !allowed.ok()) {
      return allowed;
    }
    return validate();
  }

  OpDone Done(std::unique_ptr<Op> op) {
    return [this, raw = op.release()](const absl::Status& status,
                                      absl::string_view outcome) {
      Answer(std::unique_ptr<Op>(raw), status, outcome);
    };
  }

  // A waiting Begin parked: it leaves the window (see the file comment).
  // Runs under its ParkState's lock, before any wake-up can answer it; a
  // dispatch this opens runs after that lock is released (dispatching_
  // keeps the stream alive until then).
  std::function<void()> Parked(Op* op) {
    absl::MutexLock lock(&mu_);
    if (!op->windowed) return nullptr;
    op->windowed = false;
    --running_;
    --heavy_;
    if (!Resume()) return nullptr;
    return [this] { Dispatch(); };
  }

  void Answer(std::unique_ptr<Op> op, const absl::Status& status,
              absl::string_view outcome = "") {
    service_->observer_->Answered(op->method, op->start, status, outcome);
    std::unique_ptr<v1::SessionResult> result = std::move(op->result);
    result->set_id(op->id);
    if (!status.ok()) {
      result->clear_response();
      result->mutable_status()->set_code(static_cast<int32_t>(status.code()));
      result->mutable_status()->set_message(std::string(status.message()));
    }
    const size_t bytes = result->ByteSizeLong();
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      --outstanding_;
      if (op->windowed) {
        --running_;
        if (op->heavy) --heavy_;
      }
      if (op->park != nullptr) waiting_.erase(op.get());
      if (!broken_) {
        if (pending_.empty() || pending_.back().bytes + bytes > kMessageBytes) {
          pending_.push_back(
              Outgoing{std::make_unique<v1::SessionResponse>(), 0});
        }
        pending_.back().message->mutable_results()->AddAllocated(
            result.release());
        pending_.back().bytes += bytes;
        queued_bytes_ += bytes;
      }
      // Inside a group (a committed batch, a dispatch), more answers are
      // likely to follow at once: write when the group ends, not now.
      if (storage::FinishGroup::Open() && !broken_) {
        if (flush_deferred_) return;
        flush_deferred_ = true;
        storage::FinishGroup::Defer([this] {
          {
            absl::MutexLock lock(&mu_);
            flush_deferred_ = false;
          }
          Act(Decide());
        });
        return;
      }
      actions = DecideLocked();
    }
    Act(actions);
  }

  // True (and the caller must Dispatch) when a paused dispatch may go on.
  bool Resume() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!paused_ || broken_ || !WindowOpen(request_.ops(next_op_))) {
      return false;
    }
    paused_ = false;
    dispatching_ = true;
    return true;
  }

  Actions Decide() {
    absl::MutexLock lock(&mu_);
    return DecideLocked();
  }

  Actions DecideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions actions;
    if (!writing_ && !pending_.empty() && !broken_ && !flush_deferred_) {
      writing_ = std::move(pending_.front().message);
      writing_bytes_ = pending_.front().bytes;
      pending_.pop_front();
      actions.write = writing_.get();
    }
    actions.dispatch = Resume();
    if (!finished_ && outstanding_ == 0 && !dispatching_ && !read_pending_ &&
        !flush_deferred_ && writing_ == nullptr &&
        (broken_ || (reads_done_ && pending_.empty()))) {
      finished_ = true;
      actions.finish = true;
    }
    return actions;
  }

  void Act(const Actions& actions) {
    if (actions.write != nullptr) {
      metrics_->RecordSessionMessages(0, 1);
      StartWrite(actions.write);
    }
    if (actions.dispatch) Dispatch();
    if (actions.finish) {
      bool broken = false;
      {
        absl::MutexLock lock(&mu_);
        broken = broken_;
      }
      Finish(broken ? grpc::Status(grpc::StatusCode::CANCELLED,
                                   "the session was cancelled")
                    : grpc::Status::OK);
    }
  }

  // The client is gone: answers are dropped from now on.
  void Break() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    broken_ = true;
    for (const Outgoing& out : pending_) queued_bytes_ -= out.bytes;
    pending_.clear();
  }

  struct Outgoing {
    std::unique_ptr<v1::SessionResponse> message;
    size_t bytes = 0;
  };

  IdempotencyService* const service_;
  Metrics* const metrics_;
  const absl::Time stream_deadline_;
  const int heavy_window_;
  Access access_;
  bool opened_ = false;
  // Written by the reads; read by the one dispatching thread.
  v1::SessionRequest request_;

  absl::Mutex mu_;
  int next_op_ ABSL_GUARDED_BY(mu_) = 0;
  bool dispatching_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // A write waits for the end of the current FinishGroup (see Answer); the
  // stream is not finished before it has run.
  bool flush_deferred_ ABSL_GUARDED_BY(mu_) = false;
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;  // Started, not answered.
  int running_ ABSL_GUARDED_BY(mu_) = 0;      // Of those, in the window.
  int heavy_ ABSL_GUARDED_BY(mu_) = 0;        // Of those, Begin or Lookup.
  absl::flat_hash_set<Op*> waiting_ ABSL_GUARDED_BY(mu_);
  std::deque<Outgoing> pending_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<v1::SessionResponse> writing_ ABSL_GUARDED_BY(mu_);
  size_t writing_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // Pending and writing.
};

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>*
IdempotencyService::Session(grpc::CallbackServerContext* context) {
  return new SessionReactor(this, context);
}

}  // namespace idem::server
