#include "server/rpc/blocking_executor.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace idem::server {
namespace {

TEST(BlockingExecutorTest, RunsTasksOffTheCallersThread) {
  BlockingExecutor executor(2);
  absl::Notification ran;
  std::thread::id where;
  executor.Submit([&] {
    where = std::this_thread::get_id();
    ran.Notify();
  });
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_NE(where, std::this_thread::get_id());
}

TEST(BlockingExecutorTest, UsesEveryThreadWhenTasksBlock) {
  // Three tasks that each wait for the other two: they finish only if all
  // three run at once.
  BlockingExecutor executor(3);
  absl::Mutex mu;
  int arrived = 0;
  std::atomic<int> done{0};
  for (int i = 0; i < 3; ++i) {
    executor.Submit([&] {
      absl::MutexLock lock(&mu);
      ++arrived;
      if (mu.AwaitWithTimeout(absl::Condition(
                                  +[](int* n) { return *n == 3; }, &arrived),
                              absl::Seconds(10))) {
        ++done;
      }
    });
  }
  absl::MutexLock lock(&mu);
  ASSERT_TRUE(mu.AwaitWithTimeout(
      absl::Condition(
          +[](std::atomic<int>* n) { return n->load() == 3; }, &done),
      absl::Seconds(20)));
}

TEST(BlockingExecutorTest, TheDestructorRunsEveryTaskAlreadySubmitted) {
  std::atomic<int> ran{0};
  {
    BlockingExecutor executor(1);
    absl::Notification release;
    executor.Submit([&] { release.WaitForNotification(); });
    for (int i = 0; i < 100; ++i) executor.Submit([&] { ++ran; });
    release.Notify();
  }
  EXPECT_EQ(ran.load(), 100);
}

TEST(BlockingExecutorTest, ATaskMaySubmitAnother) {
  std::atomic<int> ran{0};
  absl::Notification second;
  BlockingExecutor executor(1);
  executor.Submit([&] {
    ++ran;
    executor.Submit([&] {
      ++ran;
      second.Notify();
    });
  });
  ASSERT_TRUE(second.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(ran.load(), 2);
}

}  // namespace
}  // namespace idem::server
