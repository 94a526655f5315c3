// The conformance suite that every Store implementation must pass: the key
// state machine's rules as seen through a real store, atomicity under
// concurrency, token monotonicity across restarts and durability of
// completed results.
//
// Usage, in a backend's test file:
//   INSTANTIATE_TEST_SUITE_P(
//       MyBackend, StoreConformanceTest,
//       ::testing::Values(StoreBackend{"my", [](FakeClock* clock) {
//         return std::make_unique<MyHarness>(clock);
//       }}),
//       [](const auto& info) { return info.param.name; });
#ifndef IDEM_STORAGE_TESTING_STORE_CONFORMANCE_H_
#define IDEM_STORAGE_TESTING_STORE_CONFORMANCE_H_

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "gtest/gtest.h"
#include "storage/store.h"
#include "storage/testing/fake_clock.h"

namespace idem::storage {

// Owns one store instance (and whatever it runs on) for one test.
class StoreHarness {
 public:
  virtual ~StoreHarness() = default;
  virtual Store& store() = 0;
  // Closes the store and opens it again on the same data: a restart.
  virtual void Reopen() = 0;
};

struct StoreBackend {
  std::string name;
  // Makes a harness on an empty store that reads time from `clock`.
  std::function<std::unique_ptr<StoreHarness>(const Clock* clock)> make;
  // Tokens grow across all keys, not only per key (which every store must).
  bool tokens_grow_across_keys;
  // PeekBegin answers what needs no write; false: it never answers (a
  // networked store that must not block its caller).
  bool peeks;
};

// Names the backend in test listings instead of dumping its bytes.
inline void PrintTo(const StoreBackend& backend, std::ostream* os) {
  *os << backend.name;
}

class StoreConformanceTest : public ::testing::TestWithParam<StoreBackend> {
 protected:
  void SetUp() override { harness_ = GetParam().make(&clock_); }
  Store& store() { return harness_->store(); }

  FakeClock clock_;
  std::unique_ptr<StoreHarness> harness_;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_TESTING_STORE_CONFORMANCE_H_
