#include "server/rpc/proto_conversions.h"

namespace idem::server {

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t nanos = absl::ToUnixNanos(t);
  int64_t seconds = nanos / 1'000'000'000;
  int64_t rest = nanos % 1'000'000'000;
  if (rest < 0) {
    rest += 1'000'000'000;
    --seconds;
  }
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(rest));
}

void SetResult(const storage::Result& result, absl::Time completed_at,
               v1::Result* out) {
  out->set_code(result.code);
  out->set_body(result.body);
  out->mutable_metadata()->insert(result.metadata.begin(),
                                  result.metadata.end());
  SetTimestamp(completed_at, out->mutable_completed_at());
}

void FillBegin(const storage::BeginResult& begun, v1::BeginResponse* out) {
  switch (begun.outcome) {
    case storage::BeginOutcome::kAcquired:
      out->set_outcome(v1::BeginResponse::OUTCOME_ACQUIRED);
      out->mutable_lease()->set_token(begun.token);
      SetTimestamp(begun.lease_expires_at,
                   out->mutable_lease()->mutable_expires_at());
      out->set_attempt(begun.attempt);
      out->set_checkpoint(begun.checkpoint);
      break;
    case storage::BeginOutcome::kCompleted:
      out->set_outcome(v1::BeginResponse::OUTCOME_COMPLETED);
      SetResult(begun.result, begun.completed_at, out->mutable_result());
      SetTimestamp(begun.expires_at, out->mutable_expires_at());
      out->set_attempt(begun.attempt);
      break;
    case storage::BeginOutcome::kInProgress:
      out->set_outcome(v1::BeginResponse::OUTCOME_IN_PROGRESS);
      SetTimestamp(begun.lease_expires_at,
                   out->mutable_lease()->mutable_expires_at());
      break;
    case storage::BeginOutcome::kMismatch:
      out->set_outcome(v1::BeginResponse::OUTCOME_MISMATCH);
      break;
  }
}

void FillLookup(const storage::KeySnapshot& seen, v1::LookupResponse* out) {
  switch (seen.state) {
    case storage::KeyState::kAbsent:
      out->set_state(v1::LookupResponse::STATE_ABSENT);
      break;
    case storage::KeyState::kInProgress:
      out->set_state(v1::LookupResponse::STATE_IN_PROGRESS);
      SetTimestamp(seen.lease_expires_at,
                   out->mutable_lease()->mutable_expires_at());
      break;
    case storage::KeyState::kCompleted:
      out->set_state(v1::LookupResponse::STATE_COMPLETED);
      SetResult(seen.result, seen.completed_at, out->mutable_result());
      break;
  }
  if (seen.attempt > 0) {
    out->set_fingerprint(seen.fingerprint);
    SetTimestamp(seen.created_at, out->mutable_created_at());
    out->set_attempt(seen.attempt);
    out->set_checkpoint(seen.checkpoint);
  }
  if (seen.state != storage::KeyState::kAbsent) {
    SetTimestamp(seen.expires_at, out->mutable_expires_at());
  }
}

}  // namespace idem::server
