// The key state machine: every transition of an idempotency key, as pure
// functions of (stored record, command, now). Stores read the record, call
// one Decide* function and, when it says so, write `write` atomically with
// respect to other operations on the same key. Nothing here does I/O, reads a
// clock or keeps state, so the rules are tested exhaustively on their own and
// shared by every backend.
//
// States of a stored record: IN_PROGRESS (a lease holder is, or was, working),
// COMPLETED (a result is stored), RELEASED (given up; free to acquire). A
// missing record and one past its `expires_at_us` are both "absent".
#ifndef IDEM_STORAGE_KEY_STATE_MACHINE_H_
#define IDEM_STORAGE_KEY_STATE_MACHINE_H_

#include <cstdint>
#include <optional>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "storage/record.pb.h"
#include "storage/store.h"

namespace idem::storage {

// What an operation decided: the reply, and the record to store if the
// operation changes it. When `reply` is an error, `write` is empty.
template <typename Reply>
struct Decision {
  absl::StatusOr<Reply> reply;
  std::optional<Record> write;
};

// The reply of operations that return nothing but their status.
struct NoReply {};

// True when `record` is past its retention and must be treated as absent.
bool IsExpired(const Record& record, absl::Time now);

// `current` is the stored record or nullptr. `next_token` is called only when
// a new lease is issued and must return a token greater than any issued
// before for this key, including after its record expired or was deleted
// (RocksDB's grow across all keys; Redis Cluster's per slot).
Decision<BeginResult> DecideBegin(const Record* current,
                                  const BeginCommand& command, absl::Time now,
                                  absl::FunctionRef<uint64_t()> next_token);
Decision<CompleteResult> DecideComplete(const Record* current,
                                        const CompleteCommand& command,
                                        absl::Time now);
Decision<NoReply> DecideRelease(const Record* current,
                                const ReleaseCommand& command, absl::Time now);
Decision<absl::Time> DecideExtend(const Record* current,
                                  const ExtendCommand& command, absl::Time now);
Decision<NoReply> DecideCheckpoint(const Record* current,
                                   const CheckpointCommand& command,
                                   absl::Time now);
// Operator action: frees an in-progress key under a new token.
Decision<uint64_t> DecideForceRelease(const Record* current, absl::Time now,
                                      absl::FunctionRef<uint64_t()> next_token);
KeySnapshot Snapshot(const Record* current, absl::Time now);

// Conversions between the stored and the public form of a result.
Result FromStored(const StoredResult& stored);
StoredResult ToStored(const Result& result);

}  // namespace idem::storage

#endif  // IDEM_STORAGE_KEY_STATE_MACHINE_H_
