#include "server/rpc/wait_queue.h"

#include <pthread.h>

#include <algorithm>

#include "absl/hash/hash.h"

namespace idem::server {

std::string WaitKey(const storage::KeyId& id) {
  std::string key = id.name_space;
  key.push_back('\0');  // Never part of a namespace.
  key.append(id.key);
  return key;
}

struct WaitQueue::Waiter {
  std::string key;
  WaitQueue::Callback wake;
  bool parked = true;  // Guarded by the queue's mu_.
  std::multimap<absl::Time, Handle>::iterator timer;
};

WaitQueue::WaitQueue() : worker_([this] { Run(); }) {}

WaitQueue::~WaitQueue() {
  Shutdown();
  {
    // The worker drains every queued wake-up before it sees this.
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }
  worker_.join();
}

size_t WaitQueue::Stripe(const std::string& key) const {
  return absl::HashOf(key) % kEpochStripes;
}

uint64_t WaitQueue::Epoch(const std::string& key) {
  absl::MutexLock lock(&mu_);
  return epochs_[Stripe(key)];
}

WaitQueue::Handle WaitQueue::Park(const std::string& key, uint64_t epoch,
                                  absl::Time recheck_at, Callback wake,
                                  size_t max_parked) {
  auto waiter = std::make_shared<Waiter>();
  waiter->key = key;
  waiter->wake = std::move(wake);
  absl::MutexLock lock(&mu_);
  if (parked_ >= max_parked) return nullptr;
  if (shutdown_) {
    waiter->parked = false;
    ready_.emplace_back(waiter, Wake::kShutdown);
  } else if (epochs_[Stripe(key)] != epoch) {
    waiter->parked = false;
    ready_.emplace_back(waiter, Wake::kKeyChanged);
  } else {
    by_key_[key].push_back(waiter);
    waiter->timer = timers_.emplace(recheck_at, waiter);
    ++parked_;
  }
  return waiter;
}

void WaitQueue::FireLocked(const Handle& waiter, Wake reason) {
  if (!waiter->parked) return;
  waiter->parked = false;
  --parked_;
  timers_.erase(waiter->timer);
  auto it = by_key_.find(waiter->key);
  if (it != by_key_.end()) {
    std::vector<Handle>& list = it->second;
    list.erase(std::remove(list.begin(), list.end(), waiter), list.end());
    if (list.empty()) by_key_.erase(it);
  }
  ready_.emplace_back(waiter, reason);
}

void WaitQueue::Notify(const std::string& key) {
  absl::MutexLock lock(&mu_);
  ++epochs_[Stripe(key)];
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return;
  std::vector<Handle> waiters = std::move(it->second);
  by_key_.erase(it);
  for (const Handle& waiter : waiters) {
    waiter->parked = false;
    --parked_;
    timers_.erase(waiter->timer);
    ready_.emplace_back(waiter, Wake::kKeyChanged);
  }
}

void WaitQueue::NotifyAll() {
  absl::MutexLock lock(&mu_);
  for (uint64_t& epoch : epochs_) ++epoch;
  while (!timers_.empty()) {
    Handle waiter = timers_.begin()->second;
    FireLocked(waiter, Wake::kKeyChanged);
  }
}

void WaitQueue::Cancel(const Handle& handle) {
  if (handle == nullptr) return;
  absl::MutexLock lock(&mu_);
  FireLocked(handle, Wake::kCancelled);
}

void WaitQueue::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  shutdown_ = true;
  while (!timers_.empty()) {
    Handle waiter = timers_.begin()->second;
    FireLocked(waiter, Wake::kShutdown);
  }
}

bool WaitQueue::HasWork() const {
  // A timer parked after the worker went to sleep may be due earlier.
  const bool earlier_timer =
      !timers_.empty() && timers_.begin()->first < sleep_until_;
  return !ready_.empty() || stopped_ || earlier_timer;
}

size_t WaitQueue::parked() const {
  absl::MutexLock lock(&mu_);
  return parked_;
}

void WaitQueue::Run() {
  pthread_setname_np(pthread_self(), "idem-waits");
  absl::MutexLock lock(&mu_);
  while (true) {
    // Due timers become ready.
    const absl::Time now = absl::Now();
    while (!timers_.empty() && timers_.begin()->first <= now) {
      Handle waiter = timers_.begin()->second;
      FireLocked(waiter, Wake::kRecheck);
    }
    if (!ready_.empty()) {
      auto [waiter, reason] = std::move(ready_.front());
      ready_.pop_front();
      Callback wake = std::move(waiter->wake);
      mu_.Unlock();
      wake(reason);
      mu_.Lock();
      continue;
    }
    if (stopped_) return;
    sleep_until_ =
        timers_.empty() ? absl::InfiniteFuture() : timers_.begin()->first;
    mu_.AwaitWithDeadline(absl::Condition(this, &WaitQueue::HasWork),
                          sleep_until_);
  }
}

}  // namespace idem::server
