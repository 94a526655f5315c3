#include "server/rpc/request_validation.h"

#include <openssl/sha.h>

#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/duration.pb.h"

namespace idem::server {
namespace {

absl::Status CheckPrintable(absl::string_view field, absl::string_view value,
                            size_t max_bytes) {
  if (value.empty() || value.size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be 1 to ", max_bytes,
                     " printable ASCII characters; got ", value.size()));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " must be printable ASCII (0x20-0x7E); byte ", i,
                       " is 0x", absl::Hex(c, absl::kZeroPad2)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<storage::KeyId> ValidateKeyId(absl::string_view name_space,
                                             absl::string_view key) {
  if (absl::Status s =
          CheckPrintable("namespace", name_space, Limits::kMaxNamespaceBytes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckPrintable("key", key, Limits::kMaxKeyBytes);
      !s.ok()) {
    return s;
  }
  return storage::KeyId{std::string(name_space), std::string(key)};
}

// A duration field: `fallback` when unset, else within [min, max].
absl::StatusOr<absl::Duration> ValidateDuration(
    absl::string_view field, bool present,
    const google::protobuf::Duration& value, absl::Duration fallback,
    absl::Duration min, absl::Duration max) {
  if (!present) return fallback;
  const bool well_formed = value.nanos() > -1'000'000'000 &&
                           value.nanos() < 1'000'000'000 &&
                           !(value.seconds() > 0 && value.nanos() < 0) &&
                           !(value.seconds() < 0 && value.nanos() > 0);
  const absl::Duration d =
      absl::Seconds(value.seconds()) + absl::Nanoseconds(value.nanos());
  if (!well_formed || d < min || d > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " must be between ", absl::FormatDuration(min), " and ",
        absl::FormatDuration(max), "; got ",
        well_formed ? absl::FormatDuration(d)
                    : absl::StrCat("a malformed duration (", value.seconds(),
                                   "s, ", value.nanos(), "ns)")));
  }
  return d;
}

absl::Status ValidateToken(uint64_t token) {
  if (token == 0) {
    return absl::InvalidArgumentError(
        "token is required: pass the lease token returned by Begin");
  }
  return absl::OkStatus();
}

absl::StatusOr<storage::Result> ValidateResult(const v1::Result& result,
                                               const Limits& limits) {
  if (result.body().size() > limits.max_body_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("result.body is ", result.body().size(),
                     " bytes; the limit is ", limits.max_body_bytes));
  }
  if (static_cast<size_t>(result.metadata_size()) >
      limits.max_metadata_entries) {
    return absl::ResourceExhaustedError(
        absl::StrCat("result.metadata has ", result.metadata_size(),
                     " entries; the limit is ", limits.max_metadata_entries));
  }
  storage::Result out;
  out.code = result.code();
  out.body = result.body();
  for (const auto& [key, value] : result.metadata()) {
    if (key.size() > limits.max_metadata_key_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("result.metadata key of ", key.size(),
                       " bytes; the limit is ", limits.max_metadata_key_bytes));
    }
    if (value.size() > limits.max_metadata_value_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("result.metadata value of key \"", key.substr(0, 64),
                       "\" is ", value.size(), " bytes; the limit is ",
                       limits.max_metadata_value_bytes));
    }
    out.metadata.emplace(key, value);
  }
  return out;
}

}  // namespace

std::string Sha256(absl::string_view request) {
  std::string digest(SHA256_DIGEST_LENGTH, '\0');
  SHA256(reinterpret_cast<const unsigned char*>(request.data()), request.size(),
         reinterpret_cast<unsigned char*>(digest.data()));
  return digest;
}

absl::StatusOr<ValidBegin> ValidateBegin(const v1::BeginRequest& request,
                                         const Limits& limits) {
  absl::StatusOr<storage::KeyId> id =
      ValidateKeyId(request.namespace_(), request.key());
  if (!id.ok()) return id.status();
  if (!request.fingerprint().empty() && !request.request().empty()) {
    return absl::InvalidArgumentError(
        "set either fingerprint or request, not both");
  }
  if (request.fingerprint().size() > Limits::kMaxFingerprintBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("fingerprint is ", request.fingerprint().size(),
                     " bytes; the limit is ", Limits::kMaxFingerprintBytes,
                     " (send a hash, or send the request in `request`)"));
  }
  if (request.owner().size() > Limits::kMaxOwnerBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("owner is ", request.owner().size(),
                     " bytes; the limit is ", Limits::kMaxOwnerBytes));
  }
  absl::StatusOr<absl::Duration> lease = ValidateDuration(
      "lease", request.has_lease(), request.lease(), limits.default_lease,
      Limits::kMinLease, limits.max_lease);
  if (!lease.ok()) return lease.status();
  absl::StatusOr<absl::Duration> retention = ValidateDuration(
      "retention", request.has_retention(), request.retention(),
      limits.default_retention, Limits::kMinRetention, limits.max_retention);
  if (!retention.ok()) return retention.status();
  absl::StatusOr<absl::Duration> wait = ValidateDuration(
      "wait", request.has_wait(), request.wait(), absl::ZeroDuration(),
      absl::ZeroDuration(), limits.max_wait);
  if (!wait.ok()) return wait.status();

  ValidBegin valid;
  valid.command.id = *std::move(id);
  valid.command.fingerprint = request.request().empty()
                                  ? request.fingerprint()
                                  : Sha256(request.request());
  valid.command.owner = request.owner();
  valid.command.lease = *lease;
  valid.command.retention = *retention;
  valid.wait = *wait;
  return valid;
}

