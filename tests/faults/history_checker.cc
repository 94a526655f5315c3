#include "tests/faults/history_checker.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace idem::faults {
namespace {

// A stretch of server time during which `token` held the key, as a reply
// proved it: Begin ACQUIRED and Extend set the lease to now + lease, so the
// server's "now" is the reply's expiry minus the lease asked for.
struct LeaseWindow {
  uint64_t token = 0;
  int64_t start_us = 0;
  int64_t end_us = 0;
  const HistoryEvent* event = nullptr;
};

std::string Describe(const HistoryEvent& e) {
  std::string what = absl::StrCat(HistoryEvent::Op_Name(e.op()), " by client ",
                                  e.client(), " invoked at ", e.invoked_us(),
                                  " returned at ", e.returned_us());
  if (e.token() != 0) absl::StrAppend(&what, " token ", e.token());
  absl::StrAppend(&what, " -> ", HistoryEvent::Result_Name(e.result()));
  if (e.outcome() != HistoryEvent::OUTCOME_UNSPECIFIED) {
    absl::StrAppend(&what, " ", HistoryEvent::Outcome_Name(e.outcome()));
  }
  if (e.reply_token() != 0) absl::StrAppend(&what, " token ", e.reply_token());
  if (!e.reply_body().empty()) {
    absl::StrAppend(&what, " body \"", absl::CHexEscape(e.reply_body()), "\"");
  }
  return what;
}

bool IsOk(const HistoryEvent& e) {
  return e.result() == HistoryEvent::RESULT_OK;
}

bool MayHaveHappened(const HistoryEvent& e) {
  return e.result() != HistoryEvent::RESULT_FAILED;
}

bool IsAcquired(const HistoryEvent& e) {
  return e.op() == HistoryEvent::OP_BEGIN && IsOk(e) &&
         e.outcome() == HistoryEvent::OUTCOME_ACQUIRED;
}

bool IsRead(const HistoryEvent& e) {
  return (e.op() == HistoryEvent::OP_BEGIN ||
          e.op() == HistoryEvent::OP_LOOKUP) &&
         IsOk(e);
}

class KeyChecker {
 public:
  KeyChecker(const std::string& key, std::vector<const HistoryEvent*> events,
             HistoryReport& report)
      : key_(key), events_(std::move(events)), report_(report) {}

  void Run() {
    CollectWindows();
    CheckExclusiveLeases();
    CheckIncreasingTokens();
    CheckAcquisitionsKept();
    CheckDurableCompletion();
    CheckReplaysMatchStored();
    CheckNoSupersededComplete();
  }

 private:
  void Report(const char* rule, std::string detail) {
    report_.violations.push_back({rule, key_, std::move(detail)});
  }

  // A lease ends early when its holder releases or completes; the server did
  // that somewhere between invocation and reply, so the invocation time is
  // the earliest end (lost replies included: they may have taken effect).
  void CollectWindows() {
    std::map<uint64_t, int64_t> ended_at;
    // An Extend sets the lease to its own now + lease, which may shorten it:
    // windows proved before it may end as early as invocation + lease.
    std::multimap<uint64_t, const HistoryEvent*> extends;
    for (const HistoryEvent* e : events_) {
      if ((e->op() == HistoryEvent::OP_RELEASE ||
           e->op() == HistoryEvent::OP_COMPLETE) &&
          MayHaveHappened(*e)) {
        auto [it, inserted] = ended_at.emplace(e->token(), e->invoked_us());
        if (!inserted) it->second = std::min(it->second, e->invoked_us());
      }
      if (e->op() == HistoryEvent::OP_EXTEND && MayHaveHappened(*e)) {
        extends.emplace(e->token(), e);
      }
    }
    for (const HistoryEvent* e : events_) {
      uint64_t token = 0;
      if (IsAcquired(*e)) {
        token = e->reply_token();
        acquisitions_.push_back({token,
                                 e->lease_expires_at_us() - e->lease_us(),
                                 e->lease_expires_at_us(), e});
      } else if (e->op() == HistoryEvent::OP_EXTEND && IsOk(*e)) {
        token = e->token();
      } else {
        continue;
      }
      LeaseWindow window{token, e->lease_expires_at_us() - e->lease_us(),
                         e->lease_expires_at_us(), e};
      if (auto it = ended_at.find(token); it != ended_at.end()) {
        window.end_us = std::min(window.end_us, it->second);
      }
      auto [first, last] = extends.equal_range(token);
      for (auto it = first; it != last; ++it) {
        const HistoryEvent& x = *it->second;
        if (&x != e && window.start_us <= x.returned_us()) {
          window.end_us =
              std::min(window.end_us, x.invoked_us() + x.lease_us());
        }
      }
      if (window.start_us < window.end_us) windows_.push_back(window);
    }
    auto by_start = [](const LeaseWindow& a, const LeaseWindow& b) {
      return a.start_us < b.start_us;
    };
    std::sort(windows_.begin(), windows_.end(), by_start);
    std::sort(acquisitions_.begin(), acquisitions_.end(), by_start);
    report_.acquisitions += static_cast<int64_t>(acquisitions_.size());
  }

