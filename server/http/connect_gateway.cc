#include "server/http/connect_gateway.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "server/auth/authorizer.h"

namespace idem::server {
namespace {

namespace pb = google::protobuf;

constexpr absl::string_view kJson = "application/json";
constexpr absl::string_view kProto = "application/proto";

enum class Codec { kJson, kProto };

absl::string_view ContentType(Codec codec) {
  return codec == Codec::kJson ? kJson : kProto;
}

// "application/json; charset=utf-8" -> kJson. False for anything else.
bool ParseContentType(absl::string_view value, Codec* codec) {
  absl::string_view type =
      absl::StripAsciiWhitespace(value.substr(0, value.find(';')));
  if (absl::EqualsIgnoreCase(type, kJson)) {
    *codec = Codec::kJson;
  } else if (absl::EqualsIgnoreCase(type, kProto)) {
    *codec = Codec::kProto;
  } else {
    return false;
  }
  return true;
}

// Percent-decoding of a query value ('+' is a space). False if malformed.
bool PercentDecode(absl::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out->push_back(' ');
    } else if (in[i] == '%') {
      int value = 0;
      if (i + 2 >= in.size() ||
          !absl::SimpleHexAtoi(in.substr(i + 1, 2), &value)) {
        return false;
      }
      out->push_back(static_cast<char>(value));
      i += 2;
    } else {
      out->push_back(in[i]);
    }
  }
  return true;
}

// Unpadded or padded, standard or URL-safe base64, as the spec allows.
bool DecodeBase64(absl::string_view in, std::string* out) {
  std::string text(in);
  for (char& c : text) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  while (text.size() % 4 != 0) text.push_back('=');
  return absl::Base64Unescape(text, out);
}

std::string JsonString(absl::string_view text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          absl::StrAppend(&out, "\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out += "\"";
  return out;
}

HttpResponse Ok(Codec codec, std::string body) {
  HttpResponse response;
  response.headers = {{"Content-Type", std::string(ContentType(codec))}};
  response.body = std::move(body);
  return response;
}

// One call in flight: what the gRPC callback needs until it runs.
struct Call {
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer reply;
  const pb::MethodDescriptor* method = nullptr;
  Codec codec = Codec::kJson;
  Responder responder;
  explicit Call(Responder r) : responder(std::move(r)) {}
};

void Answer(Call& call, const grpc::Status& status) {
  if (!status.ok()) {
    call.responder.Send(
        ConnectError(status.error_code(), status.error_message()));
    return;
  }
  std::string bytes;
  {
    std::vector<grpc::Slice> slices;
    if (!call.reply.Dump(&slices).ok()) {
      call.responder.Send(
          ConnectError(grpc::StatusCode::INTERNAL, "unreadable reply"));
      return;
    }
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
  }
  if (call.codec == Codec::kProto) {
    call.responder.Send(Ok(Codec::kProto, std::move(bytes)));
    return;
  }
  std::unique_ptr<pb::Message> reply(
      pb::MessageFactory::generated_factory()
          ->GetPrototype(call.method->output_type())
          ->New());
  std::string json;
  if (!reply->ParseFromString(bytes) ||
      !pb::util::MessageToJsonString(*reply, &json).ok()) {
    call.responder.Send(ConnectError(grpc::StatusCode::INTERNAL,
                                     "the reply could not be encoded as JSON"));
    return;
  }
  json.push_back('\n');  // For curl; JSON parsers skip it.
  call.responder.Send(Ok(Codec::kJson, std::move(json)));
}

}  // namespace

bool IsLoopbackHost(absl::string_view host) {
  if (absl::StartsWith(host, "[")) {
    return absl::StartsWith(host, "[::1]");
  }
  host = host.substr(0, host.find(':'));
  return absl::EqualsIgnoreCase(host, "localhost") ||
         absl::StartsWith(host, "127.");
}

ConnectCode ConnectCodeOf(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return {"ok", 200};
    case grpc::StatusCode::CANCELLED:
      return {"canceled", 499};
    case grpc::StatusCode::UNKNOWN:
      return {"unknown", 500};
    case grpc::StatusCode::INVALID_ARGUMENT:
      return {"invalid_argument", 400};
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return {"deadline_exceeded", 504};
    case grpc::StatusCode::NOT_FOUND:
      return {"not_found", 404};
    case grpc::StatusCode::ALREADY_EXISTS:
      return {"already_exists", 409};
    case grpc::StatusCode::PERMISSION_DENIED:
      return {"permission_denied", 403};
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return {"resource_exhausted", 429};
    case grpc::StatusCode::FAILED_PRECONDITION:
      return {"failed_precondition", 400};
    case grpc::StatusCode::ABORTED:
      return {"aborted", 409};
    case grpc::StatusCode::OUT_OF_RANGE:
      return {"out_of_range", 400};
    case grpc::StatusCode::UNIMPLEMENTED:
      return {"unimplemented", 501};
    case grpc::StatusCode::INTERNAL:
      return {"internal", 500};
    case grpc::StatusCode::UNAVAILABLE:
      return {"unavailable", 503};
    case grpc::StatusCode::DATA_LOSS:
      return {"data_loss", 500};
    case grpc::StatusCode::UNAUTHENTICATED:
      return {"unauthenticated", 401};
    default:
      return {"unknown", 500};
  }
}

