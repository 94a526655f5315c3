// The time source of a store. Stores take one at construction so that tests
// control time; production uses Clock::Real(), the server's wall clock.
#ifndef IDEM_STORAGE_CLOCK_H_
#define IDEM_STORAGE_CLOCK_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace idem::storage {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The process-wide wall clock. Never null, never destroyed.
  static const Clock* Real();
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_CLOCK_H_
