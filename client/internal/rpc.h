// Plumbing shared by the client classes: channel set-up, retries and
// conversions. Internal to the client library.
#ifndef IDEM_CLIENT_INTERNAL_RPC_H_
#define IDEM_CLIENT_INTERNAL_RPC_H_

#include <algorithm>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "idem/client.h"

namespace idem::client::internal {

absl::Status FromGrpc(const grpc::Status& status);
absl::Time FromProto(const google::protobuf::Timestamp& t);
void ToProto(absl::Duration d, google::protobuf::Duration* out);

// A channel to options.target with the client's defaults.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const ClientOptions& options);

// Runs calls with a fresh context per attempt, retrying UNAVAILABLE and
// DEADLINE_EXCEEDED with backoff and jitter within the retry policy.
class Retrier {
 public:
  explicit Retrier(const ClientOptions& options) : options_(options) {}

  // `extra` lengthens each attempt's deadline (a Begin's wait).
  template <typename Call>
  absl::Status Run(absl::Duration extra, Call call) {
    const RetryPolicy& retry = options_.retry;
    const absl::Time give_up = absl::Now() + retry.total_timeout + extra;
    for (int attempt = 1;; ++attempt) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(
          std::min(absl::Now() + options_.rpc_timeout + extra, give_up)));
      const grpc::Status status = call(context);
      if (status.ok()) return absl::OkStatus();
      if (!Retriable(status.error_code()) ||
          attempt >= std::max(1, retry.max_attempts)) {
        return FromGrpc(status);
      }
      const absl::Duration pause = Backoff(retry, attempt, UnitRandom());
      if (absl::Now() + pause >= give_up) return FromGrpc(status);
      absl::SleepFor(pause);
    }
  }

  // One attempt only, for calls that are not safe to repeat.
  template <typename Call>
  absl::Status Once(Call call) {
    grpc::ClientContext context;
    context.set_deadline(
        absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    return FromGrpc(call(context));
  }

  const ClientOptions& options() const { return options_; }

 private:
  static bool Retriable(grpc::StatusCode code) {
    return code == grpc::StatusCode::UNAVAILABLE ||
           code == grpc::StatusCode::DEADLINE_EXCEEDED;
  }
  double UnitRandom() {
    absl::MutexLock lock(&random_mu_);
    return absl::Uniform(random_, 0.0, 1.0);
  }

  const ClientOptions options_;
  absl::Mutex random_mu_;
  absl::BitGen random_ ABSL_GUARDED_BY(random_mu_);
};

}  // namespace idem::client::internal

#endif  // IDEM_CLIENT_INTERNAL_RPC_H_
