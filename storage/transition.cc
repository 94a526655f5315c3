#include "storage/transition.h"

#include <optional>
#include <type_traits>
#include <utility>

#include "storage/key_state_machine.h"

namespace idem::storage {
namespace {

// Whether an answer given without a write rests on the stored record.
template <typename Reply>
bool RestsOnRecord(const Reply&) {
  return true;  // A repeated Complete, Release, Checkpoint or Extend.
}
bool RestsOnRecord(const BeginResult& reply) {
  // A replay does; in progress and mismatch promise nothing.
  return reply.outcome == BeginOutcome::kCompleted;
}

// A Transition made of one of key_state_machine.h's Decide* functions
// (`decide`, bound to its command) and the caller's `done`.
template <typename Reply, typename DecideFn, typename DoneFn>
class StateMachineTransition final : public Transition {
 public:
  StateMachineTransition(KeyId id, absl::Time deadline, size_t payload_bytes,
                         PeekHint hint, DecideFn decide, DoneFn done)
      : Transition(std::move(id), deadline, payload_bytes, hint),
        decide_(std::move(decide)),
        done_(std::move(done)) {}

  absl::StatusOr<Change> Decide(
      const Record* current, absl::Time now,
      absl::FunctionRef<uint64_t()> next_token) override {
    decision_.emplace(decide_(current, now, next_token));
    if (!decision_->reply.ok()) return decision_->reply.status();
    Change change;
    if (decision_->write.has_value()) {
      change.kind = Change::Kind::kPut;
      change.record = *std::move(decision_->write);
    } else {
      change.answer_rests_on_record = RestsOnRecord(*decision_->reply);
    }
    return change;
  }

  void Finish(const absl::Status& failure) override {
    if (!failure.ok()) {
      Deliver(failure);
    } else if (!decision_.has_value()) {
      Deliver(absl::InternalError("the store finished an undecided change"));
    } else {
      Deliver(std::move(decision_->reply));
    }
  }

 private:
  void Deliver(absl::StatusOr<Reply> reply) {
    if constexpr (std::is_same_v<Reply, NoReply>) {
      done_(reply.status());
    } else {
      done_(std::move(reply));
    }
  }

  DecideFn decide_;
  DoneFn done_;
  std::optional<Decision<Reply>> decision_;
};

template <typename Reply, typename DecideFn, typename DoneFn>
std::unique_ptr<Transition> Make(const KeyId& id, absl::Time deadline,
                                 size_t payload_bytes, DecideFn decide,
                                 DoneFn done, PeekHint hint = {}) {
  return std::make_unique<StateMachineTransition<Reply, DecideFn, DoneFn>>(
      id, deadline, payload_bytes, hint, std::move(decide), std::move(done));
}

size_t ResultBytes(const Result& result) {
  size_t bytes = result.body.size();
  for (const auto& [name, value] : result.metadata) {
    bytes += name.size() + value.size();
  }
  return bytes;
}

class DeleteKey final : public Transition {
 public:
  DeleteKey(const KeyId& id, Done<bool> done)
      : Transition(id, absl::InfiniteFuture(), 0), done_(std::move(done)) {}

  absl::StatusOr<Change> Decide(const Record* current, absl::Time now,
                                absl::FunctionRef<uint64_t()>) override {
    existed_ = Snapshot(current, now).state != KeyState::kAbsent;
    Change change;
    if (current != nullptr) {
      change.kind = Change::Kind::kDelete;  // Expired leftovers go too.
    } else {
      change.answer_rests_on_record = true;  // "There was none."
    }
    return change;
  }

  void Finish(const absl::Status& failure) override {
    if (!failure.ok()) {
      done_(failure);
    } else {
      done_(existed_);
    }
  }

 private:
  Done<bool> done_;
  bool existed_ = false;
};

}  // namespace

std::unique_ptr<Transition> BeginTransition(const BeginCommand& command,
                                            Done<BeginResult> done) {
  return Make<BeginResult>(
      command.id, command.deadline,
      command.fingerprint.size() + command.owner.size(),
      [command](const Record* current, absl::Time now,
                absl::FunctionRef<uint64_t()> next_token) {
        return DecideBegin(current, command, now, next_token);
      },
      std::move(done), command.hint);
}

std::unique_ptr<Transition> CompleteTransition(const CompleteCommand& command,
                                               Done<CompleteResult> done) {
  return Make<CompleteResult>(
      command.id, command.deadline, ResultBytes(command.result),
      [command](const Record* current, absl::Time now,
                absl::FunctionRef<uint64_t()>) {
        return DecideComplete(current, command, now);
      },
      std::move(done));
}

std::unique_ptr<Transition> ReleaseTransition(const ReleaseCommand& command,
                                              DoneStatus done) {
  return Make<NoReply>(
      command.id, command.deadline, 0,
      [command](const Record* current, absl::Time now,
                absl::FunctionRef<uint64_t()>) {
        return DecideRelease(current, command, now);
      },
      std::move(done));
}

std::unique_ptr<Transition> ExtendTransition(const ExtendCommand& command,
                                             Done<absl::Time> done) {
  return Make<absl::Time>(
      command.id, command.deadline, 0,
      [command](const Record* current, absl::Time now,
                absl::FunctionRef<uint64_t()>) {
        return DecideExtend(current, command, now);
      },
      std::move(done));
}

std::unique_ptr<Transition> CheckpointTransition(
    const CheckpointCommand& command, DoneStatus done) {
  return Make<NoReply>(
      command.id, command.deadline, command.checkpoint.size(),
      [command](const Record* current, absl::Time now,
                absl::FunctionRef<uint64_t()>) {
        return DecideCheckpoint(current, command, now);
      },
      std::move(done));
}

std::unique_ptr<Transition> DeleteTransition(const KeyId& id, Done<bool> done) {
  return std::make_unique<DeleteKey>(id, std::move(done));
}

std::unique_ptr<Transition> ForceReleaseTransition(const KeyId& id,
                                                   Done<uint64_t> done) {
  // An operator's action: no caller deadline.
  return Make<uint64_t>(
      id, absl::InfiniteFuture(), 0,
      [](const Record* current, absl::Time now,
         absl::FunctionRef<uint64_t()> next_token) {
        return DecideForceRelease(current, now, next_token);
      },
      std::move(done));
}

void TransitionStore::BeginAsync(const BeginCommand& command,
                                 Done<BeginResult> done) {
  Apply(BeginTransition(command, std::move(done)));
}

void TransitionStore::CompleteAsync(const CompleteCommand& command,
                                    Done<CompleteResult> done) {
  Apply(CompleteTransition(command, std::move(done)));
}

void TransitionStore::ReleaseAsync(const ReleaseCommand& command,
                                   DoneStatus done) {
  Apply(ReleaseTransition(command, std::move(done)));
}

void TransitionStore::ExtendAsync(const ExtendCommand& command,
                                  Done<absl::Time> done) {
  Apply(ExtendTransition(command, std::move(done)));
}

void TransitionStore::CheckpointAsync(const CheckpointCommand& command,
                                      DoneStatus done) {
  Apply(CheckpointTransition(command, std::move(done)));
}

void TransitionStore::DeleteAsync(const KeyId& id, Done<bool> done) {
  Apply(DeleteTransition(id, std::move(done)));
}

void TransitionStore::ForceReleaseAsync(const KeyId& id, Done<uint64_t> done) {
  Apply(ForceReleaseTransition(id, std::move(done)));
}

}  // namespace idem::storage
