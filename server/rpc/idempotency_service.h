// The idem.v1.Idempotency gRPC service on the callback API. It validates each
// request, runs it against the Store and maps the outcome to the reply; it
// sees nothing of storage beyond the Store interface.
//
// A Begin with `wait` that finds the key in progress is parked in a
// WaitQueue (no thread per parked call) and answered when the key is
// completed or released, the holder's lease lapses, or the wait ends.
//
// Each operation is one Do* function that answers through a callback; the
// unary RPCs and the Session stream (session.cc) are two doors onto them.
#ifndef IDEM_SERVER_RPC_IDEMPOTENCY_SERVICE_H_
#define IDEM_SERVER_RPC_IDEMPOTENCY_SERVICE_H_

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "server/auth/authorizer.h"
#include "server/rpc/limits.h"
#include "server/rpc/request_validation.h"
#include "server/rpc/rpc_observer.h"
#include "server/rpc/wait_queue.h"
#include "storage/store.h"

namespace idem::server {

class IdempotencyService final : public v1::Idempotency::CallbackService {
 public:
  // Nothing is owned; all must outlive the service. Shut `waits` down
  // before the gRPC server so that parked calls end promptly.
  // Writes use the store's asynchronous operations: gRPC's threads never
  // wait for the disk; calls are finished from the store's writer thread.
  // Every call is authorized by `authorizer` (per namespace) first.
  IdempotencyService(storage::Store* store, WaitQueue* waits,
                     RpcObserver* observer, const Authorizer* authorizer,
                     const Limits& limits);

  grpc::ServerUnaryReactor* Begin(grpc::CallbackServerContext* context,
                                  const v1::BeginRequest* request,
                                  v1::BeginResponse* response) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const v1::CompleteRequest* request,
                                     v1::CompleteResponse* response) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse* response) override;
  grpc::ServerUnaryReactor* Extend(grpc::CallbackServerContext* context,
                                   const v1::ExtendRequest* request,
                                   v1::ExtendResponse* response) override;
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const v1::LookupRequest* request,
                                   v1::LookupResponse* response) override;
  grpc::ServerUnaryReactor* Checkpoint(
      grpc::CallbackServerContext* context,
      const v1::CheckpointRequest* request,
      v1::CheckpointResponse* response) override;
  grpc::ServerUnaryReactor* BeginBatch(
      grpc::CallbackServerContext* context,
      const v1::BeginBatchRequest* request,
      v1::BeginBatchResponse* response) override;
  grpc::ServerUnaryReactor* CompleteBatch(
      grpc::CallbackServerContext* context,
      const v1::CompleteBatchRequest* request,
      v1::CompleteBatchResponse* response) override;
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Session(
      grpc::CallbackServerContext* context) override;

 private:
  class BeginWaiter;
  class WaitingBeginReactor;
  class BeginBatchCall;
  class SessionReactor;

  // A parked Begin answers this long before its deadline, so that the
  // client gets IN_PROGRESS rather than DEADLINE_EXCEEDED.
  static constexpr absl::Duration kWaitMargin = absl::Milliseconds(50);

  // How an operation ends: its status and, when OK, the name of its outcome
  // (a Begin outcome, or "OK"). Called exactly once, from any thread.
  using OpDone = std::function<void(const absl::Status& status,
                                    absl::string_view outcome)>;

  // A Begin that may park, shared with whoever may cancel its wait.
  struct ParkState {
    absl::Mutex mu;
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    WaitQueue::Handle waiter ABSL_GUARDED_BY(mu);
    // Optional: called (under `mu`, so before any wake-up can answer) when
    // the Begin parks for the first time; what it returns (if anything)
    // runs once `mu` is released.
    std::function<std::function<void()>()> on_first_park;
  };
  // Ends a parked wait now (the Begin answers CANCELLED). Harmless once the
  // Begin was answered.
  void CancelWait(const std::shared_ptr<ParkState>& park);

  // The operations. Each fills `response` (when it has one) before `done`
  // reports OK. Commands carry their deadline; `begin` with a wait parks
  // until `wait_until` at the latest, cancellable through `park`.
  void DoBegin(ValidBegin begin, absl::Time wait_until,
               v1::BeginResponse* response, std::shared_ptr<ParkState> park,
               OpDone done);
  void DoComplete(const storage::CompleteCommand& command,
                  v1::CompleteResponse* response, OpDone done);
  void DoRelease(const storage::ReleaseCommand& command, OpDone done);
  void DoExtend(const storage::ExtendCommand& command,
                v1::ExtendResponse* response, OpDone done);
  void DoLookup(const storage::KeyId& id, v1::LookupResponse* response,
                const OpDone& done);
  void DoCheckpoint(const storage::CheckpointCommand& command, OpDone done);

  // OK when the caller is authenticated and may use `name_space`.
  absl::Status Authorize(const grpc::CallbackServerContext& context,
                         absl::string_view name_space) const;
  // Store::BeginAsync, with takeovers counted and logged.
  void RunBegin(const storage::BeginCommand& command,
                storage::Done<storage::BeginResult> done);

  storage::Store* const store_;
  WaitQueue* const waits_;
  RpcObserver* const observer_;
  const Authorizer* const authorizer_;
  const Limits limits_;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_IDEMPOTENCY_SERVICE_H_
