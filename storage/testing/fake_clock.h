// A clock that moves only when told to, for tests of time-dependent rules.
#ifndef IDEM_STORAGE_TESTING_FAKE_CLOCK_H_
#define IDEM_STORAGE_TESTING_FAKE_CLOCK_H_

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/clock.h"

namespace idem::storage {

class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'800'000'000))
      : now_(start) {}

  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_TESTING_FAKE_CLOCK_H_