  void CheckExclusiveLeases() {
    for (size_t j = 0; j < windows_.size(); ++j) {
      for (size_t i = 0; i < j; ++i) {
        const LeaseWindow& a = windows_[i];
        const LeaseWindow& b = windows_[j];
        if (a.token == b.token || b.start_us >= a.end_us) continue;
        Report(
            "exclusive-leases",
            absl::StrCat("token ", a.token, " held the key over [", a.start_us,
                         ", ", a.end_us, ") (", Describe(*a.event),
                         ") while token ", b.token, " held it from ",
                         b.start_us, " (", Describe(*b.event), ")"));
      }
    }
  }

  void CheckIncreasingTokens() {
    std::set<uint64_t> seen;
    const LeaseWindow* previous = nullptr;
    for (const LeaseWindow& acquired : acquisitions_) {
      if (!seen.insert(acquired.token).second) continue;  // A re-acquisition.
      if (previous != nullptr && acquired.token <= previous->token) {
        Report("increasing-tokens",
               absl::StrCat("token ", acquired.token, " acquired at ",
                            acquired.start_us, " after token ", previous->token,
                            " acquired at ", previous->start_us, " (",
                            Describe(*acquired.event), ")"));
      }
      previous = &acquired;
    }
  }

  // A holder refused as "lease lost" while its lease was provably valid,
  // with no release, completion or other acquisition that may explain it:
  // its acknowledged acquisition was lost.
  void CheckAcquisitionsKept() {
    for (const HistoryEvent* x : events_) {
      if ((x->op() != HistoryEvent::OP_COMPLETE &&
           x->op() != HistoryEvent::OP_EXTEND) ||
          x->result() != HistoryEvent::RESULT_FAILED ||
          x->grpc_code() != 9 /* FAILED_PRECONDITION */) {
        continue;
      }
      const bool valid = std::any_of(
          windows_.begin(), windows_.end(), [x](const LeaseWindow& w) {
            return w.token == x->token() && w.start_us <= x->invoked_us() &&
                   x->returned_us() < w.end_us;
          });
      if (!valid) continue;
      const bool explained = std::any_of(
          events_.begin(), events_.end(), [x](const HistoryEvent* e) {
            const bool ended = (e->op() == HistoryEvent::OP_RELEASE ||
                                e->op() == HistoryEvent::OP_COMPLETE) &&
                               e->token() == x->token() && e != x &&
                               MayHaveHappened(*e) &&
                               e->invoked_us() < x->returned_us();
            const bool other_begin =
                e->op() == HistoryEvent::OP_BEGIN &&
                e->invoked_us() < x->returned_us() &&
                (e->result() == HistoryEvent::RESULT_UNKNOWN ||
                 (IsAcquired(*e) && e->reply_token() != x->token()));
            return ended || other_begin;
          });
      if (!explained) {
        Report("durable-acquisition",
               absl::StrCat(Describe(*x),
                            " was refused as lease lost while its lease was "
                            "valid and nothing else touched the key"));
      }
    }
  }

  void CheckDurableCompletion() {
    const HistoryEvent* first = nullptr;
    for (const HistoryEvent* c : events_) {
      if (c->op() != HistoryEvent::OP_COMPLETE || !IsOk(*c)) continue;
      ++report_.completions;
      if (first == nullptr) {
        first = c;
      } else if (c->token() != first->token() || c->body() != first->body()) {
        Report("durable-completion",
               absl::StrCat("two different results acknowledged: ",
                            Describe(*first), " and ", Describe(*c)));
      }
      for (const HistoryEvent* r : events_) {
        // A read served after the retention may rightly find nothing; one
        // with another fingerprint rightly answers MISMATCH.
        if (!IsRead(*r) || r->invoked_us() <= c->returned_us() ||
            r->returned_us() >= c->result_expires_at_us() ||
            r->outcome() == HistoryEvent::OUTCOME_MISMATCH) {
          continue;
        }
        if (r->outcome() != HistoryEvent::OUTCOME_COMPLETED ||
            r->reply_body() != c->body()) {
          Report("durable-completion",
                 absl::StrCat("acknowledged ", Describe(*c), " body \"",
                              absl::CHexEscape(c->body()), "\", but later ",
                              Describe(*r)));
        }
      }
    }
  }

