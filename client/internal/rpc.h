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

// A client's channel. After a failed call it is replaced by a new one if it
// is stuck in TRANSIENT_FAILURE: gRPC 1.51's pick_first waits about 4.5 s
// before it tries a restarted server again, a new channel connects at once.
// Channels the caller handed in are never replaced.
class ChannelHolder {
 public:
  ChannelHolder(std::shared_ptr<grpc::Channel> channel,
                const ClientOptions& options, bool replaceable)
      : options_(options),
        replaceable_(replaceable),
        channel_(std::move(channel)) {}

  std::shared_ptr<grpc::Channel> Get() const {
    absl::MutexLock lock(&mu_);
    return channel_;
  }
  void OnUnavailable();

 private:
  const ClientOptions options_;
  const bool replaceable_;
  mutable absl::Mutex mu_;
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(mu_);
  absl::Time replaced_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// Runs calls with a fresh context per attempt, retrying UNAVAILABLE and
// DEADLINE_EXCEEDED with backoff and jitter within the retry policy.
class Retrier {
 public:
  // `channels` (may be null) hears of every UNAVAILABLE attempt.
  explicit Retrier(const ClientOptions& options,
                   ChannelHolder* channels = nullptr)
      : options_(options), channels_(channels) {}

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
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
          channels_ != nullptr) {
        channels_->OnUnavailable();
      }
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
    const grpc::Status status = call(context);
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
        channels_ != nullptr) {
      channels_->OnUnavailable();
    }
    return FromGrpc(status);
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
  ChannelHolder* const channels_;
  absl::Mutex random_mu_;
  absl::BitGen random_ ABSL_GUARDED_BY(random_mu_);
};

}  // namespace idem::client::internal

#endif  // IDEM_CLIENT_INTERNAL_RPC_H_
