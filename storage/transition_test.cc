#include "storage/transition.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "storage/key_state_machine.h"
#include "storage/list_pager.h"
#include "storage/testing/store_conformance.h"
#include "tests/testing/status_matchers.h"

namespace idem::storage {
namespace {

// The smallest store the transition layer allows: a map, one mutex, and
// only the primitives (read, decide, write; scan). That it passes the whole
// conformance suite shows that a backend needs nothing else, which is what
// the next backend (PostgreSQL) builds on.
class MemoryStore final : public TransitionStore {
 public:
  struct Data {
    absl::Mutex mu;
    std::map<std::pair<std::string, std::string>, Record> records
        ABSL_GUARDED_BY(mu);
    uint64_t last_token ABSL_GUARDED_BY(mu) = 0;
  };

  MemoryStore(Data* data, const Clock* clock) : data_(data), clock_(clock) {}

  std::optional<absl::StatusOr<BeginResult>> PeekBegin(const BeginCommand&,
                                                       PeekHint*) override {
    return std::nullopt;
  }
  absl::StatusOr<KeySnapshot> Lookup(const KeyId& id) override {
    absl::MutexLock lock(&data_->mu);
    auto it = data_->records.find({id.name_space, id.key});
    return Snapshot(it == data_->records.end() ? nullptr : &it->second,
                    clock_->Now());
  }
  absl::StatusOr<ListPage> List(const ListQuery& query) override {
    absl::MutexLock lock(&data_->mu);
    ListPager pager(query);
    for (auto it =
             data_->records.upper_bound({query.name_space, query.page_token});
         it != data_->records.end() && it->first.first == query.name_space;
         ++it) {
      const KeySnapshot snapshot = Snapshot(&it->second, clock_->Now());
      if (!pager.Offer(it->first.second, &snapshot)) break;
    }
    return pager.Take();
  }
  absl::StatusOr<std::map<std::string, StateCounts>> CountKeys(
      const std::string& name_space) override {
    absl::MutexLock lock(&data_->mu);
    std::map<std::string, StateCounts> counts;
    for (const auto& [name, record] : data_->records) {
      if (!name_space.empty() && name.first != name_space) continue;
      counts[name.first].Add(Snapshot(&record, clock_->Now()));
    }
    return counts;
  }
  StoreStats Stats() override {
    absl::MutexLock lock(&data_->mu);
    StoreStats stats;
    stats.estimated_keys = data_->records.size();
    return stats;
  }
  absl::Status Health() override { return absl::OkStatus(); }

 private:
  void Apply(std::unique_ptr<Transition> transition) override {
    {
      absl::MutexLock lock(&data_->mu);
      const std::pair<std::string, std::string> name{
          transition->id().name_space, transition->id().key};
      auto it = data_->records.find(name);
      absl::StatusOr<Change> change = transition->Decide(
          it == data_->records.end() ? nullptr : &it->second, clock_->Now(),
          [this]()
              ABSL_NO_THREAD_SAFETY_ANALYSIS { return ++data_->last_token; });
      if (change.ok() && change->kind == Change::Kind::kPut) {
        data_->records[name] = std::move(change->record);
      } else if (change.ok() && change->kind == Change::Kind::kDelete) {
        data_->records.erase(name);
      }
    }
    transition->Finish(absl::OkStatus());
  }

  Data* data_;
  const Clock* clock_;
};

class MemoryHarness final : public StoreHarness {
 public:
  explicit MemoryHarness(const Clock* clock) : clock_(clock) { Reopen(); }
  Store& store() override { return *store_; }
  void Reopen() override {
    store_ = std::make_unique<MemoryStore>(&data_, clock_);
  }

