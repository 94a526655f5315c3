// The one shape of a unary RPC handler: admit the caller, validate the
// request into a command, run the command, answer exactly once — the call
// counted, timed and, for storage errors, logged by the RpcObserver. A
// handler is then its declaration and what it does with the command:
//
//   return Serve(context, observer_, "Release",
//       [&] { return Authorize(*context, request->namespace_()); },
//       [&] { return ValidateRelease(*request); },
//       [this](const storage::ReleaseCommand& command, UnaryCall call) {
//         store_->ReleaseAsync(command, [call](absl::Status s) {
//           call.Answer(s);
//         });
//       });
//
// Admission returns absl::Status, or absl::StatusOr<T> whose value (who the
// caller is) is passed to `run` before the command. A command with a
// `deadline` member gets the caller's deadline. Begin with `wait`, which
// parks calls in its own reactor, and the batches, which answer per entry,
// keep their own shape.
#ifndef IDEM_SERVER_RPC_UNARY_CALL_H_
#define IDEM_SERVER_RPC_UNARY_CALL_H_

#include <chrono>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "server/rpc/rpc_observer.h"

namespace idem::server {

// The caller's deadline as absl::Time (InfiniteFuture without one).
inline absl::Time CallDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

// A call being answered. Cheap to copy into store callbacks; Answer() must
// be called exactly once, by whichever thread finishes the work.
class UnaryCall {
 public:
  UnaryCall(grpc::ServerUnaryReactor* reactor, RpcObserver* observer,
            absl::string_view method, absl::Time start)
      : reactor_(reactor),
        observer_(observer),
        method_(method),
        start_(start) {}

  void Answer(const absl::Status& status,
              absl::string_view outcome = "OK") const {
    observer_->Finish(reactor_, method_, start_, status, outcome);
  }

 private:
  grpc::ServerUnaryReactor* reactor_;
  RpcObserver* observer_;
  absl::string_view method_;  // A literal: outlives every call.
  absl::Time start_;
};

template <typename T>
struct IsStatusOr : std::false_type {};
template <typename T>
struct IsStatusOr<absl::StatusOr<T>> : std::true_type {};

// `method` must be a string literal (it names the call in metrics and logs).
template <typename Admit, typename Validate, typename Run>
grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* context,
                                RpcObserver* observer, absl::string_view method,
                                Admit admit, Validate validate, Run run) {
  const absl::Time start = absl::Now();
  auto admitted = admit();
  absl::Status admission;
  if constexpr (IsStatusOr<decltype(admitted)>::value) {
    admission = admitted.status();
  } else {
    admission = admitted;
  }
  if (!admission.ok()) {
    return observer->Answer(context, method, start, admission);
  }
  auto command = validate();
  if (!command.ok()) {
    return observer->Answer(context, method, start, command.status());
  }
  if constexpr (requires { command->deadline = absl::Time(); }) {
    command->deadline = CallDeadline(*context);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const UnaryCall call(reactor, observer, method, start);
  if constexpr (IsStatusOr<decltype(admitted)>::value) {
    run(*std::move(admitted), *std::move(command), call);
  } else {
    run(*std::move(command), call);
  }
  return reactor;
}

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_UNARY_CALL_H_
