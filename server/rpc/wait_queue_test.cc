#include "server/rpc/wait_queue.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace idem::server {
namespace {

using Wake = WaitQueue::Wake;

// Records the one wake-up a parked call gets.
struct Recorder {
  absl::Notification woken;
  std::atomic<int> calls{0};
  Wake reason = Wake::kShutdown;
  WaitQueue::Callback callback() {
    return [this](Wake w) {
      reason = w;
      calls++;
      woken.Notify();
    };
  }
};

const absl::Time kFar = absl::InfiniteFuture();

// In every test the recorders are declared before the queue: the queue's
// destructor wakes whoever is still parked, so they must outlive it.

TEST(WaitQueueTest, NotifyWakesEveryWaiterOfThatKeyOnly) {
  Recorder a, b, other;
  WaitQueue queue;
  queue.Park("k", queue.Epoch("k"), kFar, a.callback());
  queue.Park("k", queue.Epoch("k"), kFar, b.callback());
  queue.Park("other", queue.Epoch("other"), kFar, other.callback());
  EXPECT_EQ(queue.parked(), 3u);
  queue.Notify("k");
  ASSERT_TRUE(a.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  ASSERT_TRUE(b.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(a.reason, Wake::kKeyChanged);
  EXPECT_FALSE(
      other.woken.WaitForNotificationWithTimeout(absl::Milliseconds(50)));
  EXPECT_EQ(queue.parked(), 1u);
}

TEST(WaitQueueTest, ANotifyBetweenReadAndParkIsNotMissed) {
  Recorder r;
  WaitQueue queue;
  const uint64_t epoch = queue.Epoch("k");
  queue.Notify("k");  // The key changed after the caller read the store.
  queue.Park("k", epoch, kFar, r.callback());
  ASSERT_TRUE(r.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(r.reason, Wake::kKeyChanged);
  EXPECT_EQ(queue.parked(), 0u);
}

TEST(WaitQueueTest, NotifyAllWakesEveryKeyAndCallsReadingMeanwhile) {
  Recorder a, b, late;
  WaitQueue queue;
  queue.Park("k", queue.Epoch("k"), kFar, a.callback());
  queue.Park("other", queue.Epoch("other"), kFar, b.callback());
  const uint64_t epoch = queue.Epoch("third");
  queue.NotifyAll();
  ASSERT_TRUE(a.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  ASSERT_TRUE(b.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(a.reason, Wake::kKeyChanged);
  EXPECT_EQ(b.reason, Wake::kKeyChanged);
  // A call that read before NotifyAll() and parks after is woken too.
  queue.Park("third", epoch, kFar, late.callback());
  ASSERT_TRUE(late.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(late.reason, Wake::kKeyChanged);
  EXPECT_EQ(queue.parked(), 0u);
}

TEST(WaitQueueTest, RecheckTimeWakesTheWaiter) {
  WaitQueue queue;
  absl::SleepFor(absl::Milliseconds(20));  // The worker is asleep by now.
  Recorder r;
  const absl::Time start = absl::Now();
  queue.Park("k", queue.Epoch("k"), start + absl::Milliseconds(100),
             r.callback());
  ASSERT_TRUE(r.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(r.reason, Wake::kRecheck);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(WaitQueueTest, AnEarlierRecheckIsHonouredWhileTheWorkerSleepsLonger) {
  Recorder late, early;
  WaitQueue queue;
  queue.Park("a", queue.Epoch("a"), absl::Now() + absl::Hours(1),
             late.callback());
  absl::SleepFor(absl::Milliseconds(20));
  const absl::Time start = absl::Now();
  queue.Park("b", queue.Epoch("b"), start + absl::Milliseconds(50),
             early.callback());
  ASSERT_TRUE(early.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(early.reason, Wake::kRecheck);
}

TEST(WaitQueueTest, CancelWakesOnceAndLaterEventsAreIgnored) {
  Recorder r;
  WaitQueue queue;
  WaitQueue::Handle handle =
      queue.Park("k", queue.Epoch("k"), absl::Now() + absl::Milliseconds(50),
                 r.callback());
  queue.Cancel(handle);
  queue.Notify("k");
  queue.Cancel(handle);
  ASSERT_TRUE(r.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(r.reason, Wake::kCancelled);
  EXPECT_EQ(r.calls.load(), 1);
}

TEST(WaitQueueTest, ShutdownWakesEveryoneAndLaterParksAtOnce) {
  std::vector<std::unique_ptr<Recorder>> recorders;
  Recorder late;
  WaitQueue queue;
  for (int i = 0; i < 1000; ++i) {
    recorders.push_back(std::make_unique<Recorder>());
    const std::string key = "k" + std::to_string(i % 10);
    queue.Park(key, queue.Epoch(key), kFar, recorders.back()->callback());
  }
  queue.Shutdown();
  for (auto& r : recorders) {
    ASSERT_TRUE(r->woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
    EXPECT_EQ(r->reason, Wake::kShutdown);
  }
  queue.Park("k", queue.Epoch("k"), kFar, late.callback());
  ASSERT_TRUE(late.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(late.reason, Wake::kShutdown);
}

TEST(WaitQueueTest, ACallbackMayParkAgain) {
  Recorder second;
  std::atomic<int> first_calls{0};
  WaitQueue queue;
  queue.Park("k", queue.Epoch("k"), kFar, [&](Wake) {
    first_calls++;
    queue.Park("k", queue.Epoch("k"), kFar, second.callback());
  });
  queue.Notify("k");
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(first_calls.load(), 1);
  EXPECT_EQ(queue.parked(), 1u);
  queue.Notify("k");
  ASSERT_TRUE(second.woken.WaitForNotificationWithTimeout(absl::Seconds(5)));
}

}  // namespace
}  // namespace idem::server
