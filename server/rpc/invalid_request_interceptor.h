// Answers requests whose bytes are not a valid protobuf message with
// INVALID_ARGUMENT and a message, and counts them in the RPC metrics.
//
// gRPC 1.51's callback API answers such a request itself, before any
// handler runs, with UNIMPLEMENTED and an empty message
// (server_callback_handlers.h: a failed Deserialize leaves no reactor), so a
// client cannot tell "bad bytes" from "no such method" and the call is
// invisible in idem_rpc_total. No handler of ours ever answers UNIMPLEMENTED
// without a message, so on an idem.v1 method that status means exactly that
// the request failed to parse; this interceptor rewrites it on its way out.
//
//   std::vector<std::unique_ptr<
//       grpc::experimental::ServerInterceptorFactoryInterface>> creators;
//   creators.push_back(MakeInvalidRequestInterceptorFactory(&observer));
//   builder.experimental().SetInterceptorCreators(std::move(creators));
#ifndef IDEM_SERVER_RPC_INVALID_REQUEST_INTERCEPTOR_H_
#define IDEM_SERVER_RPC_INVALID_REQUEST_INTERCEPTOR_H_

#include <memory>

#include "grpcpp/support/server_interceptor.h"
#include "server/rpc/rpc_observer.h"

namespace idem::server {

// `observer` is not owned and must outlive the server.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeInvalidRequestInterceptorFactory(RpcObserver* observer);

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_INVALID_REQUEST_INTERCEPTOR_H_
