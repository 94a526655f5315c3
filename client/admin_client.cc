#include "idem/admin_client.h"

#include <utility>

#include "client/internal/rpc.h"
#include "idem/v1/admin.grpc.pb.h"

namespace idem::client {

class AdminClient::Impl {
 public:
  // The client made the channel (Connect), so it may replace it.
  Impl(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
      : channels(std::move(channel), options, /*replaceable=*/true),
        retrier(options, &channels) {}

  std::unique_ptr<v1::Admin::Stub> stub() const {
    return v1::Admin::NewStub(channels.Get());
  }

  internal::ChannelHolder channels;
  internal::Retrier retrier;
};

absl::StatusOr<std::unique_ptr<AdminClient>> AdminClient::Connect(
    const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      internal::MakeChannel(options);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<AdminClient>(
      new AdminClient(std::make_unique<Impl>(*std::move(channel), options)));
}

AdminClient::AdminClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AdminClient::~AdminClient() = default;

absl::StatusOr<bool> AdminClient::Delete(absl::string_view name_space,
                                         absl::string_view key,
                                         absl::string_view reason) {
  v1::DeleteRequest request;
  request.set_namespace_(std::string(name_space));
  request.set_key(std::string(key));
  request.set_reason(std::string(reason));
  v1::DeleteResponse response;
  absl::Status status = impl_->retrier.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->stub()->Delete(&context, request, &response);
      });
  if (!status.ok()) return status;
  return response.existed();
}

absl::StatusOr<uint64_t> AdminClient::ForceRelease(absl::string_view name_space,
                                                   absl::string_view key,
                                                   absl::string_view reason) {
  v1::ForceReleaseRequest request;
  request.set_namespace_(std::string(name_space));
  request.set_key(std::string(key));
  request.set_reason(std::string(reason));
  v1::ForceReleaseResponse response;
  absl::Status status = impl_->retrier.Once([&](grpc::ClientContext& context) {
    return impl_->stub()->ForceRelease(&context, request, &response);
  });
  if (!status.ok()) return status;
  return response.fencing_token();
}

absl::StatusOr<KeyPage> AdminClient::List(absl::string_view name_space,
                                          const ListOptions& options) {
  v1::ListRequest request;
  request.set_namespace_(std::string(name_space));
  if (options.state == KeyState::kInProgress) {
    request.set_state(v1::LookupResponse::STATE_IN_PROGRESS);
  } else if (options.state == KeyState::kCompleted) {
    request.set_state(v1::LookupResponse::STATE_COMPLETED);
  } else if (options.state == KeyState::kAbsent) {
    request.set_state(v1::LookupResponse::STATE_ABSENT);  // Refused.
  }
  request.set_lease_lapsed(options.lease_lapsed);
  request.set_page_size(options.page_size);
  request.set_page_token(options.page_token);
  v1::ListResponse response;
  absl::Status status = impl_->retrier.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->stub()->List(&context, request, &response);
      });
  if (!status.ok()) return status;
  KeyPage page;
  for (const v1::KeySummary& k : response.keys()) {
    KeySummary summary;
    summary.key = k.key();
    summary.state = k.state() == v1::LookupResponse::STATE_IN_PROGRESS
                        ? KeyState::kInProgress
                        : KeyState::kCompleted;
    if (k.has_lease_expires_at()) {
      summary.lease_expires_at = internal::FromProto(k.lease_expires_at());
    }
    summary.lease_lapsed = k.lease_lapsed();
    if (k.has_created_at()) {
      summary.created_at = internal::FromProto(k.created_at());
    }
    if (k.has_expires_at()) {
      summary.expires_at = internal::FromProto(k.expires_at());
    }
    summary.attempt = k.attempt();
    summary.result_code = k.result_code();
    page.keys.push_back(std::move(summary));
  }
  page.next_page_token = response.next_page_token();
  return page;
}

absl::StatusOr<StoreReport> AdminClient::Stats(absl::string_view name_space) {
  v1::StatsRequest request;
  request.set_namespace_(std::string(name_space));
  v1::StatsResponse response;
  absl::Status status = impl_->retrier.Run(
      absl::ZeroDuration(), [&](grpc::ClientContext& context) {
        return impl_->stub()->Stats(&context, request, &response);
      });
  if (!status.ok()) return status;
  StoreReport report;
  for (const v1::NamespaceStats& n : response.namespaces()) {
    report.namespaces.push_back(NamespaceCounts{
        n.namespace_(), n.in_progress(), n.lease_lapsed(), n.completed()});
  }
  report.estimated_keys = response.estimated_keys();
  report.disk_bytes = response.disk_bytes();
  report.expired_dropped = response.expired_dropped();
  if (response.has_expired_backlog()) {
    report.expired_backlog = response.expired_backlog();
  }
  return report;
}

}  // namespace idem::client
