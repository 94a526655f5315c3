#include "server/rpc/rpc_observer.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace idem::server {
namespace {

std::string Rendered(const Metrics& metrics) {
  return metrics.Render(Metrics::Gauges{});
}

TEST(RpcObserverTest, CountsASuccessByItsOutcomeAndAFailureByItsCode) {
  Metrics metrics;
  RpcObserver observer(&metrics);
  observer.Answered("Begin", absl::Now(), absl::OkStatus(),
                    OutcomeName(storage::BeginOutcome::kAcquired));
  observer.Answered("Begin", absl::Now(), absl::OkStatus(),
                    OutcomeName(storage::BeginOutcome::kAcquired));
  observer.Answered("Complete", absl::Now(),
                    absl::FailedPreconditionError("lease lost"));
  const std::string text = Rendered(metrics);
  EXPECT_TRUE(absl::StrContains(
      text, "idem_rpc_total{method=\"Begin\",outcome=\"ACQUIRED\"} 2\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(
      text,
      "idem_rpc_total{method=\"Complete\",outcome=\"FAILED_PRECONDITION\"} "
      "1\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(
      text, "idem_rpc_duration_seconds_count{method=\"Begin\"} 2\n"));
}

TEST(RpcObserverTest, LogsStorageFailuresButNotTheCallersMistakes) {
  Metrics metrics;
  RpcObserver observer(&metrics);
  ::testing::internal::CaptureStderr();
  observer.Answered("Lookup", absl::Now(),
                    absl::InvalidArgumentError("key is empty"));
  observer.Answered("Begin", absl::Now(), absl::NotFoundError("x"));
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");

  for (const absl::Status& failure :
       {absl::UnavailableError("disk full"), absl::DataLossError("crc"),
        absl::InternalError("bug"), absl::UnknownError("?")}) {
    ::testing::internal::CaptureStderr();
    observer.Answered("Complete", absl::Now(), failure);
    const std::string line = ::testing::internal::GetCapturedStderr();
    EXPECT_TRUE(absl::StrContains(line,
                                  "level=error event=storage_error "
                                  "method=Complete"))
        << line;
    EXPECT_TRUE(
        absl::StrContains(line, absl::StatusCodeToString(failure.code())))
        << line;
  }
}

TEST(RpcObserverTest, ATakeoverIsCountedAndLogged) {
  Metrics metrics;
  RpcObserver observer(&metrics);
  ::testing::internal::CaptureStderr();
  observer.TookOver({"orders", "k1"}, 7, 2);
  const std::string line = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(absl::StrContains(
      line, "event=lease_takeover ns=orders key=k1 token=7 attempt=2"))
      << line;
  EXPECT_TRUE(
      absl::StrContains(Rendered(metrics), "idem_lease_takeovers_total 1\n"));
}

TEST(OutcomeNameTest, NamesEveryOutcomeAsTheApiDoes) {
  EXPECT_EQ(OutcomeName(storage::BeginOutcome::kAcquired), "ACQUIRED");
  EXPECT_EQ(OutcomeName(storage::BeginOutcome::kCompleted), "COMPLETED");
  EXPECT_EQ(OutcomeName(storage::BeginOutcome::kInProgress), "IN_PROGRESS");
  EXPECT_EQ(OutcomeName(storage::BeginOutcome::kMismatch), "MISMATCH");
}

}  // namespace
}  // namespace idem::server
