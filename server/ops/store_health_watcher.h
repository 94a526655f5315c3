// Polls the store's health and reports each change once: the server turns
// it into the gRPC health status (NOT_SERVING while the store cannot take
// writes) and a log line.
#ifndef IDEM_SERVER_OPS_STORE_HEALTH_WATCHER_H_
#define IDEM_SERVER_OPS_STORE_HEALTH_WATCHER_H_

#include <atomic>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/store.h"

namespace idem::server {

class StoreHealthWatcher {
 public:
  // `on_change` runs on the watcher's thread, first when the store turns
  // unhealthy and then at every change.
  using OnChange = std::function<void(const absl::Status& health)>;

  StoreHealthWatcher(storage::Store* store, absl::Duration period,
                     OnChange on_change);
  // Stops the thread; no call to `on_change` runs after it returns.
  ~StoreHealthWatcher();
  StoreHealthWatcher(const StoreHealthWatcher&) = delete;
  StoreHealthWatcher& operator=(const StoreHealthWatcher&) = delete;

  bool healthy() const { return healthy_.load(std::memory_order_relaxed); }

 private:
  void Loop();

  storage::Store* const store_;
  const absl::Duration period_;
  const OnChange on_change_;
  std::atomic<bool> healthy_{true};
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_OPS_STORE_HEALTH_WATCHER_H_
