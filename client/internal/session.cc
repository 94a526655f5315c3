#include "client/internal/session.h"

#include <deque>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/client_callback.h"
#include "idem/v1/idempotency.grpc.pb.h"

namespace idem::client::internal {
namespace {

// Operations share a message up to this size (one larger goes alone).
constexpr size_t kMessageBytes = size_t{1} << 20;

// A call waiting for its answer (on the caller's stack).
struct Waiter {
  v1::SessionResult* result = nullptr;
  grpc::Status status;
  absl::Notification done;
};

// What the calls still waiting get when the stream ends with `status`.
grpc::Status EndedStatus(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return status;
    default:
      // OK, CANCELLED, UNAVAILABLE, INTERNAL...: the operation may or may
      // not have happened, as when a unary reply is lost.
      return grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          absl::StrCat("the session stream ended before the answer came (",
                       status.error_message().empty()
                           ? std::string("no message")
                           : status.error_message(),
                       "); retry"));
  }
}

}  // namespace

class SessionMux::Stream final
    : public grpc::ClientBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  Stream(SessionMux* mux, std::shared_ptr<grpc::Channel> channel)
      : mux_(mux), stub_(v1::Idempotency::NewStub(std::move(channel))) {}

  void Start() {
    stub_->async()->Session(&context_, this);
    StartRead(&response_);
    // Held until the reads end: writes may start from any caller's thread
    // until then (see Send), and OnDone must wait for them.
    AddHold();
    StartCall();
  }

  // False when the stream has ended: use a new one.
  bool Send(const v1::SessionOp* op, Waiter* waiter) {
    const size_t bytes = op->ByteSizeLong();
    v1::SessionRequest* write = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return false;
      waiters_[op->id()] = waiter;
      if (pending_.empty() || pending_bytes_ + bytes > kMessageBytes) {
        pending_.push_back(std::make_unique<v1::SessionRequest>());
        pending_bytes_ = 0;
      }
      *pending_.back()->add_ops() = *op;  // Kept by the caller for retries.
      pending_bytes_ += bytes;
      write = NextWriteLocked();
      // ended_ is false, so the reads' hold is still there: this one keeps
      // OnDone from running before StartWrite.
      if (write != nullptr) AddHold();
    }
    if (write != nullptr) {
      StartWrite(write);
      RemoveHold();
    }
    return true;
  }

  // The caller gave up on `id`. True if it was still unanswered (its
  // answer, if it comes, is dropped); false if the answer is being
  // delivered right now.
  bool Abandon(uint64_t id, absl::Time sent_at) {
    bool silent = false;
    {
      absl::MutexLock lock(&mu_);
      if (waiters_.erase(id) == 0) return false;
      // Nothing heard since the operation went out: the connection may be
      // dead without the transport knowing yet. Start over.
      silent = !ended_ && last_read_ < sent_at;
    }
    if (silent) context_.TryCancel();
    return true;
  }

  void Cancel() { context_.TryCancel(); }
  // True once gRPC is done with the stream: it may be destroyed.
  bool finished() const { return finished_.load(std::memory_order_acquire); }

  void OnWriteDone(bool ok) override {
    v1::SessionRequest* write = nullptr;
    {
      absl::MutexLock lock(&mu_);
      writing_.reset();
      if (!ok) return;  // The stream is ending: OnDone follows.
      write = NextWriteLocked();
    }
    if (write != nullptr) StartWrite(write);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // The stream is ending.
      {
        absl::MutexLock lock(&mu_);
        ended_ = true;
      }
      RemoveHold();  // OnDone follows once writes in progress are done.
      return;
    }
    std::vector<Waiter*> answered;
    {
      absl::MutexLock lock(&mu_);
      last_read_ = absl::Now();
      for (v1::SessionResult& result : *response_.mutable_results()) {
        auto it = waiters_.find(result.id());
        if (it == waiters_.end()) continue;  // Abandoned.
        Waiter* waiter = it->second;
        waiters_.erase(it);
        waiter->result->Swap(&result);
        const v1::BatchStatus& status = waiter->result->status();
        waiter->status =
            status.code() == 0
                ? grpc::Status::OK
                : grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                               status.message());
        answered.push_back(waiter);
      }
    }
    for (Waiter* waiter : answered) waiter->done.Notify();
    response_.Clear();
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    absl::flat_hash_map<uint64_t, Waiter*> waiters;
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
      waiters.swap(waiters_);
      pending_.clear();
    }
    mux_->Ended(this, status.error_code() == grpc::StatusCode::UNIMPLEMENTED);
    const grpc::Status ended = EndedStatus(status);
    for (auto& [id, waiter] : waiters) {
      waiter->status = ended;
      waiter->done.Notify();
    }
    // The last touch: a caller's thread may destroy the stream from here on
    // (never this thread: see SessionMux::Reap).
    finished_.store(true, std::memory_order_release);
  }

 private:
  v1::SessionRequest* NextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ != nullptr || pending_.empty()) return nullptr;
    writing_ = std::move(pending_.front());
    pending_.pop_front();
    if (pending_.empty()) pending_bytes_ = 0;
    return writing_.get();
  }

  SessionMux* const mux_;
  const std::unique_ptr<v1::Idempotency::Stub> stub_;
  grpc::ClientContext context_;
  v1::SessionResponse response_;  // Touched by the reads only.
  std::atomic<bool> finished_{false};

  absl::Mutex mu_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<uint64_t, Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<v1::SessionRequest>> pending_ ABSL_GUARDED_BY(mu_);
  size_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // Of pending_.back().
  std::unique_ptr<v1::SessionRequest> writing_ ABSL_GUARDED_BY(mu_);
  absl::Time last_read_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

