#include "storage/key_state_machine.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace idem::storage {
namespace {

absl::Time FromMicros(int64_t us) { return absl::FromUnixMicros(us); }
int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }

// The stored record if it is still live, else nullptr: reads treat an
// expired record as absent even before compaction drops it.
const Record* Live(const Record* current, absl::Time now) {
  if (current == nullptr || IsExpired(*current, now)) return nullptr;
  return current;
}

bool LeaseValid(const Record& record, absl::Time now) {
  return now < FromMicros(record.lease_expires_at_us());
}

// An in-progress record is kept for its retention past the lease, so that a
// holder whose lease lapsed may still complete if nobody took over.
void SetLease(Record& record, absl::Time lease_expires_at) {
  record.set_lease_expires_at_us(ToMicros(lease_expires_at));
  record.set_expires_at_us(
      ToMicros(lease_expires_at + absl::Microseconds(record.retention_us())));
}

absl::Status LeaseLost(const Record* live, uint64_t token) {
  if (live == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease lost: no lease is held on this key (it was never begun, or "
        "its record expired); token ",
        token, " is not valid"));
  }
  // Tokens for a key only grow: one above the key's newest was never
  // issued for it (a typo, or a token of another key).
  if (token > live->token()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token ", token,
        " was never issued for this key; pass the token Begin returned"));
  }
  if (token == live->force_released_token()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease lost: an operator force-released the key while token ", token,
        " held it (Admin.ForceRelease; the server's admin_force_release log "
        "line names who and why); Begin the key again"));
  }
  if (live->state() == Record::STATE_COMPLETED) {
    if (live->token() == token) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the key is already completed under this token (", token,
          "): the work succeeded and its result is stored; no lease is left "
          "to extend or checkpoint"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "lease lost: the key was completed by another attempt; token ", token,
        " is stale"));
  }
  if (live->state() == Record::STATE_RELEASED && live->token() == token) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease lost: token ", token, " was released; Begin the key again"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("lease lost: another attempt took the key over; token ",
                   token, " is stale"));
}

bool Holds(const Record* live, uint64_t token) {
  return live != nullptr && live->state() == Record::STATE_IN_PROGRESS &&
         live->token() == token;
}

BeginResult Acquired(const Record& record) {
  BeginResult result;
  result.outcome = BeginOutcome::kAcquired;
  result.token = record.token();
  result.lease_expires_at = FromMicros(record.lease_expires_at_us());
  result.attempt = record.attempt();
  result.checkpoint = record.checkpoint();
  return result;
}

}  // namespace

bool IsExpired(const Record& record, absl::Time now) {
  return now >= FromMicros(record.expires_at_us());
}

Decision<BeginResult> DecideBegin(const Record* current,
                                  const BeginCommand& command, absl::Time now,
                                  absl::FunctionRef<uint64_t()> next_token) {
  const Record* live = Live(current, now);

  // Absent, expired or released: the key is free, whatever the fingerprint.
  if (live == nullptr || live->state() == Record::STATE_RELEASED) {
    Record next;
    next.set_state(Record::STATE_IN_PROGRESS);
    next.set_fingerprint(command.fingerprint);
    next.set_token(next_token());
    next.set_owner(command.owner);
    next.set_created_at_us(live != nullptr ? live->created_at_us()
                                           : ToMicros(now));
    next.set_retention_us(absl::ToInt64Microseconds(command.retention));
    next.set_attempt(live != nullptr ? live->attempt() + 1 : 1);
    if (live != nullptr) {
      next.set_force_released_token(live->force_released_token());
    }
    // Work that was released half-way resumes from its checkpoint, but only
    // for the same request.
    if (live != nullptr && live->fingerprint() == command.fingerprint) {
      next.set_checkpoint(live->checkpoint());
    }
    SetLease(next, now + command.lease);
    return {Acquired(next), next};
  }

  if (live->fingerprint() != command.fingerprint) {
    BeginResult mismatch;
    mismatch.outcome = BeginOutcome::kMismatch;
    return {mismatch, std::nullopt};
  }

  if (live->state() == Record::STATE_COMPLETED) {
    BeginResult completed;
    completed.outcome = BeginOutcome::kCompleted;
    completed.result = FromStored(live->result());
    completed.completed_at = FromMicros(live->completed_at_us());
    completed.expires_at = FromMicros(live->expires_at_us());
    completed.attempt = live->attempt();
    return {completed, std::nullopt};
  }

  // In progress. The same owner asking again (a retry after a lost reply)
  // gets its own lease back, refreshed but never shortened.
  if (!command.owner.empty() && command.owner == live->owner()) {
    Record next = *live;
    next.set_retention_us(absl::ToInt64Microseconds(command.retention));
    SetLease(next, std::max(FromMicros(live->lease_expires_at_us()),
                            now + command.lease));
    return {Acquired(next), next};
  }

  if (LeaseValid(*live, now)) {
    BeginResult in_progress;
    in_progress.outcome = BeginOutcome::kInProgress;
    in_progress.lease_expires_at = FromMicros(live->lease_expires_at_us());
    in_progress.lease_left = in_progress.lease_expires_at - now;
    return {in_progress, std::nullopt};
  }

  // The holder's lease lapsed (it crashed or stalled): take over with a new,
  // higher token, so that the old holder's Complete is refused.
  Record next = *live;
  next.set_token(next_token());
  next.set_owner(command.owner);
  next.set_retention_us(absl::ToInt64Microseconds(command.retention));
  next.set_attempt(live->attempt() + 1);
  SetLease(next, now + command.lease);
  BeginResult taken = Acquired(next);
  taken.took_over = true;
  return {taken, next};
}