 private:
  const Clock* clock_;
  MemoryStore::Data data_;
  std::unique_ptr<MemoryStore> store_;
};

INSTANTIATE_TEST_SUITE_P(
    TransitionLayer, StoreConformanceTest,
    ::testing::Values(StoreBackend{"MemoryStore",
                                   [](const Clock* clock) {
                                     return std::make_unique<MemoryHarness>(
                                         clock);
                                   },
                                   /*tokens_grow_across_keys=*/true,
                                   /*peeks=*/false}),
    [](const ::testing::TestParamInfo<StoreBackend>& info) {
      return info.param.name;
    });

// The contract of one Transition, as a store drives it.
class TransitionTest : public ::testing::Test {
 protected:
  const absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  uint64_t tokens_ = 0;
  uint64_t NextToken() { return ++tokens_; }

  BeginCommand Begin(const std::string& fingerprint = "f") const {
    BeginCommand command;
    command.id = {"ns", "k"};
    command.fingerprint = fingerprint;
    command.lease = absl::Seconds(30);
    command.retention = absl::Hours(1);
    return command;
  }
};

TEST_F(TransitionTest, AnAcquisitionIsAPutAndItsAnswerComesWithFinish) {
  std::optional<absl::StatusOr<BeginResult>> answer;
  auto t = BeginTransition(
      Begin(), [&](absl::StatusOr<BeginResult> r) { answer = std::move(r); });
  EXPECT_EQ(t->id().key, "k");
  EXPECT_EQ(t->payload_bytes(), 1u);  // The fingerprint.
  absl::StatusOr<Change> change =
      t->Decide(nullptr, now_, [&] { return NextToken(); });
  ASSERT_OK(change);
  EXPECT_EQ(change->kind, Change::Kind::kPut);
  EXPECT_EQ(change->record.state(), Record::STATE_IN_PROGRESS);
  EXPECT_FALSE(answer.has_value());  // Nothing before the store finishes.
  t->Finish(absl::OkStatus());
  ASSERT_TRUE(answer.has_value());
  ASSERT_OK(*answer);
  EXPECT_EQ((*answer)->outcome, BeginOutcome::kAcquired);
  EXPECT_EQ((*answer)->token, 1u);
}

TEST_F(TransitionTest, TheLastDecisionIsTheAnswer) {
  // A store that lost a compare-and-set race decides again on the new read.
  Decision<BeginResult> held =
      DecideBegin(nullptr, Begin("other"), now_, [&] { return NextToken(); });
  ASSERT_TRUE(held.write.has_value());
  std::optional<absl::StatusOr<BeginResult>> answer;
  auto t = BeginTransition(
      Begin(), [&](absl::StatusOr<BeginResult> r) { answer = std::move(r); });
  ASSERT_OK(t->Decide(nullptr, now_, [&] { return NextToken(); }));
  absl::StatusOr<Change> again =
      t->Decide(&*held.write, now_, [&] { return NextToken(); });
  ASSERT_OK(again);
  EXPECT_EQ(again->kind, Change::Kind::kNone);
  t->Finish(absl::OkStatus());
  ASSERT_OK(*answer);
  EXPECT_EQ((*answer)->outcome, BeginOutcome::kMismatch);
}

TEST_F(TransitionTest, OnlyAReplayRestsOnTheStoredRecord) {
  Decision<BeginResult> acquired =
      DecideBegin(nullptr, Begin(), now_, [&] { return NextToken(); });
  CompleteCommand complete;
  complete.id = {"ns", "k"};
  complete.token = 1;
  complete.result.body = "done";
  Decision<CompleteResult> completed =
      DecideComplete(&*acquired.write, complete, now_);
  ASSERT_TRUE(completed.write.has_value());

  auto ignore = [](const absl::StatusOr<BeginResult>&) {};
  // In progress: a refusal promises nothing about the record.
  absl::StatusOr<Change> in_progress =
      BeginTransition(Begin(), ignore)->Decide(&*acquired.write, now_, [&] {
        return NextToken();
      });
  ASSERT_OK(in_progress);
  EXPECT_EQ(in_progress->kind, Change::Kind::kNone);
  EXPECT_FALSE(in_progress->answer_rests_on_record);
  // A replay gives the stored result: it must be there for good.
  absl::StatusOr<Change> replay =
      BeginTransition(Begin(), ignore)->Decide(&*completed.write, now_, [&] {
        return NextToken();
      });
  ASSERT_OK(replay);
  EXPECT_TRUE(replay->answer_rests_on_record);
  // So does a repeated Complete.
  absl::StatusOr<Change> repeated =
      CompleteTransition(complete, [](const absl::StatusOr<CompleteResult>&) {
      })->Decide(&*completed.write, now_, [&] { return NextToken(); });
  ASSERT_OK(repeated);
  EXPECT_EQ(repeated->kind, Change::Kind::kNone);
  EXPECT_TRUE(repeated->answer_rests_on_record);
}

TEST_F(TransitionTest, ARefusalIsTheAnswerAndWritesNothing) {
  absl::Status answer = absl::UnknownError("not finished");
  ReleaseCommand release;
  release.id = {"ns", "k"};
  release.token = 7;
  auto t = ReleaseTransition(release,
                             [&](absl::Status s) { answer = std::move(s); });
  absl::StatusOr<Change> change =
      t->Decide(nullptr, now_, [&] { return NextToken(); });
  EXPECT_FALSE(change.ok());
  t->Finish(absl::OkStatus());
  EXPECT_EQ(answer.code(), change.status().code());
  EXPECT_EQ(answer.message(), change.status().message());
  EXPECT_EQ(tokens_, 0u);
}

TEST_F(TransitionTest, AStoreFailureReplacesTheDecision) {
  std::optional<absl::StatusOr<BeginResult>> answer;
  auto t = BeginTransition(
      Begin(), [&](absl::StatusOr<BeginResult> r) { answer = std::move(r); });
  ASSERT_OK(t->Decide(nullptr, now_, [&] { return NextToken(); }));
  t->Finish(absl::UnavailableError("disk"));
  EXPECT_EQ(answer->status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(TransitionTest, FinishingAnUndecidedChangeIsAnInternalError) {
  std::optional<absl::StatusOr<CompleteResult>> answer;
  CompleteCommand complete;
  complete.id = {"ns", "k"};
  auto t = CompleteTransition(
      complete, [&](const absl::StatusOr<CompleteResult>& r) { answer = r; });
  t->Finish(absl::OkStatus());
  EXPECT_EQ(answer->status().code(), absl::StatusCode::kInternal);
}

TEST_F(TransitionTest, DeleteRemovesAnyRecordAndSaysWhetherItWasLive) {
  Decision<BeginResult> acquired =
      DecideBegin(nullptr, Begin(), now_, [&] { return NextToken(); });
  std::optional<absl::StatusOr<bool>> existed;
  auto live = DeleteTransition(
      {"ns", "k"}, [&](const absl::StatusOr<bool>& r) { existed = r; });
  absl::StatusOr<Change> change =
      live->Decide(&*acquired.write, now_, [&] { return NextToken(); });
  ASSERT_OK(change);
  EXPECT_EQ(change->kind, Change::Kind::kDelete);
  live->Finish(absl::OkStatus());
  EXPECT_TRUE(**existed);

  // An expired record is deleted too, and was not live.
  auto expired = DeleteTransition(
      {"ns", "k"}, [&](const absl::StatusOr<bool>& r) { existed = r; });
  change = expired->Decide(&*acquired.write, now_ + absl::Hours(1000),
                           [&] { return NextToken(); });
  ASSERT_OK(change);
  EXPECT_EQ(change->kind, Change::Kind::kDelete);
  expired->Finish(absl::OkStatus());
  EXPECT_FALSE(**existed);

  auto absent = DeleteTransition(
      {"ns", "k"}, [&](const absl::StatusOr<bool>& r) { existed = r; });
  change = absent->Decide(nullptr, now_, [&] { return NextToken(); });
  ASSERT_OK(change);
  EXPECT_EQ(change->kind, Change::Kind::kNone);
  absent->Finish(absl::OkStatus());
  EXPECT_FALSE(**existed);
}

}  // namespace
}  // namespace idem::storage