  void CheckReplaysMatchStored() {
    const HistoryEvent* first = nullptr;
    for (const HistoryEvent* r : events_) {
      if (!IsRead(*r) || r->outcome() != HistoryEvent::OUTCOME_COMPLETED) {
        continue;
      }
      ++report_.replays;
      const bool sent = std::any_of(
          events_.begin(), events_.end(), [r](const HistoryEvent* c) {
            return c->op() == HistoryEvent::OP_COMPLETE &&
                   MayHaveHappened(*c) && c->invoked_us() <= r->returned_us() &&
                   c->body() == r->reply_body();
          });
      if (!sent) {
        Report("replay-matches-stored",
               absl::StrCat("no Complete sent the replayed result: ",
                            Describe(*r)));
      }
      if (first == nullptr) {
        first = r;
      } else if (r->reply_body() != first->reply_body()) {
        Report("replay-matches-stored",
               absl::StrCat("replays differ: ", Describe(*first), " and ",
                            Describe(*r)));
      }
    }
  }

  void CheckNoSupersededComplete() {
    for (const HistoryEvent* c : events_) {
      if ((c->op() != HistoryEvent::OP_COMPLETE &&
           c->op() != HistoryEvent::OP_EXTEND) ||
          !IsOk(*c)) {
        continue;
      }
      for (const HistoryEvent* r : events_) {
        if (r->op() == HistoryEvent::OP_RELEASE && IsOk(*r) &&
            r->token() == c->token() && r->returned_us() < c->invoked_us()) {
          Report(
              "no-superseded-complete",
              absl::StrCat(Describe(*c), " was accepted after ", Describe(*r)));
          break;
        }
      }
      for (const LeaseWindow& newer : acquisitions_) {
        if (newer.token > c->token() && newer.start_us < c->invoked_us()) {
          Report(
              "no-superseded-complete",
              absl::StrCat(Describe(*c), " was accepted although token ",
                           newer.token, " acquired the key at ", newer.start_us,
                           " (", Describe(*newer.event), ")"));
          break;
        }
      }
    }
  }

  const std::string& key_;
  std::vector<const HistoryEvent*> events_;  // In invocation order.
  HistoryReport& report_;
  std::vector<LeaseWindow> windows_;
  std::vector<LeaseWindow> acquisitions_;
};

}  // namespace

HistoryReport CheckHistory(const std::vector<HistoryEvent>& history) {
  HistoryReport report;
  report.events = static_cast<int64_t>(history.size());
  std::map<std::string, std::vector<const HistoryEvent*>> by_key;
  for (const HistoryEvent& e : history) {
    by_key[e.key()].push_back(&e);
    if (e.result() == HistoryEvent::RESULT_UNKNOWN) ++report.unknown_results;
  }
  report.keys = static_cast<int64_t>(by_key.size());
  for (auto& [key, events] : by_key) {
    std::stable_sort(events.begin(), events.end(),
                     [](const HistoryEvent* a, const HistoryEvent* b) {
                       return a->invoked_us() < b->invoked_us();
                     });
    KeyChecker(key, std::move(events), report).Run();
  }
  return report;
}

absl::StatusOr<std::vector<HistoryEvent>> ReadHistory(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<HistoryEvent> history;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    HistoryEvent event;
    const auto status = google::protobuf::util::JsonStringToMessage(
        line, &event, google::protobuf::util::JsonParseOptions());
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", number, ": not a history event: ", status.ToString()));
    }
    history.push_back(std::move(event));
  }
  return history;
}

absl::StatusOr<std::string> HistoryLine(const HistoryEvent& event) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string line;
  const auto status =
      google::protobuf::util::MessageToJsonString(event, &line, options);
  if (!status.ok()) return absl::InternalError(status.ToString());
  return line;
}

}  // namespace idem::faults