HttpResponse ConnectError(grpc::StatusCode code, absl::string_view message,
                          int http_status) {
  const ConnectCode connect = ConnectCodeOf(code);
  HttpResponse response;
  response.status = http_status != 0 ? http_status : connect.http_status;
  response.headers = {{"Content-Type", std::string(kJson)}};
  response.body = absl::StrCat("{\"code\":", JsonString(connect.name),
                               ",\"message\":", JsonString(message), "}\n");
  return response;
}

ConnectGateway::ConnectGateway(std::shared_ptr<grpc::Channel> channel,
                               Options options)
    : stub_(std::move(channel)), options_(std::move(options)) {
  for (const pb::ServiceDescriptor* service : options_.services) {
    for (int i = 0; i < service->method_count(); ++i) {
      const pb::MethodDescriptor* method = service->method(i);
      procedures_.push_back(
          {absl::StrCat("/", service->full_name(), "/", method->name()), method,
           method->options().idempotency_level() ==
               pb::MethodOptions::NO_SIDE_EFFECTS});
    }
  }
}

const ConnectGateway::Procedure* ConnectGateway::Find(
    absl::string_view path) const {
  for (const Procedure& procedure : procedures_) {
    if (procedure.path == path) return &procedure;
  }
  return nullptr;
}

void ConnectGateway::Handle(HttpRequest request, const Responder& responder) {
  if (request.path == "/healthz" &&
      (request.method == "GET" || request.method == "HEAD")) {
    const bool ok = options_.serving && options_.serving();
    HttpResponse response;
    response.status = ok ? 200 : 503;
    response.headers = {{"Content-Type", "text/plain"}};
    response.body = ok ? "SERVING\n" : "NOT_SERVING\n";
    responder.Send(std::move(response));
    return;
  }
  if (const std::string* host = request.Header("host");
      options_.loopback_hosts_only && host != nullptr &&
      !IsLoopbackHost(*host)) {
    responder.Send(ConnectError(
        grpc::StatusCode::PERMISSION_DENIED,
        "this port listens on loopback: requests for another Host are "
        "refused (set --http-listen to a reachable address to serve them)"));
    return;
  }
  const Procedure* procedure = Find(request.path);
  if (procedure == nullptr) {
    responder.Send(ConnectError(
        grpc::StatusCode::UNIMPLEMENTED,
        absl::StrCat("no procedure ",
                     absl::CHexEscape(request.path.substr(0, 256)),
                     ": the Connect procedures here are "
                     "/idem.v1.Idempotency/<Method> and /idem.v1.Admin/"
                     "<Method>"),
        404));
    return;
  }
  const pb::MethodDescriptor* method = procedure->method;
  if (method->client_streaming() || method->server_streaming()) {
    responder.Send(ConnectError(
        grpc::StatusCode::UNIMPLEMENTED,
        absl::StrCat(method->full_name(),
                     " is a stream: call it over gRPC (only unary calls are "
                     "served over HTTP)"),
        404));
    return;
  }
  if (const std::string* version = request.Header("connect-protocol-version");
      version != nullptr && *version != "1") {
    responder.Send(ConnectError(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("Connect-Protocol-Version must be 1, not \"",
                     absl::CHexEscape(version->substr(0, 64)), "\"")));
    return;
  }

  Codec codec = Codec::kJson;
  std::string body;
  if (request.method == "POST") {
    const std::string* type = request.Header("content-type");
    if (type == nullptr || !ParseContentType(*type, &codec)) {
      HttpResponse refused = ConnectError(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat(
              "Content-Type must be application/json or "
              "application/proto, not \"",
              type != nullptr ? absl::CHexEscape(type->substr(0, 64)) : "",
              "\""),
          415);
      refused.headers.emplace_back("Accept-Post",
                                   "application/json, application/proto");
      responder.Send(std::move(refused));
      return;
    }
    if (const std::string* encoding = request.Header("content-encoding");
        encoding != nullptr && !absl::EqualsIgnoreCase(*encoding, "identity")) {
      HttpResponse refused = ConnectError(
          grpc::StatusCode::UNIMPLEMENTED,
          absl::StrCat("Content-Encoding \"",
                       absl::CHexEscape(encoding->substr(0, 64)),
                       "\" is not supported: send the body uncompressed"));
      refused.headers.emplace_back("Accept-Encoding", "identity");
      responder.Send(std::move(refused));
      return;
    }
    body = std::move(request.body);
  } else if (request.method == "GET" && procedure->get_allowed) {
    std::string encoding, message, compression;
    bool base64 = false;
    for (absl::string_view pair : absl::StrSplit(request.query, '&')) {
      if (pair.empty()) continue;
      const size_t equals = pair.find('=');
      const absl::string_view name = pair.substr(0, equals);
      std::string value;
      if (!PercentDecode(equals == absl::string_view::npos
                             ? absl::string_view()
                             : pair.substr(equals + 1),
                         &value)) {
        responder.Send(ConnectError(grpc::StatusCode::INVALID_ARGUMENT,
                                    "malformed percent-encoding in the query"));
        return;
      }
      if (name == "encoding") {
        encoding = value;
      } else if (name == "message") {
        message = std::move(value);
      } else if (name == "base64") {
        base64 = value == "1";
      } else if (name == "compression") {
        compression = value;
      } else if (name == "connect" && value != "v1") {
        responder.Send(ConnectError(grpc::StatusCode::INVALID_ARGUMENT,
                                    "the connect query parameter must be v1"));
        return;
      }
    }
    if (!ParseContentType(absl::StrCat("application/", encoding), &codec)) {
      responder.Send(ConnectError(
          grpc::StatusCode::INVALID_ARGUMENT,
          "a GET needs encoding=json or encoding=proto in its query", 415));
      return;
    }
    if (!compression.empty() && compression != "identity") {
      responder.Send(ConnectError(grpc::StatusCode::UNIMPLEMENTED,
                                  "compressed GET messages are not supported"));
      return;
    }
    if (base64) {
      if (!DecodeBase64(message, &body)) {
        responder.Send(ConnectError(grpc::StatusCode::INVALID_ARGUMENT,
                                    "the message parameter is not base64"));
        return;
      }
    } else {
      body = std::move(message);
    }
  } else {
    HttpResponse refused =
        ConnectError(grpc::StatusCode::UNIMPLEMENTED,
                     absl::StrCat(request.method.substr(0, 16),
                                  " is not served for ", method->full_name(),
                                  procedure->get_allowed ? ": use POST or GET"
                                                         : ": use POST"),
                     405);
    refused.headers.emplace_back("Allow",
                                 procedure->get_allowed ? "GET, POST" : "POST");
    responder.Send(std::move(refused));
    return;
  }

  // Checked here against the method's schema, for an error that names it.
  std::unique_ptr<pb::Message> message(pb::MessageFactory::generated_factory()
                                           ->GetPrototype(method->input_type())
                                           ->New());
  std::string bytes;
  if (codec == Codec::kJson) {
    // An empty body is the empty message, as Connect clients send it.
    if (absl::StripAsciiWhitespace(body).empty()) body = "{}";
    if (pb::util::Status parsed =
            pb::util::JsonStringToMessage(body, message.get());
        !parsed.ok()) {
      responder.Send(ConnectError(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("the body is not a valid ",
                       method->input_type()->full_name(),
                       " in protobuf's JSON mapping: ",
                       std::string(parsed.message()).substr(0, 512))));
      return;
    }
    message->SerializeToString(&bytes);
  } else {
    if (!message->ParseFromString(body)) {
      responder.Send(
          ConnectError(grpc::StatusCode::INVALID_ARGUMENT,
                       absl::StrCat("the body is not a valid binary ",
                                    method->input_type()->full_name())));
      return;
    }
    bytes = std::move(body);
  }

  auto call = std::make_shared<Call>(responder);
  call->method = method;
  call->codec = codec;
  if (const std::string* timeout = request.Header("connect-timeout-ms");
      timeout != nullptr) {
    int64_t ms = 0;
    if (timeout->empty() || timeout->size() > 10 ||
        !std::all_of(timeout->begin(), timeout->end(),
                     [](char c) {
                       return absl::ascii_isdigit(
                           static_cast<unsigned char>(c));
                     }) ||
        !absl::SimpleAtoi(*timeout, &ms) || ms == 0) {
      responder.Send(ConnectError(
          grpc::StatusCode::INVALID_ARGUMENT,
          "Connect-Timeout-Ms must be a positive integer of at most 10 "
          "digits"));
      return;
    }
    call->context.set_deadline(std::chrono::system_clock::now() +
                               std::chrono::milliseconds(ms));
  }
  if (const std::string* authorization = request.Header("authorization");
      authorization != nullptr) {
    if (!std::all_of(authorization->begin(), authorization->end(),
                     [](char c) { return c >= 0x20 && c <= 0x7e; })) {
      responder.Send(
          ConnectError(grpc::StatusCode::UNAUTHENTICATED,
                       "the Authorization header must be printable ASCII"));
      return;
    }
    call->context.AddMetadata("authorization", *authorization);
  }
  Authorizer::Forward(options_.forwarding_secret, request.tls,
                      request.peer_certificate, request.peer, &call->context);
  grpc::Slice slice(bytes);
  call->request = grpc::ByteBuffer(&slice, 1);
  std::weak_ptr<Call> weak = call;
  responder.OnCancel([weak] {
    if (std::shared_ptr<Call> live = weak.lock()) live->context.TryCancel();
  });
  stub_.UnaryCall(
      &call->context, procedure->path, grpc::StubOptions(), &call->request,
      &call->reply,
      [call](const grpc::Status& status) { Answer(*call, status); });
}

}  // namespace idem::server
