// A fixed pool of threads for work that blocks or runs long (operator scans
// over many records), so that gRPC's own threads never do.
#ifndef IDEM_SERVER_RPC_BLOCKING_EXECUTOR_H_
#define IDEM_SERVER_RPC_BLOCKING_EXECUTOR_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace idem::server {

class BlockingExecutor {
 public:
  explicit BlockingExecutor(int threads);
  // Runs every task already submitted, then joins the threads.
  ~BlockingExecutor();
  BlockingExecutor(const BlockingExecutor&) = delete;
  BlockingExecutor& operator=(const BlockingExecutor&) = delete;

  void Submit(std::function<void()> task);

 private:
  void Work();
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !tasks_.empty() || stopping_;
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_BLOCKING_EXECUTOR_H_
