// The one place where internal absl::Status becomes a gRPC status, at the
// RPC edge. The canonical codes are the same in both; the message is kept.
#ifndef IDEM_SERVER_RPC_GRPC_STATUS_H_
#define IDEM_SERVER_RPC_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace idem::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_GRPC_STATUS_H_
