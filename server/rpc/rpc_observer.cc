#include "server/rpc/rpc_observer.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/ops/log.h"
#include "server/rpc/grpc_status.h"

namespace idem::server {

absl::string_view OutcomeName(storage::BeginOutcome outcome) {
  switch (outcome) {
    case storage::BeginOutcome::kAcquired:
      return "ACQUIRED";
    case storage::BeginOutcome::kCompleted:
      return "COMPLETED";
    case storage::BeginOutcome::kInProgress:
      return "IN_PROGRESS";
    case storage::BeginOutcome::kMismatch:
      return "MISMATCH";
  }
  return "UNKNOWN";
}

void RpcObserver::Answered(absl::string_view method, absl::Time start,
                           const absl::Status& status,
                           absl::string_view outcome) {
  const std::string code = absl::StatusCodeToString(status.code());
  metrics_->RecordRpc(method, status.ok() ? outcome : code,
                      absl::Now() - start);
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
      Log(LogLevel::kError, "storage_error",
          {{"method", std::string(method)},
           {"code", code},
           {"error", std::string(status.message())}});
      break;
    default:
      break;
  }
}

void RpcObserver::Finish(grpc::ServerUnaryReactor* reactor,
                         absl::string_view method, absl::Time start,
                         const absl::Status& status,
                         absl::string_view outcome) {
  Answered(method, start, status, outcome);
  reactor->Finish(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* RpcObserver::Answer(
    grpc::CallbackServerContext* context, absl::string_view method,
    absl::Time start, const absl::Status& status, absl::string_view outcome) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Finish(reactor, method, start, status, outcome);
  return reactor;
}

void RpcObserver::TookOver(const storage::KeyId& id, uint64_t token,
                           uint32_t attempt) {
  metrics_->RecordTakeover();
  Log(LogLevel::kInfo, "lease_takeover",
      {{"ns", id.name_space},
       {"key", id.key},
       {"token", absl::StrCat(token)},
       {"attempt", absl::StrCat(attempt)}});
}

}  // namespace idem::server
