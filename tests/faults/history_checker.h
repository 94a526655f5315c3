// Checks a fault-injection history (see history.proto) against what Idem
// promises, key by key:
//   exclusive-leases       no two tokens hold a key at the same server time;
//   increasing-tokens      later acquisitions of a key get larger tokens
//                          (replies in progress do not show the holder's
//                          token, so reads cannot be held to this);
//   durable-acquisition    a holder is not refused as "lease lost" while its
//                          lease is valid and nothing else touched the key;
//   durable-completion     after a Complete returned OK, every Begin and
//                          Lookup of the key (across restarts, until the
//                          retention ends) answers COMPLETED with that body;
//   replay-matches-stored  a replayed result is one a Complete sent, and all
//                          replays of a key agree;
//   no-superseded-complete no Complete or Extend was accepted for a token
//                          after a newer token had acquired the key, or
//                          after its own Release was acknowledged.
// The checker is sound for lost replies: a call whose result is unknown may
// or may not have happened, and is only ever used to excuse, never to accuse.
#ifndef IDEM_TESTS_FAULTS_HISTORY_CHECKER_H_
#define IDEM_TESTS_FAULTS_HISTORY_CHECKER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/faults/history.pb.h"

namespace idem::faults {

struct Violation {
  std::string rule;  // One of the rule names above.
  std::string key;
  std::string detail;  // Which calls, with times and tokens.
};

struct HistoryReport {
  int64_t events = 0;
  int64_t keys = 0;
  int64_t acquisitions = 0;     // Begin replies ACQUIRED.
  int64_t completions = 0;      // Complete replies OK.
  int64_t replays = 0;          // COMPLETED replies to Begin and Lookup.
  int64_t unknown_results = 0;  // Calls whose reply was lost.
  std::vector<Violation> violations;
};

HistoryReport CheckHistory(const std::vector<HistoryEvent>& history);

// History files hold one HistoryEvent per line, as JSON (proto field names).
absl::StatusOr<std::vector<HistoryEvent>> ReadHistory(const std::string& path);
absl::StatusOr<std::string> HistoryLine(const HistoryEvent& event);

}  // namespace idem::faults

#endif  // IDEM_TESTS_FAULTS_HISTORY_CHECKER_H_
