#include "storage/store.h"

#include <utility>

#include "absl/synchronization/notification.h"

namespace idem::storage {
namespace {

// Runs an asynchronous operation and waits for its outcome.
template <typename T, typename Start>
absl::StatusOr<T> Wait(Start start) {
  absl::Notification done;
  absl::StatusOr<T> outcome = absl::UnknownError("not run");
  start([&](absl::StatusOr<T> result) {
    outcome = std::move(result);
    done.Notify();
  });
  done.WaitForNotification();
  return outcome;
}

absl::Status WaitStatus(const std::function<void(DoneStatus)>& start) {
  absl::Notification done;
  absl::Status outcome = absl::UnknownError("not run");
  start([&](absl::Status result) {
    outcome = std::move(result);
    done.Notify();
  });
  done.WaitForNotification();
  return outcome;
}

}  // namespace

absl::StatusOr<BeginResult> Store::Begin(const BeginCommand& command) {
  return Wait<BeginResult>(
      [&](Done<BeginResult> d) { BeginAsync(command, std::move(d)); });
}

absl::StatusOr<CompleteResult> Store::Complete(const CompleteCommand& command) {
  return Wait<CompleteResult>(
      [&](Done<CompleteResult> d) { CompleteAsync(command, std::move(d)); });
}

absl::Status Store::Release(const ReleaseCommand& command) {
  return WaitStatus([&](DoneStatus d) { ReleaseAsync(command, std::move(d)); });
}

absl::StatusOr<absl::Time> Store::Extend(const ExtendCommand& command) {
  return Wait<absl::Time>(
      [&](Done<absl::Time> d) { ExtendAsync(command, std::move(d)); });
}

absl::Status Store::Checkpoint(const CheckpointCommand& command) {
  return WaitStatus(
      [&](DoneStatus d) { CheckpointAsync(command, std::move(d)); });
}

absl::StatusOr<bool> Store::Delete(const KeyId& id) {
  return Wait<bool>([&](Done<bool> d) { DeleteAsync(id, std::move(d)); });
}

absl::StatusOr<uint64_t> Store::ForceRelease(const KeyId& id) {
  return Wait<uint64_t>(
      [&](Done<uint64_t> d) { ForceReleaseAsync(id, std::move(d)); });
}

}  // namespace idem::storage
