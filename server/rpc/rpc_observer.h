// What the services report about every RPC they answer: a count and a
// latency in Metrics, a takeover counter, and a log line for failures that
// an operator must see (storage errors).
#ifndef IDEM_SERVER_RPC_RPC_OBSERVER_H_
#define IDEM_SERVER_RPC_RPC_OBSERVER_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "server/ops/metrics.h"
#include "storage/store.h"

namespace idem::server {

class RpcObserver {
 public:
  // `metrics` is not owned and must outlive the observer.
  explicit RpcObserver(Metrics* metrics) : metrics_(metrics) {}

  // `outcome` names a successful call's result (a Begin outcome, or "OK").
  void Answered(absl::string_view method, absl::Time start,
                const absl::Status& status, absl::string_view outcome = "OK");
  void TookOver(const storage::KeyId& id, uint64_t token, uint32_t attempt);
  Metrics* metrics() const { return metrics_; }

  // Records a call and finishes `reactor` (a DefaultReactor) with `status`.
  void Finish(grpc::ServerUnaryReactor* reactor, absl::string_view method,
              absl::Time start, const absl::Status& status,
              absl::string_view outcome = "OK");
  // Records a unary call and finishes it with `status`.
  grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                   absl::string_view method, absl::Time start,
                                   const absl::Status& status,
                                   absl::string_view outcome = "OK");

 private:
  Metrics* const metrics_;
};

absl::string_view OutcomeName(storage::BeginOutcome outcome);

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_RPC_OBSERVER_H_