absl::StatusOr<storage::CompleteCommand> ValidateComplete(
    const v1::CompleteRequest& request, const Limits& limits) {
  absl::StatusOr<storage::KeyId> id =
      ValidateKeyId(request.namespace_(), request.key());
  if (!id.ok()) return id.status();
  if (absl::Status s = ValidateToken(request.token()); !s.ok()) return s;
  absl::StatusOr<storage::Result> result =
      ValidateResult(request.result(), limits);
  if (!result.ok()) return result.status();
  storage::CompleteCommand command;
  command.id = *std::move(id);
  command.token = request.token();
  command.result = *std::move(result);
  if (request.has_retention()) {
    absl::StatusOr<absl::Duration> retention = ValidateDuration(
        "retention", true, request.retention(), limits.default_retention,
        Limits::kMinRetention, limits.max_retention);
    if (!retention.ok()) return retention.status();
    command.retention = *retention;
  }
  return command;
}

absl::StatusOr<storage::ReleaseCommand> ValidateRelease(
    const v1::ReleaseRequest& request) {
  absl::StatusOr<storage::KeyId> id =
      ValidateKeyId(request.namespace_(), request.key());
  if (!id.ok()) return id.status();
  if (absl::Status s = ValidateToken(request.token()); !s.ok()) return s;
  return storage::ReleaseCommand{*std::move(id), request.token()};
}

absl::StatusOr<storage::ExtendCommand> ValidateExtend(
    const v1::ExtendRequest& request, const Limits& limits) {
  absl::StatusOr<storage::KeyId> id =
      ValidateKeyId(request.namespace_(), request.key());
  if (!id.ok()) return id.status();
  if (absl::Status s = ValidateToken(request.token()); !s.ok()) return s;
  absl::StatusOr<absl::Duration> lease = ValidateDuration(
      "lease", request.has_lease(), request.lease(), limits.default_lease,
      Limits::kMinLease, limits.max_lease);
  if (!lease.ok()) return lease.status();
  return storage::ExtendCommand{*std::move(id), request.token(), *lease};
}

absl::StatusOr<storage::CheckpointCommand> ValidateCheckpoint(
    const v1::CheckpointRequest& request) {
  absl::StatusOr<storage::KeyId> id =
      ValidateKeyId(request.namespace_(), request.key());
  if (!id.ok()) return id.status();
  if (absl::Status s = ValidateToken(request.token()); !s.ok()) return s;
  if (request.checkpoint().size() > Limits::kMaxCheckpointBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("checkpoint is ", request.checkpoint().size(),
                     " bytes; the limit is ", Limits::kMaxCheckpointBytes));
  }
  return storage::CheckpointCommand{*std::move(id), request.token(),
                                    request.checkpoint()};
}

absl::StatusOr<absl::Duration> ValidateSessionTimeout(const v1::SessionOp& op) {
  return ValidateDuration("timeout", op.has_timeout(), op.timeout(),
                          absl::InfiniteDuration(), absl::Milliseconds(1),
                          absl::Hours(24));
}

absl::StatusOr<AdminAction> ValidateAdminAction(absl::string_view name_space,
                                                absl::string_view key,
                                                absl::string_view reason) {
  absl::StatusOr<storage::KeyId> id = ValidateKeyId(name_space, key);
  if (!id.ok()) return id.status();
  if (reason.empty() || reason.size() > Limits::kMaxReasonBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("reason is required (1 to ", Limits::kMaxReasonBytes,
                     " bytes): say why, it is logged"));
  }
  return AdminAction{*std::move(id), std::string(reason)};
}

absl::StatusOr<storage::ListQuery> ValidateList(
    const v1::ListRequest& request) {
  if (absl::Status s = CheckPrintable("namespace", request.namespace_(),
                                      Limits::kMaxNamespaceBytes);
      !s.ok()) {
    return s;
  }
  storage::ListQuery query;
  query.name_space = request.namespace_();
  switch (request.state()) {
    case v1::LookupResponse::STATE_UNSPECIFIED:
      query.state = storage::KeyState::kAbsent;  // Any state.
      break;
    case v1::LookupResponse::STATE_IN_PROGRESS:
      query.state = storage::KeyState::kInProgress;
      break;
    case v1::LookupResponse::STATE_COMPLETED:
      query.state = storage::KeyState::kCompleted;
      break;
    default:
      return absl::InvalidArgumentError(
          "state must be STATE_IN_PROGRESS, STATE_COMPLETED or unset; absent "
          "keys are not stored");
  }
  query.lease_lapsed_only = request.lease_lapsed();
  if (request.page_size() < 0 || request.page_size() > Limits::kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_size must be between 1 and ", Limits::kMaxPageSize, " (0 means ",
        Limits::kDefaultPageSize, "); got ", request.page_size()));
  }
  query.page_size =
      request.page_size() == 0 ? Limits::kDefaultPageSize : request.page_size();
  if (!request.page_token().empty()) {
    if (absl::Status s = CheckPrintable("page_token", request.page_token(),
                                        Limits::kMaxKeyBytes);
        !s.ok()) {
      return s;
    }
  }
  query.page_token = request.page_token();
  return query;
}

absl::StatusOr<std::string> ValidateStats(const v1::StatsRequest& request) {
  if (!request.namespace_().empty()) {
    if (absl::Status s = CheckPrintable("namespace", request.namespace_(),
                                        Limits::kMaxNamespaceBytes);
        !s.ok()) {
      return s;
    }
  }
  return request.namespace_();
}

absl::StatusOr<storage::KeyId> ValidateLookup(
    const v1::LookupRequest& request) {
  return ValidateKeyId(request.namespace_(), request.key());
}

}  // namespace idem::server
