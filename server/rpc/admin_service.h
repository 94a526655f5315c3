// The idem.v1.Admin gRPC service: operator actions on keys (Delete,
// ForceRelease, List, Stats). Every change is logged with its reason.
#ifndef IDEM_SERVER_RPC_ADMIN_SERVICE_H_
#define IDEM_SERVER_RPC_ADMIN_SERVICE_H_

#include <string>

#include "absl/status/statusor.h"
#include "idem/v1/admin.grpc.pb.h"
#include "server/auth/authorizer.h"
#include "server/rpc/blocking_executor.h"
#include "server/rpc/rpc_observer.h"
#include "server/rpc/wait_queue.h"
#include "storage/store.h"

namespace idem::server {

class AdminService final : public v1::Admin::CallbackService {
 public:
  // Nothing is owned; all must outlive the service.
  // Writes use the store's asynchronous operations; scans (List, Stats)
  // run on `executor`: gRPC's threads wait for neither.
  // Only callers whose policy grants `admin` may call it (`authorizer`).
  AdminService(storage::Store* store, WaitQueue* waits,
               BlockingExecutor* executor, RpcObserver* observer,
               const Authorizer* authorizer);

  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* context,
                                   const v1::DeleteRequest* request,
                                   v1::DeleteResponse* response) override;
  grpc::ServerUnaryReactor* ForceRelease(
      grpc::CallbackServerContext* context,
      const v1::ForceReleaseRequest* request,
      v1::ForceReleaseResponse* response) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const v1::ListRequest* request,
                                 v1::ListResponse* response) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context,
                                  const v1::StatsRequest* request,
                                  v1::StatsResponse* response) override;

 private:
  // The caller's principal names ("" on an open server), or why it may not
  // call the Admin service.
  absl::StatusOr<std::string> Admit(
      const grpc::CallbackServerContext& context) const;

  storage::Store* const store_;
  WaitQueue* const waits_;
  BlockingExecutor* const executor_;
  RpcObserver* const observer_;
  const Authorizer* const authorizer_;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_ADMIN_SERVICE_H_
