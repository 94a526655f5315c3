// Parks Begin calls that found their key in progress, without a thread per
// call: one worker thread serves every parked call.
//
// A parked call is woken exactly once, with the reason:
//  - kKeyChanged: Notify() was called for its key (a Complete or Release) or
//                 NotifyAll() for every key, or
//    the key changed between the caller's read and its Park();
//  - kRecheck:    its recheck time came (the holder's lease lapses, or the
//    wait ends);
//  - kCancelled:  Cancel() was called (the client went away);
//  - kShutdown:   the server is stopping.
// Wake callbacks run on the worker thread, never under the queue's lock, so
// they may Park() again.
//
// Missed wake-ups are ruled out with epochs: take Epoch(key) before reading
// the store and pass it to Park(); if the key was notified in between, Park()
// wakes the call at once.
#ifndef IDEM_SERVER_RPC_WAIT_QUEUE_H_
#define IDEM_SERVER_RPC_WAIT_QUEUE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/store.h"

namespace idem::server {

// The WaitQueue key of an idempotency key.
std::string WaitKey(const storage::KeyId& id);

class WaitQueue {
 public:
  enum class Wake { kKeyChanged, kRecheck, kCancelled, kShutdown };
  using Callback = std::function<void(Wake)>;
  struct Waiter;
  using Handle = std::shared_ptr<Waiter>;

  WaitQueue();
  // Shuts down (if not yet) and joins the worker.
  ~WaitQueue();
  WaitQueue(const WaitQueue&) = delete;
  WaitQueue& operator=(const WaitQueue&) = delete;

  uint64_t Epoch(const std::string& key);
  // Returns null, and never calls `wake`, when `max_parked` calls are
  // already parked (checked atomically with the parking).
  Handle Park(const std::string& key, uint64_t epoch, absl::Time recheck_at,
              Callback wake, size_t max_parked = SIZE_MAX);
  void Notify(const std::string& key);
  // Notify() for every key: wakes every parked call with kKeyChanged (the
  // store may have missed announcements, e.g. while it reconnected).
  void NotifyAll();
  // Wakes the call with kCancelled unless it was already woken.
  void Cancel(const Handle& handle);
  // Wakes every parked call with kShutdown; later Park()s wake at once.
  void Shutdown();
  size_t parked() const;

 private:
  static constexpr size_t kEpochStripes = 4096;

  void Run();
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unlinks a parked waiter and queues its wake-up.
  void FireLocked(const Handle& waiter, Wake reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t Stripe(const std::string& key) const;

  mutable absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::array<uint64_t, kEpochStripes> epochs_ ABSL_GUARDED_BY(mu_) = {};
  absl::flat_hash_map<std::string, std::vector<Handle>> by_key_
      ABSL_GUARDED_BY(mu_);
  std::multimap<absl::Time, Handle> timers_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<Handle, Wake>> ready_ ABSL_GUARDED_BY(mu_);
  size_t parked_ ABSL_GUARDED_BY(mu_) = 0;
  // When the worker wakes up by itself next.
  absl::Time sleep_until_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::thread worker_;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_WAIT_QUEUE_H_