Decision<CompleteResult> DecideComplete(const Record* current,
                                        const CompleteCommand& command,
                                        absl::Time now) {
  const Record* live = Live(current, now);
  if (live != nullptr && live->state() == Record::STATE_COMPLETED &&
      live->token() == command.token) {
    // A retried Complete: fine if it carries the same result.
    if (FromStored(live->result()) != command.result) {
      return {absl::AlreadyExistsError(absl::StrCat(
                  "a different result is already stored for this key under "
                  "token ",
                  command.token, "; the stored result stays")),
              std::nullopt};
    }
    return {CompleteResult{FromMicros(live->completed_at_us()),
                           FromMicros(live->expires_at_us())},
            std::nullopt};
  }
  // A lapsed lease may still complete while its token is the newest.
  if (!Holds(live, command.token)) {
    return {LeaseLost(live, command.token), std::nullopt};
  }
  Record next = *live;
  next.set_state(Record::STATE_COMPLETED);
  *next.mutable_result() = ToStored(command.result);
  next.set_completed_at_us(ToMicros(now));
  if (command.retention.has_value()) {
    next.set_retention_us(absl::ToInt64Microseconds(*command.retention));
  }
  next.set_expires_at_us(
      ToMicros(now + absl::Microseconds(next.retention_us())));
  // Replies carry what is stored (microseconds), so replays match exactly.
  return {CompleteResult{FromMicros(next.completed_at_us()),
                         FromMicros(next.expires_at_us())},
          next};
}

Decision<NoReply> DecideRelease(const Record* current,
                                const ReleaseCommand& command, absl::Time now) {
  const Record* live = Live(current, now);
  if (live != nullptr && live->state() == Record::STATE_RELEASED &&
      live->token() == command.token) {
    return {NoReply{}, std::nullopt};  // A retried Release.
  }
  if (live != nullptr && live->state() == Record::STATE_COMPLETED &&
      live->token() == command.token) {
    return {absl::FailedPreconditionError(
                "the key is already completed under this token; a stored "
                "result cannot be released"),
            std::nullopt};
  }
  if (!Holds(live, command.token)) {
    return {LeaseLost(live, command.token), std::nullopt};
  }
  Record next = *live;
  next.set_state(Record::STATE_RELEASED);
  next.set_lease_expires_at_us(ToMicros(now));
  next.set_expires_at_us(
      ToMicros(now + absl::Microseconds(next.retention_us())));
  return {NoReply{}, next};
}

Decision<absl::Time> DecideExtend(const Record* current,
                                  const ExtendCommand& command,
                                  absl::Time now) {
  const Record* live = Live(current, now);
  if (!Holds(live, command.token)) {
    return {LeaseLost(live, command.token), std::nullopt};
  }
  Record next = *live;
  SetLease(next, now + command.lease);
  return {FromMicros(next.lease_expires_at_us()), next};
}

Decision<NoReply> DecideCheckpoint(const Record* current,
                                   const CheckpointCommand& command,
                                   absl::Time now) {
  const Record* live = Live(current, now);
  if (!Holds(live, command.token)) {
    return {LeaseLost(live, command.token), std::nullopt};
  }
  Record next = *live;
  next.set_checkpoint(command.checkpoint);
  return {NoReply{}, next};
}

Decision<uint64_t> DecideForceRelease(
    const Record* current, absl::Time now,
    absl::FunctionRef<uint64_t()> next_token) {
  const Record* live = Live(current, now);
  if (live == nullptr || live->state() != Record::STATE_IN_PROGRESS) {
    return {absl::FailedPreconditionError(
                "the key is not in progress; only in-progress keys can be "
                "force-released"),
            std::nullopt};
  }
  Record next = *live;
  next.set_state(Record::STATE_RELEASED);
  next.set_force_released_token(live->token());
  next.set_token(next_token());  // Fences out the holder.
  next.set_owner("");
  next.set_lease_expires_at_us(ToMicros(now));
  next.set_expires_at_us(
      ToMicros(now + absl::Microseconds(next.retention_us())));
  return {next.token(), next};
}

KeySnapshot Snapshot(const Record* current, absl::Time now) {
  KeySnapshot snapshot;
  const Record* live = Live(current, now);
  if (live == nullptr) return snapshot;
  snapshot.fingerprint = live->fingerprint();
  snapshot.created_at = FromMicros(live->created_at_us());
  snapshot.attempt = live->attempt();
  snapshot.checkpoint = live->checkpoint();
  switch (live->state()) {
    case Record::STATE_IN_PROGRESS:
      snapshot.state = KeyState::kInProgress;
      snapshot.lease_expires_at = FromMicros(live->lease_expires_at_us());
      snapshot.lease_lapsed = snapshot.lease_expires_at <= now;
      snapshot.expires_at = FromMicros(live->expires_at_us());
      break;
    case Record::STATE_COMPLETED:
      snapshot.state = KeyState::kCompleted;
      snapshot.result = FromStored(live->result());
      snapshot.completed_at = FromMicros(live->completed_at_us());
      snapshot.expires_at = FromMicros(live->expires_at_us());
      break;
    default:  // Released: free, but the history (attempts) is kept.
      snapshot.state = KeyState::kAbsent;
      break;
  }
  return snapshot;
}

Result FromStored(const StoredResult& stored) {
  Result result;
  result.code = stored.code();
  result.body = stored.body();
  result.metadata.insert(stored.metadata().begin(), stored.metadata().end());
  return result;
}

StoredResult ToStored(const Result& result) {
  StoredResult stored;
  stored.set_code(result.code);
  stored.set_body(result.body);
  stored.mutable_metadata()->insert(result.metadata.begin(),
                                    result.metadata.end());
  return stored;
}

}  // namespace idem::storage
