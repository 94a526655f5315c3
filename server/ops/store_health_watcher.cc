#include "server/ops/store_health_watcher.h"

#include <pthread.h>

#include <utility>

namespace idem::server {

StoreHealthWatcher::StoreHealthWatcher(storage::Store* store,
                                       absl::Duration period,
                                       OnChange on_change)
    : store_(store), period_(period), on_change_(std::move(on_change)) {
  thread_ = std::thread([this] { Loop(); });
}

StoreHealthWatcher::~StoreHealthWatcher() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void StoreHealthWatcher::Loop() {
  pthread_setname_np(pthread_self(), "idem-health");
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stopping_), period_)) {
    mu_.Unlock();
    const absl::Status health = store_->Health();
    if (health.ok() != healthy()) {
      healthy_.store(health.ok(), std::memory_order_relaxed);
      on_change_(health);
    }
    mu_.Lock();
  }
}

}  // namespace idem::server
