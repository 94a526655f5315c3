// The transition layer: every change to a key, as one object a store can
// apply without knowing which change it is. A store provides only its
// primitives — read the key's record, write it back atomically (a batch, a
// compare-and-set script) — and drives each Transition through them:
//
//   for (;;) {
//     read the record (nullptr: absent) and the store's clock
//     absl::StatusOr<Change> change = t->Decide(current, now, next_token);
//     if (!change.ok()) break;                 // refused: nothing to write
//     write *change atomically with respect to the read, or read again
//   }
//   t->Finish(failure);                        // once durable, exactly once
//
// Decide may run more than once (a store that lost a compare-and-set race
// decides again on the fresh read); the last call's answer is the one
// Finish delivers. The decisions themselves are key_state_machine.h's.
//
// TransitionStore implements the Store's change operations by building the
// matching Transition and handing it to the store's Apply(), so that a
// backend writes no per-operation adapter of its own.
#ifndef IDEM_STORAGE_TRANSITION_H_
#define IDEM_STORAGE_TRANSITION_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "storage/record.pb.h"
#include "storage/store.h"

namespace idem::storage {

// What a decided transition does to the key's record.
struct Change {
  enum class Kind { kNone, kPut, kDelete };
  Kind kind = Kind::kNone;
  // kPut: the record to store.
  Record record;
  // kNone: the answer rests on the stored record (a replay, a repeated
  // Complete or Release), so a store that replicates asynchronously must
  // know the record is replicated before it answers. Refusals (in
  // progress, mismatch) promise nothing and need no confirmation.
  bool answer_rests_on_record = false;
};

class Transition {
 public:
  virtual ~Transition() = default;
  Transition(const Transition&) = delete;
  Transition& operator=(const Transition&) = delete;

  const KeyId& id() const { return id_; }
  // The caller's deadline: a store that waits on a network gives up then.
  absl::Time deadline() const { return deadline_; }
  // Bytes the change carries (result, fingerprint, checkpoint), for queue
  // bounds.
  size_t payload_bytes() const { return payload_bytes_; }
  // What a peek learnt of the key before a Begin (see PeekHint); the
  // default for every other change.
  const PeekHint& hint() const { return hint_; }

  // Decides on `current` (nullptr: no record) at the store's `now`. An
  // error is the caller's answer (a lost lease, a different result): the
  // store writes nothing and calls Finish. `next_token` is called only when
  // a lease or a fence is issued; it must return a token greater than any
  // issued before for this key.
  virtual absl::StatusOr<Change> Decide(
      const Record* current, absl::Time now,
      absl::FunctionRef<uint64_t()> next_token) = 0;

  // Delivers the outcome to the caller, exactly once: `failure` if the
  // store could not apply the change (nothing decided is then promised),
  // otherwise the last decision's answer.
  virtual void Finish(const absl::Status& failure) = 0;

 protected:
  Transition(KeyId id, absl::Time deadline, size_t payload_bytes,
             PeekHint hint = {})
      : id_(std::move(id)),
        deadline_(deadline),
        payload_bytes_(payload_bytes),
        hint_(hint) {}

 private:
  KeyId id_;
  absl::Time deadline_;
  size_t payload_bytes_;
  PeekHint hint_;
};

// One Transition per change operation of the Store interface.
std::unique_ptr<Transition> BeginTransition(const BeginCommand& command,
                                            Done<BeginResult> done);
std::unique_ptr<Transition> CompleteTransition(const CompleteCommand& command,
                                               Done<CompleteResult> done);
std::unique_ptr<Transition> ReleaseTransition(const ReleaseCommand& command,
                                              DoneStatus done);
std::unique_ptr<Transition> ExtendTransition(const ExtendCommand& command,
                                             Done<absl::Time> done);
std::unique_ptr<Transition> CheckpointTransition(
    const CheckpointCommand& command, DoneStatus done);
// Deletes any record of the key, expired ones included; reports whether a
// live one existed.
std::unique_ptr<Transition> DeleteTransition(const KeyId& id, Done<bool> done);
std::unique_ptr<Transition> ForceReleaseTransition(const KeyId& id,
                                                   Done<uint64_t> done);

// A Store whose changes are Transitions: a backend implements Apply() and
// the reads, and inherits the seven change operations.
class TransitionStore : public Store {
 public:
  void BeginAsync(const BeginCommand& command, Done<BeginResult> done) override;
  void CompleteAsync(const CompleteCommand& command,
                     Done<CompleteResult> done) override;
  void ReleaseAsync(const ReleaseCommand& command, DoneStatus done) override;
  void ExtendAsync(const ExtendCommand& command,
                   Done<absl::Time> done) override;
  void CheckpointAsync(const CheckpointCommand& command,
                       DoneStatus done) override;
  void DeleteAsync(const KeyId& id, Done<bool> done) override;
  void ForceReleaseAsync(const KeyId& id, Done<uint64_t> done) override;

 protected:
  // Applies `transition` as the file comment describes and calls its
  // Finish exactly once, on a thread of the store, after the change is
  // durable (or with the reason it is not: overload, a storage failure).
  virtual void Apply(std::unique_ptr<Transition> transition) = 0;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_TRANSITION_H_
