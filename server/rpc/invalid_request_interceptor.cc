#include "server/rpc/invalid_request_interceptor.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.h"

namespace idem::server {
namespace {

class InvalidRequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  // `metric_name` as the services record it: "Begin", "Admin.List".
  InvalidRequestInterceptor(RpcObserver* observer, std::string metric_name,
                            std::string request_type)
      : observer_(observer),
        metric_name_(std::move(metric_name)),
        request_type_(std::move(request_type)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) final {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
          status.error_message().empty()) {
        const std::string message =
            absl::StrCat("the request is not a valid ", request_type_,
                         " message (its bytes do not parse as protobuf)");
        observer_->Answered(metric_name_, absl::Now(),
                            absl::InvalidArgumentError(message));
        methods->ModifySendStatus(
            grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message));
      }
    }
    methods->Proceed();
  }

 private:
  RpcObserver* const observer_;
  const std::string metric_name_;
  const std::string request_type_;
};

class Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(RpcObserver* observer) : observer_(observer) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) final {
    // "/idem.v1.Admin/List" -> service idem.v1.Admin, method List.
    const absl::string_view name =
        info->method() != nullptr ? info->method() : "";
    const size_t slash = name.rfind('/');
    if (!absl::StartsWith(name, "/idem.v1.") || slash == 0 ||
        slash == absl::string_view::npos) {
      return nullptr;  // Health, reflection: not ours to describe.
    }
    const google::protobuf::ServiceDescriptor* service =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
            std::string(name.substr(1, slash - 1)));
    const google::protobuf::MethodDescriptor* method =
        service == nullptr
            ? nullptr
            : service->FindMethodByName(std::string(name.substr(slash + 1)));
    if (method == nullptr) return nullptr;  // An unknown method.
    // As the services name them in the metrics: "Begin", "Admin.List".
    std::string metric_name =
        service->name() == "Idempotency"
            ? method->name()
            : absl::StrCat(service->name(), ".", method->name());
    return new InvalidRequestInterceptor(observer_, std::move(metric_name),
                                         method->input_type()->full_name());
  }

 private:
  RpcObserver* const observer_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeInvalidRequestInterceptorFactory(RpcObserver* observer) {
  return std::make_unique<Factory>(observer);
}

}  // namespace idem::server
