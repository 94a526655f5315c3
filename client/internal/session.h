// The client's side of idem.v1.Idempotency/Session: one stream shared by
// every call of a Client. Calls from many threads join the message being
// sent next (while one write is in flight, the others wait in one shared
// message, like Redis pipelining), and answers are routed back by id.
//
// A stream that ends — server restart, network loss, GOAWAY — fails every
// call still waiting with UNAVAILABLE, exactly like a lost unary reply: the
// Retrier then retries it (a Begin with the same owner) on a new stream. A
// server without Session (UNIMPLEMENTED) turns the mux off for good and the
// client uses unary RPCs. Internal to the client library.
#ifndef IDEM_CLIENT_INTERNAL_SESSION_H_
#define IDEM_CLIENT_INTERNAL_SESSION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/internal/rpc.h"
#include "grpcpp/support/status.h"
#include "idem/v1/idempotency.pb.h"

namespace idem::client::internal {

class SessionMux {
 public:
  // `channels` must outlive the mux.
  explicit SessionMux(ChannelHolder* channels);
  // Cancels the stream and waits until gRPC is done with it.
  ~SessionMux();
  SessionMux(const SessionMux&) = delete;
  SessionMux& operator=(const SessionMux&) = delete;

  // Sends `op` (its id is set here) and waits for its answer until
  // `deadline`, which the server also applies to the operation. The status
  // is the operation's, as its unary RPC would have returned it; or
  // UNAVAILABLE when the stream ended first, DEADLINE_EXCEEDED at the
  // deadline, UNIMPLEMENTED when the server has no Session (then
  // supported() is false: use the unary RPC).
  grpc::Status Call(v1::SessionOp* op, absl::Time deadline,
                    v1::SessionResult* result);

  bool supported() const { return supported_.load(); }

 private:
  class Stream;

  // The open stream, or a new one; null once Session is known unsupported.
  std::shared_ptr<Stream> Current();
  void Ended(const Stream* stream, bool unimplemented);
  void Reap(std::vector<std::shared_ptr<Stream>>* reaped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ChannelHolder* const channels_;
  std::atomic<bool> supported_{true};
  std::atomic<uint64_t> next_id_{1};
  absl::Mutex mu_;
  std::shared_ptr<Stream> stream_ ABSL_GUARDED_BY(mu_);
  // Ended, waiting for gRPC to be done with them (see Reap).
  std::vector<std::shared_ptr<Stream>> ended_ ABSL_GUARDED_BY(mu_);
};

}  // namespace idem::client::internal

#endif  // IDEM_CLIENT_INTERNAL_SESSION_H_
