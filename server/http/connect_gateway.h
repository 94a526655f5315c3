// The Connect protocol's unary calls (connectrpc.com/docs/protocol) over
// HTTP/1.1: POST /idem.v1.Idempotency/Begin with a JSON or binary protobuf
// body, errors as {"code": "...", "message": "..."} with the HTTP status
// the spec gives each code, GET for methods marked NO_SIDE_EFFECTS.
//
// Another door into the same server, not a second implementation: each
// request is decoded, checked against the method's schema and sent as a
// gRPC call through the server's in-process channel, so it passes the same
// interceptors, validation, limits, authorization, waiting-Begin parking,
// metrics and logs as a gRPC call; the answer comes back on a callback and
// is encoded the way the request was. Nothing blocks: a waiting Begin
// holds an HTTP connection and a parked gRPC call, no thread.
//
// Who the HTTP caller is (TLS or not, its verified client certificate, its
// bearer token) travels with the call as metadata that the Authorizer
// trusts only alongside the per-process secret (Authorizer::Forwarded).
#ifndef IDEM_SERVER_HTTP_CONNECT_GATEWAY_H_
#define IDEM_SERVER_HTTP_CONNECT_GATEWAY_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "server/http/http_server.h"

namespace idem::server {

// Whether `host` — a Host header, or a --http-listen address — names this
// machine's loopback: localhost, 127.x.x.x or [::1], with or without a
// port. The one test of both sides of loopback_hosts_only below.
bool IsLoopbackHost(absl::string_view host);

// A Connect error code ("invalid_argument") and its HTTP status.
struct ConnectCode {
  absl::string_view name;
  int http_status;
};
// The spec's table, for every gRPC status code.
ConnectCode ConnectCodeOf(grpc::StatusCode code);

// An error response: the code's status, a JSON body.
HttpResponse ConnectError(grpc::StatusCode code, absl::string_view message,
                          int http_status = 0);

class ConnectGateway {
 public:
  struct Options {
    // The services served; their unary methods are the procedures.
    std::vector<const google::protobuf::ServiceDescriptor*> services;
    // How forwarded identities are proven (Authorizer::Forwarded).
    std::string forwarding_secret;
    // For GET /healthz: the server's health as gRPC health reports it.
    std::function<bool()> serving;
    // The port listens on loopback only: requests whose Host names
    // another host are refused. A web page the developer visits could
    // otherwise reach it through DNS rebinding (its name resolving to
    // 127.0.0.1) and call the Admin service of an open server.
    bool loopback_hosts_only = false;
  };

  // `channel` is the server's in-process channel; not owned beyond the
  // shared pointer.
  ConnectGateway(std::shared_ptr<grpc::Channel> channel, Options options);

  // HttpServer::Handler: answers through `responder`, now or later.
  void Handle(HttpRequest request, const Responder& responder);

 private:
  struct Procedure {
    std::string path;  // "/idem.v1.Idempotency/Begin"
    const google::protobuf::MethodDescriptor* method;
    bool get_allowed;  // NO_SIDE_EFFECTS
  };
  const Procedure* Find(absl::string_view path) const;

  grpc::GenericStub stub_;
  const Options options_;
  std::vector<Procedure> procedures_;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_HTTP_CONNECT_GATEWAY_H_
