#include "client/internal/rpc.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "grpc/grpc.h"
#include "grpcpp/create_channel.h"

namespace idem::client::internal {

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // gRPC and Abseil share the canonical code numbers.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

void ToProto(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t nanos = absl::ToInt64Nanoseconds(d);
  out->set_seconds(nanos / 1'000'000'000);
  out->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const ClientOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("client target is empty");
  }
  grpc::ChannelArguments arguments = options.channel_arguments;
  // Reconnect quickly after a server restart (gRPC's defaults wait up to
  // 120 s). A value the caller set explicitly is kept.
  auto is_set = [&arguments](absl::string_view name) {
    // Re-read each time: SetInt may move the underlying array.
    const grpc_channel_args raw = arguments.c_channel_args();
    for (size_t i = 0; i < raw.num_args; ++i) {
      if (name == raw.args[i].key) return true;
    }
    return false;
  };
  if (!is_set(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS)) {
    arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  }
  if (!is_set(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS)) {
    arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  }
  // A connection of its own: with gRPC's shared pool a replacement channel
  // (see ChannelHolder) would get the same connection, still waiting out its
  // reconnect backoff.
  if (!is_set(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL)) {
    arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials != nullptr ? options.credentials
                                     : grpc::InsecureChannelCredentials();
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, credentials, arguments);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel to ", options.target));
  }
  return channel;
}

void ChannelHolder::OnUnavailable() {
  if (!replaceable_) return;
  absl::MutexLock lock(&mu_);
  // At most every 500 ms, so that a server that is really down does not make
  // every retry build a channel (and, for DNS targets, resolve it).
  if (absl::Now() - replaced_at_ < absl::Milliseconds(500)) return;
  if (channel_->GetState(/*try_to_connect=*/false) !=
      GRPC_CHANNEL_TRANSIENT_FAILURE) {
    return;
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> fresh = MakeChannel(options_);
  if (!fresh.ok()) return;
  channel_ = *std::move(fresh);
  replaced_at_ = absl::Now();
}

}  // namespace idem::client::internal
