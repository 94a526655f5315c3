// Small status helpers for tests (Debian's Abseil 20220623 has no
// status_matchers.h).
#ifndef IDEM_TESTS_TESTING_STATUS_MATCHERS_H_
#define IDEM_TESTS_TESTING_STATUS_MATCHERS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace idem::testing {

inline const absl::Status& ToStatus(const absl::Status& status) {
  return status;
}
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

}  // namespace idem::testing

#define IDEM_CONCAT_INNER_(a, b) a##b
#define IDEM_CONCAT_(a, b) IDEM_CONCAT_INNER_(a, b)

#define EXPECT_OK(expr) \
  EXPECT_EQ(::idem::testing::ToStatus(expr), ::absl::OkStatus())
#define ASSERT_OK(expr) \
  ASSERT_EQ(::idem::testing::ToStatus(expr), ::absl::OkStatus())
#define EXPECT_STATUS_CODE(expr, code_)                    \
  EXPECT_EQ(::idem::testing::ToStatus(expr).code(), code_) \
      << ::idem::testing::ToStatus(expr)

// ASSERT_OK_AND_ASSIGN(auto value, StatusOrReturningCall());
// `lhs` may be a declaration, so it cannot be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr)               \
  auto IDEM_CONCAT_(status_or_, __LINE__) = (rexpr);   \
  ASSERT_TRUE(IDEM_CONCAT_(status_or_, __LINE__).ok()) \
      << IDEM_CONCAT_(status_or_, __LINE__).status();  \
  lhs = *std::move(IDEM_CONCAT_(status_or_, __LINE__))
// NOLINTEND(bugprone-macro-parentheses)

#endif  // IDEM_TESTS_TESTING_STATUS_MATCHERS_H_
