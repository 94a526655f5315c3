#include "server/ops/store_health_watcher.h"

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "storage/transition.h"

namespace idem::server {
namespace {

// A store whose only working call is Health(), set by the test: the
// watcher calls nothing else.
class HealthOnlyStore final : public storage::TransitionStore {
 public:
  void set_health(absl::Status health) {
    absl::MutexLock lock(&mu_);
    health_ = std::move(health);
  }
  int health_calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

  absl::Status Health() override {
    absl::MutexLock lock(&mu_);
    ++calls_;
    return health_;
  }
  std::optional<absl::StatusOr<storage::BeginResult>> PeekBegin(
      const storage::BeginCommand&, storage::PeekHint*) override {
    return std::nullopt;
  }
  absl::StatusOr<storage::KeySnapshot> Lookup(const storage::KeyId&) override {
    return absl::UnimplementedError("health only");
  }
  absl::StatusOr<storage::ListPage> List(const storage::ListQuery&) override {
    return absl::UnimplementedError("health only");
  }
  absl::StatusOr<std::map<std::string, storage::StateCounts>> CountKeys(
      const std::string&) override {
    return absl::UnimplementedError("health only");
  }
  storage::StoreStats Stats() override { return {}; }

 private:
  void Apply(std::unique_ptr<storage::Transition> transition) override {
    transition->Finish(absl::UnimplementedError("health only"));
  }

  absl::Mutex mu_;
  absl::Status health_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
};

// The changes the watcher reported, in order.
class Changes {
 public:
  void Add(const absl::Status& health) {
    absl::MutexLock lock(&mu_);
    seen_.push_back(health);
  }
  // Waits until `n` changes were reported; returns them.
  std::vector<absl::Status> WaitFor(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return seen_.size() >= n;
    };
    mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
    return seen_;
  }

 private:
  absl::Mutex mu_;
  std::vector<absl::Status> seen_ ABSL_GUARDED_BY(mu_);
};

TEST(StoreHealthWatcherTest, ReportsEachChangeOnceAndNothingWhileSteady) {
  HealthOnlyStore store;
  Changes changes;
  StoreHealthWatcher watcher(&store, absl::Milliseconds(5),
                             [&](const absl::Status& h) { changes.Add(h); });
  EXPECT_TRUE(watcher.healthy());

  // Healthy from the start: polls, reports nothing.
  while (store.health_calls() < 5) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_TRUE(changes.WaitFor(0).empty());

  store.set_health(absl::UnavailableError("disk gone"));
  std::vector<absl::Status> seen = changes.WaitFor(1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(seen[0].message(), "disk gone");
  EXPECT_FALSE(watcher.healthy());

  // Still bad, for many more polls: not reported again.
  const int calls = store.health_calls();
  while (store.health_calls() < calls + 5) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(changes.WaitFor(0).size(), 1u);

  store.set_health(absl::OkStatus());
  seen = changes.WaitFor(2);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[1].ok());
  EXPECT_TRUE(watcher.healthy());
}

TEST(StoreHealthWatcherTest, NoCallbackRunsAfterTheDestructorReturns) {
  HealthOnlyStore store;
  store.set_health(absl::UnavailableError("down"));
  std::atomic<bool> destroyed{false};
  std::atomic<int> late{0};
  {
    StoreHealthWatcher watcher(&store, absl::Milliseconds(1),
                               [&](const absl::Status&) {
                                 absl::SleepFor(absl::Milliseconds(20));
                                 if (destroyed) ++late;
                               });
    while (store.health_calls() == 0) absl::SleepFor(absl::Milliseconds(1));
  }
  destroyed = true;
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(late.load(), 0);
}

}  // namespace
}  // namespace idem::server