SessionMux::SessionMux(ChannelHolder* channels) : channels_(channels) {}

SessionMux::~SessionMux() {
  std::vector<std::shared_ptr<Stream>> streams;
  {
    absl::MutexLock lock(&mu_);
    if (stream_ != nullptr) streams.push_back(std::move(stream_));
    for (auto& ended : ended_) streams.push_back(std::move(ended));
    ended_.clear();
  }
  for (const auto& stream : streams) stream->Cancel();
  for (const auto& stream : streams) {
    while (!stream->finished()) absl::SleepFor(absl::Milliseconds(1));
  }
}

std::shared_ptr<SessionMux::Stream> SessionMux::Current() {
  std::vector<std::shared_ptr<Stream>> reaped;
  std::shared_ptr<Stream> current;
  {
    absl::MutexLock lock(&mu_);
    if (!supported_.load()) return nullptr;
    if (stream_ == nullptr) {
      stream_ = std::make_shared<Stream>(this, channels_->Get());
      stream_->Start();
    }
    current = stream_;
    Reap(&reaped);
  }
  return current;  // `reaped` is destroyed here, on the caller's thread.
}

// Streams that ended are destroyed by a caller's thread, never by gRPC's
// callback thread that ended them: the stream may hold the last reference
// to a channel the client has replaced, and a channel destroyed on a gRPC
// callback thread can join that thread itself (grpc/grpc#32584) and crash.
void SessionMux::Reap(std::vector<std::shared_ptr<Stream>>* reaped) {
  for (auto it = ended_.begin(); it != ended_.end();) {
    if ((*it)->finished()) {
      reaped->push_back(std::move(*it));
      it = ended_.erase(it);
    } else {
      ++it;
    }
  }
}

void SessionMux::Ended(const Stream* stream, bool unimplemented) {
  absl::MutexLock lock(&mu_);
  if (unimplemented) supported_ = false;
  // The destructor may have taken the stream already.
  if (stream_.get() == stream) ended_.push_back(std::move(stream_));
}

grpc::Status SessionMux::Call(v1::SessionOp* op, absl::Time deadline,
                              v1::SessionResult* result) {
  const absl::Time now = absl::Now();
  if (deadline <= now) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        "the deadline passed before the call was sent");
  }
  if (deadline != absl::InfiniteFuture()) {
    const absl::Duration timeout =
        std::max(deadline - now, absl::Milliseconds(1));
    const int64_t ms = absl::ToInt64Milliseconds(timeout);
    op->mutable_timeout()->set_seconds(ms / 1000);
    op->mutable_timeout()->set_nanos(static_cast<int32_t>(ms % 1000) *
                                     1'000'000);
  }
  const uint64_t id = next_id_.fetch_add(1);
  op->set_id(id);
  std::shared_ptr<Stream> stream = Current();
  if (stream == nullptr) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "the server has no Session RPC");
  }
  Waiter waiter;
  waiter.result = result;
  if (!stream->Send(op, &waiter)) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the session stream ended; retry");
  }
  if (!waiter.done.WaitForNotificationWithDeadline(deadline)) {
    if (stream->Abandon(id, now)) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "no answer from the server before the deadline");
    }
    waiter.done.WaitForNotification();  // Being answered right now.
  }
  return waiter.status;
}

}  // namespace idem::client::internal
