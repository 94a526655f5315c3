#include "storage/redis/redis_cluster_store.h"

#include <hiredis/hiredis.h>
#include <poll.h>

#include <algorithm>
#include <random>
#include <type_traits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "storage/key_state_machine.h"
#include "storage/list_pager.h"
#include "storage/record_codec.h"

namespace idem::storage {
namespace {

// KEYS: record, counter. Returns {seconds, microseconds, record, counter}
// read at one instant of Redis's clock.
constexpr char kReadScript[] = R"lua(
local t = redis.call('TIME')
return {t[1], t[2], redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
)lua";

// KEYS: record, counter. ARGV: the record as read ('' if absent), the new
// record, its TTL in ms ('0': delete the record), the token issued ('0':
// none), the channel to announce the change on ('' : none). Returns 1 when
// it wrote; 0, changing nothing, when the record is no longer the one read;
// 2 when the record already is the one to write (a retry of this very
// write whose reply was lost, or an identical write by another caller),
// after a no-op write so that a WAIT behind it covers that record.
constexpr char kApplyScript[] = R"lua(
local current = redis.call('GET', KEYS[1])
if current == false then current = '' end
if current ~= ARGV[1] then
  if (ARGV[3] == '0' and current == '') or
     (ARGV[3] ~= '0' and current == ARGV[2]) then
    redis.call('INCRBY', KEYS[2], 0)
    return 2
  end
  return 0
end
-- Announced first: if the channel is refused (an ACL), nothing is written.
-- Subscribers read the key only after this script has finished.
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], KEYS[1]) end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if ARGV[4] ~= '0' then
  -- Decimal strings compared by length, then text: exact past 2^53, where
  -- Lua's numbers (doubles) are not.
  local counter = redis.call('GET', KEYS[2]) or '0'
  if #ARGV[4] > #counter or (#ARGV[4] == #counter and ARGV[4] > counter) then
    redis.call('SET', KEYS[2], ARGV[4])
  end
end
return 1
)lua";

// KEYS: record, counter. ARGV: the record as read ('' if absent). An answer
// given without a write rests on the record: makes a no-op write (so that a
// WAIT behind it covers the record) only if the record is still the one
// read on this master; returns 1 then, else 0.
constexpr char kConfirmScript[] = R"lua(
local current = redis.call('GET', KEYS[1])
if current == false then current = '' end
if current ~= ARGV[1] then return 0 end
redis.call('INCRBY', KEYS[2], 0)
return 1
)lua";

// While a slot is being migrated Redis refuses scripts whose keys are split
// between the two nodes (TRYAGAIN), as every new key's are (its record on
// neither node, the slot's counter on one). Transitions then use these
// single-key scripts, each routed (and redirected) on its own: the counter
// is raised first, then the record is compared-and-set, so a token is
// never issued twice for one key (a record written after the raise always
// sees it; a lost race on the record retries with a new read).

// KEYS: record. Returns {seconds, microseconds, record}.
constexpr char kReadOneScript[] = R"lua(
local t = redis.call('TIME')
return {t[1], t[2], redis.call('GET', KEYS[1])}
)lua";

// KEYS: counter. ARGV: a token issued. Raises the counter to it (decimal
// strings compared as in kApplyScript); always writes, so that a WAIT
// behind it covers the counter. Returns 1.
constexpr char kRaiseScript[] = R"lua(
local counter = redis.call('GET', KEYS[1]) or '0'
if #ARGV[1] > #counter or (#ARGV[1] == #counter and ARGV[1] > counter) then
  counter = ARGV[1]
end
redis.call('SET', KEYS[1], counter)
return 1
)lua";

// kApplyScript for the record alone (KEYS: record; ARGV: read, new, TTL,
// channel). A found-written record gets a no-op write of itself.
constexpr char kApplyOneScript[] = R"lua(
local current = redis.call('GET', KEYS[1])
if current == false then current = '' end
if current ~= ARGV[1] then
  if (ARGV[3] == '0' and current == '') or
     (ARGV[3] ~= '0' and current == ARGV[2]) then
    if current ~= '' then redis.call('SET', KEYS[1], current, 'KEEPTTL') end
    return 2
  end
  return 0
end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], KEYS[1]) end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
)lua";

// kConfirmScript for the record alone: the no-op write is the record's.
constexpr char kConfirmOneScript[] = R"lua(
local current = redis.call('GET', KEYS[1])
if current == false then current = '' end
if current ~= ARGV[1] then return 0 end
if current ~= '' then redis.call('SET', KEYS[1], current, 'KEEPTTL') end
return 1
)lua";

// A transition that keeps losing its compare-and-set to other writers of
// the same key gives up after this many rounds (ABORTED).
constexpr int kMaxRounds = 64;

// Escapes glob characters for SCAN MATCH.
std::string GlobEscape(absl::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

absl::Status Unexpected(absl::string_view what, const RedisReply& reply) {
  return absl::UnavailableError(absl::StrCat(
      "Redis answered ", what, " unexpectedly",
      reply.is_error() ? absl::StrCat(": ", reply.text) : std::string()));
}

std::string InternalOwner() {
  thread_local std::mt19937_64 random(std::random_device{}());
  return absl::StrCat("idem-internal:", absl::Hex(random()),
                      absl::Hex(random()));
}

}  // namespace

RedisClusterStore::RedisClusterStore(RedisClusterStoreOptions options,
                                     std::unique_ptr<RedisCluster> cluster)
    : options_(std::move(options)),
      cluster_(std::move(cluster)),
      record_prefix_(absl::StrCat(options_.prefix, ":r:{")),
      channel_(absl::StrCat(options_.prefix, ":changes")) {
  // One tag per slot for the token counters: short numbers, first found
  // wins. Every slot is covered well before a million.
  counter_tags_.resize(kRedisSlots);
  int filled = 0;
  for (uint32_t i = 0; filled < kRedisSlots; ++i) {
    std::string tag = absl::StrCat(i);
    std::string& entry = counter_tags_[static_cast<size_t>(KeySlot(tag))];
    if (entry.empty()) {
      entry = std::move(tag);
      ++filled;
    }
  }
}

absl::StatusOr<std::unique_ptr<RedisClusterStore>> RedisClusterStore::Open(
    RedisClusterStoreOptions options) {
  if (options.threads < 1 || options.wait_replicas < 0 ||
      options.prefix.empty() ||
      options.prefix.find_first_of("{}*?[]\\") != std::string::npos ||
      (options.wait_replicas > 0 &&
       options.wait_timeout < absl::Milliseconds(1))) {
    return absl::InvalidArgumentError(
        "Redis store: threads must be >= 1, wait_replicas >= 0, "
        "wait_timeout >= 1ms (WAIT 0 waits forever) and the prefix not "
        "empty, without braces or glob characters");
  }
  // A WAIT may take wait_timeout before its reply: the connection must not
  // give up on it first.
  if (options.wait_replicas > 0) {
    options.cluster.command_timeout += options.wait_timeout;
  }
  absl::StatusOr<std::unique_ptr<RedisCluster>> cluster =
      RedisCluster::Connect(options.cluster);
  if (!cluster.ok()) return cluster.status();
  std::unique_ptr<RedisClusterStore> store(
      new RedisClusterStore(std::move(options), *std::move(cluster)));
  if (absl::Status settings = store->CheckNewMasters(); !settings.ok()) {
    return settings;
  }
  // Loaded on the masters now; one that cannot be reached (mid-failover)
  // or joins later gets them on first use (NOSCRIPT → EVAL).
  for (auto [script, sha] :
       {std::pair{kReadScript, &store->read_sha_},
        std::pair{kApplyScript, &store->apply_sha_},
        std::pair{kConfirmScript, &store->confirm_sha_},
        std::pair{kReadOneScript, &store->read_one_sha_},
        std::pair{kRaiseScript, &store->raise_sha_},
        std::pair{kApplyOneScript, &store->apply_one_sha_},
        std::pair{kConfirmOneScript, &store->confirm_one_sha_}}) {
    for (const std::string& master : store->cluster_->Masters()) {
      absl::StatusOr<RedisReply> loaded =
          store->cluster_->RunOnNode(master, {"SCRIPT", "LOAD", script});
      if (!loaded.ok()) continue;
      if (loaded->kind != RedisReply::Kind::kString) {
        return absl::FailedPreconditionError(
            absl::StrCat("Redis node ", master,
                         " refused the Idem scripts: ", loaded->text));
      }
      *sha = loaded->text;
    }
    if (sha->empty()) {
      return absl::UnavailableError(
          "no Redis master could load the Idem scripts");
    }
  }
  if (absl::Status probed = store->ProbeMasters(); !probed.ok()) {
    return probed;
  }
  {
    absl::MutexLock lock(&store->mu_);
    store->health_ = absl::OkStatus();
  }
  for (int i = 0; i < store->options_.threads; ++i) {
    store->workers_.emplace_back([s = store.get()] { s->Work(); });
  }
  store->watcher_ = std::thread([s = store.get()] { s->Watch(); });
  return store;
}

RedisClusterStore::~RedisClusterStore() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& worker : workers_) worker.join();
  stop_ = true;
  if (watcher_.joinable()) watcher_.join();
  if (subscriber_.joinable()) subscriber_.join();
}

std::string RedisClusterStore::RecordKey(const KeyId& id) const {
  std::string key = absl::StrCat(record_prefix_, id.name_space);
  key.push_back('\0');
  absl::StrAppend(&key, id.key, "}");
  return key;
}

std::optional<KeyId> RedisClusterStore::ParseRecordKey(
    absl::string_view record_key) const {
  if (!absl::ConsumePrefix(&record_key, record_prefix_) ||
      !absl::ConsumeSuffix(&record_key, "}")) {
    return std::nullopt;
  }
  // Namespaces are printable: the first NUL ends it.
  const size_t separator = record_key.find('\0');
  if (separator == absl::string_view::npos) return std::nullopt;
  return KeyId{std::string(record_key.substr(0, separator)),
               std::string(record_key.substr(separator + 1))};
}

std::string RedisClusterStore::CounterKey(int slot) const {
  return absl::StrCat(options_.prefix, ":t:{",
                      counter_tags_[static_cast<size_t>(slot)], "}");
}

absl::StatusOr<RedisReply> RedisClusterStore::RunScript(
    int slot, const std::string& script, const std::string& sha,
    const RedisCommand& keys_and_args, bool wait, bool* unconfirmed,
    bool tryagain_is_reply) {
  RedisCommand call = {"EVALSHA", sha};
  call.insert(call.end(), keys_and_args.begin(), keys_and_args.end());
  std::vector<RedisCommand> pipeline = {call};
  if (wait) {
    pipeline.push_back(
        {"WAIT", absl::StrCat(options_.wait_replicas),
         absl::StrCat(absl::ToInt64Milliseconds(options_.wait_timeout))});
  }
  absl::StatusOr<std::vector<RedisReply>> replies =
      cluster_->RunPipeline(slot, pipeline, tryagain_is_reply);
  if (!replies.ok()) return replies.status();
  if ((*replies)[0].error_code() == "NOSCRIPT") {
    // A master that never saw the script (a failover, a new node): EVAL
    // runs and caches it there.
    pipeline[0][0] = "EVAL";
    pipeline[0][1] = script;
    replies = cluster_->RunPipeline(slot, pipeline, tryagain_is_reply);
    if (!replies.ok()) return replies.status();
  }
  if (wait) {
    // Only a script that wrote (1) is confirmed here; the caller confirms
    // the other outcomes itself if it must.
    const RedisReply& result = (*replies)[0];
    if (result.kind == RedisReply::Kind::kInteger &&
        (result.integer == 1 || result.integer == 2)) {
      absl::Status acknowledged = CheckAcknowledged((*replies)[1]);
      if (!acknowledged.ok()) {
        if (unconfirmed != nullptr) *unconfirmed = true;
        return acknowledged;
      }
    }
  }
  return std::move((*replies)[0]);
}

absl::StatusOr<bool> RedisClusterStore::ConfirmReplicated(
    const std::string& key, int slot, const std::string& raw, bool migrating) {
  // WAIT counts replicas up to this connection's last write: the script
  // makes one (a replicated no-op) if the record is still the one read,
  // and the WAIT behind it covers every earlier change on that master.
  absl::StatusOr<RedisReply> confirmed =
      migrating ? RunScript(slot, kConfirmOneScript, confirm_one_sha_,
                            {"1", key, raw}, /*wait=*/true)
                : RunScript(slot, kConfirmScript, confirm_sha_,
                            {"2", key, CounterKey(slot), raw}, /*wait=*/true,
                            nullptr, /*tryagain_is_reply=*/true);
  if (!confirmed.ok()) return confirmed.status();
  if (!migrating && confirmed->error_code() == "TRYAGAIN") {
    return ConfirmReplicated(key, slot, raw, /*migrating=*/true);
  }
  if (confirmed->kind != RedisReply::Kind::kInteger) {
    return Unexpected("the confirm script", *confirmed);
  }
  return confirmed->integer == 1;
}

absl::Status RedisClusterStore::CheckAcknowledged(const RedisReply& acks) {
  if (acks.kind != RedisReply::Kind::kInteger) return Unexpected("WAIT", acks);
  if (acks.integer < options_.wait_replicas) {
    return absl::UnavailableError(absl::StrCat(
        "the change reached the Redis master but only ", acks.integer, " of ",
        options_.wait_replicas, " replicas acknowledged it within ",
        absl::FormatDuration(options_.wait_timeout),
        " (--redis-wait-replicas); it may be lost in a failover: retry"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RedisClusterStore::KeyRead> RedisClusterStore::Read(
    const std::string& key, int slot) {
  absl::StatusOr<RedisReply> reply =
      RunScript(slot, kReadScript, read_sha_, {"2", key, CounterKey(slot)},
                /*wait=*/false, nullptr, /*tryagain_is_reply=*/true);
  if (!reply.ok()) return reply.status();
  if (reply->error_code() == "TRYAGAIN") return ReadMigrating(key, slot);
  if (reply->kind != RedisReply::Kind::kArray || reply->elements.size() != 4) {
    return Unexpected("the read script", *reply);
  }
  return ParseRead(*reply, reply->elements[3]);
}

absl::StatusOr<RedisClusterStore::KeyRead> RedisClusterStore::ReadMigrating(
    const std::string& key, int slot) {
  absl::StatusOr<RedisReply> reply = RunScript(
      slot, kReadOneScript, read_one_sha_, {"1", key}, /*wait=*/false);
  if (!reply.ok()) return reply.status();
  if (reply->kind != RedisReply::Kind::kArray || reply->elements.size() != 3) {
    return Unexpected("the single-key read script", *reply);
  }
  absl::StatusOr<RedisReply> counter =
      cluster_->Run(slot, {"GET", CounterKey(slot)});
  if (!counter.ok()) return counter.status();
  absl::StatusOr<KeyRead> read = ParseRead(*reply, *counter);
  if (read.ok()) read->migrating = true;
  return read;
}

absl::StatusOr<RedisClusterStore::KeyRead> RedisClusterStore::ParseRead(
    const RedisReply& time_and_record, const RedisReply& counter) const {
  const std::vector<RedisReply>& parts = time_and_record.elements;
  int64_t seconds = 0;
  int64_t micros = 0;
  if (!absl::SimpleAtoi(parts[0].text, &seconds) ||
      !absl::SimpleAtoi(parts[1].text, &micros)) {
    return Unexpected("TIME", time_and_record);
  }
  KeyRead read;
  read.now = options_.clock != nullptr
                 ? options_.clock->Now()
                 : absl::FromUnixSeconds(seconds) + absl::Microseconds(micros);
  if (parts[2].kind == RedisReply::Kind::kString) {
    read.raw = parts[2].text;
    absl::StatusOr<Record> record = DecodeRecord(read.raw);
    if (!record.ok()) return record.status();
    read.record = *std::move(record);
  }
  if (counter.kind == RedisReply::Kind::kString &&
      !absl::SimpleAtoi(counter.text, &read.counter)) {
    return Unexpected("the token counter", counter);
  }
  return read;
}

absl::Status RedisClusterStore::Run(Transition& transition,
                                    bool undo_unconfirmed) {
  const std::string key = RecordKey(transition.id());
  const int slot = KeySlot(key);
  // Every round trip of this operation shares one deadline: the caller's,
  // or --redis-timeout, whichever is sooner.
  if (absl::Now() >= transition.deadline()) {
    return absl::DeadlineExceededError(
        "the caller's deadline passed before the change was tried; nothing "
        "was written");
  }
  const RedisCluster::ScopedDeadline scoped(std::min(
      transition.deadline(), absl::Now() + options_.cluster.retry_deadline));
  for (int round = 0; round < kMaxRounds; ++round) {
    absl::StatusOr<KeyRead> read = Read(key, slot);
    if (!read.ok()) return read.status();
    uint64_t issued_token = 0;
    auto next_token = [&]() -> uint64_t {
      // The counter covers every token of the slot; the record's own token
      // is there for safety should the two ever disagree.
      issued_token = std::max(read->counter, read->record.has_value()
                                                 ? read->record->token()
                                                 : uint64_t{0}) +
                     1;
      return issued_token;
    };
    absl::StatusOr<Change> change =
        transition.Decide(read->record.has_value() ? &*read->record : nullptr,
                          read->now, next_token);
    // Refused: the refusal is the answer, and nothing was written.
    if (!change.ok()) return absl::OkStatus();
    if (change->kind == Change::Kind::kNone) {
      // Nothing to write (a replay, a repeated Complete or Release): the
      // answer still rests on the stored record, which must be on the
      // replicas too before it is given with --redis-wait-replicas.
      if (options_.wait_replicas == 0 || !change->answer_rests_on_record) {
        return absl::OkStatus();
      }
      absl::StatusOr<bool> confirmed =
          ConfirmReplicated(key, slot, read->raw, read->migrating);
      if (!confirmed.ok()) return confirmed.status();
      if (*confirmed) return absl::OkStatus();
      continue;  // The record changed meanwhile: decide again.
    }

    const bool put = change->kind == Change::Kind::kPut;
    std::string value;
    std::string ttl_ms = "0";
    if (put) {
      value = EncodeRecord(change->record);
      // Redis drops the record at its expiry (a little after, never
      // before: reads apply the exact expiry themselves).
      const absl::Duration left =
          absl::FromUnixMicros(change->record.expires_at_us()) - read->now;
      ttl_ms = absl::StrCat(
          std::max<int64_t>(1, absl::ToInt64Milliseconds(left) + 1));
    }
    const bool announce =
        !put || change->record.state() != Record::STATE_IN_PROGRESS;
    bool unconfirmed = false;
    const bool wait = options_.wait_replicas > 0;
    if (read->migrating && issued_token != 0) {
      // The counter first: any later read of it covers this token.
      absl::StatusOr<RedisReply> raised =
          RunScript(slot, kRaiseScript, raise_sha_,
                    {"1", CounterKey(slot), absl::StrCat(issued_token)}, wait);
      if (!raised.ok()) return raised.status();
      if (raised->is_error()) return Unexpected("the raise script", *raised);
    }
    absl::StatusOr<RedisReply> applied =
        read->migrating
            ? RunScript(slot, kApplyOneScript, apply_one_sha_,
                        {"1", key, read->raw, value, ttl_ms,
                         announce ? channel_ : ""},
                        wait, &unconfirmed)
            : RunScript(slot, kApplyScript, apply_sha_,
                        {"2", key, CounterKey(slot), read->raw, value, ttl_ms,
                         absl::StrCat(issued_token), announce ? channel_ : ""},
                        wait, &unconfirmed, /*tryagain_is_reply=*/true);
    // A migration began since the read: read again (single-key then).
    if (applied.ok() && applied->error_code() == "TRYAGAIN") continue;
    if (!applied.ok() && unconfirmed && undo_unconfirmed) {
      return Undo(key, slot, *read, value, applied.status());
    }
    if (!applied.ok()) return applied.status();
    if (applied->kind != RedisReply::Kind::kInteger) {
      return Unexpected("the apply script", *applied);
    }
    // Written (1), or found written (2): WAITed with it.
    if (applied->integer == 1 || applied->integer == 2) {
      return absl::OkStatus();
    }
    // Another replica changed the key since the read: decide again.
  }
  return absl::AbortedError(absl::StrCat("key changed by other callers ",
                                         kMaxRounds,
                                         " times during one operation; retry"));
}

absl::Status RedisClusterStore::Undo(const std::string& key, int slot,
                                     const KeyRead& read,
                                     const std::string& written,
                                     const absl::Status& unconfirmed) {
  // Back to the record read, if the master still holds what was written.
  // Not WAITed: the replicas never confirmed the write either.
  std::string ttl_ms = "0";
  if (read.record.has_value()) {
    const absl::Duration left =
        absl::FromUnixMicros(read.record->expires_at_us()) - read.now;
    ttl_ms =
        absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(left) + 1));
  }
  absl::StatusOr<RedisReply> undone =
      read.migrating
          ? RunScript(slot, kApplyOneScript, apply_one_sha_,
                      {"1", key, written, read.raw, ttl_ms, channel_},
                      /*wait=*/false)
          : RunScript(slot, kApplyScript, apply_sha_,
                      {"2", key, CounterKey(slot), written, read.raw, ttl_ms,
                       "0", channel_},
                      /*wait=*/false);
  if (undone.ok() && undone->kind == RedisReply::Kind::kInteger &&
      (undone->integer == 1 || undone->integer == 2)) {
    return absl::UnavailableError(absl::StrCat(
        "the key could not be acquired safely: ", options_.wait_replicas,
        " Redis replica(s) did not confirm the lease within ",
        absl::FormatDuration(options_.wait_timeout),
        " (--redis-wait-replicas), so it was undone; retry the Begin"));
  }
  return absl::UnavailableError(absl::StrCat(
      unconfirmed.message(),
      "; the unconfirmed lease could not be undone and may hold the key "
      "until it lapses: retry the Begin with an owner to resume it"));
}

void RedisClusterStore::Enqueue(std::unique_ptr<Transition> transition,
                                bool undo_unconfirmed) {
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      refused = absl::UnavailableError("the Redis store is stopping");
    } else if (queue_.size() >= options_.max_pending) {
      // As the RocksDB store does when its writer is behind: overload.
      refused = absl::ResourceExhaustedError(absl::StrCat(
          "the server is overloaded: ", options_.max_pending,
          " changes are already waiting for Redis (--max-pending-writes); "
          "retry with backoff"));
    } else {
      queue_.push_back({std::move(transition), undo_unconfirmed});
      return;
    }
  }
  transition->Finish(refused);
}

void RedisClusterStore::Work() {
  for (;;) {
    Queued next;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](RedisClusterStore* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
            return s->stopping_ || !s->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // Stopping, and nothing left to do.
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    next.transition->Finish(Run(*next.transition, next.undo_unconfirmed));
  }
}

void RedisClusterStore::Apply(std::unique_ptr<Transition> transition) {
  Enqueue(std::move(transition), /*undo_unconfirmed=*/false);
}

void RedisClusterStore::BeginAsync(const BeginCommand& command,
                                   Done<BeginResult> done) {
  if (!command.owner.empty()) {
    TransitionStore::BeginAsync(command, std::move(done));
    return;
  }
  // A reply lost between Redis and this process is retried internally;
  // an owner makes that retry re-acquire the same lease instead of seeing
  // its own attempt "in progress". Nobody else knows that owner, so an
  // acquisition the replicas cannot confirm is undone rather than left to
  // lock the key for its lease; a caller's own owner resumes it instead.
  BeginCommand owned = command;
  owned.owner = InternalOwner();
  Enqueue(BeginTransition(owned, std::move(done)), /*undo_unconfirmed=*/true);
}

std::optional<absl::StatusOr<BeginResult>> RedisClusterStore::PeekBegin(
    const BeginCommand&, PeekHint* hint) {
  if (hint != nullptr) *hint = {};
  return std::nullopt;
}

absl::StatusOr<KeySnapshot> RedisClusterStore::Lookup(const KeyId& id) {
  const std::string key = RecordKey(id);
  absl::StatusOr<KeyRead> read = Read(key, KeySlot(key));
  if (!read.ok()) return read.status();
  return Snapshot(read->record.has_value() ? &*read->record : nullptr,
                  read->now);
}

absl::StatusOr<std::vector<std::string>> RedisClusterStore::ScanKeys(
    const std::string& match) {
  std::vector<std::string> keys;
  for (const std::string& master : cluster_->Masters()) {
    std::string cursor = "0";
    do {
      absl::StatusOr<RedisReply> page = cluster_->RunOnNode(
          master, {"SCAN", cursor, "MATCH", match, "COUNT", "1000"});
      if (!page.ok()) return page.status();
      if (page->kind != RedisReply::Kind::kArray ||
          page->elements.size() != 2) {
        return Unexpected("SCAN", *page);
      }
      cursor = page->elements[0].text;
      for (const RedisReply& key : page->elements[1].elements) {
        keys.push_back(key.text);
      }
    } while (cursor != "0");
  }
  // A key seen twice (a slot migrating during the scan) counts once.
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  return keys;
}

absl::StatusOr<ListPage> RedisClusterStore::List(const ListQuery& query) {
  std::string match =
      absl::StrCat(record_prefix_, GlobEscape(query.name_space));
  match.push_back('\0');
  match.push_back('*');
  absl::StatusOr<std::vector<std::string>> record_keys = ScanKeys(match);
  if (!record_keys.ok()) return record_keys.status();
  // Pages follow key order: sort the keys themselves (the record keys'
  // closing brace would sort "k10}" before "k1}").
  std::vector<std::pair<std::string, std::string>> keys;  // key, record key
  for (const std::string& record_key : *record_keys) {
    std::optional<KeyId> id = ParseRecordKey(record_key);
    if (!id.has_value()) continue;
    keys.emplace_back(std::move(id->key), record_key);
  }
  std::sort(keys.begin(), keys.end());
  ListPager pager(query);
  for (auto& [key, record_key] : keys) {
    if (!query.page_token.empty() && key <= query.page_token) continue;
    absl::StatusOr<KeyRead> read = Read(record_key, KeySlot(record_key));
    if (!read.ok() && read.status().code() != absl::StatusCode::kDataLoss) {
      return read.status();
    }
    // Undecodable (DATA_LOSS, as Lookup reports it) or expired since the
    // scan: skipped.
    const bool readable = read.ok() && read->record.has_value();
    const KeySnapshot snapshot =
        readable ? Snapshot(&*read->record, read->now) : KeySnapshot{};
    if (!pager.Offer(key, readable ? &snapshot : nullptr)) break;
  }
  return pager.Take();
}

absl::StatusOr<std::map<std::string, StateCounts>> RedisClusterStore::CountKeys(
    const std::string& name_space) {
  std::string match = record_prefix_;
  if (!name_space.empty()) {
    absl::StrAppend(&match, GlobEscape(name_space));
    match.push_back('\0');
  }
  match.push_back('*');
  absl::StatusOr<std::vector<std::string>> record_keys = ScanKeys(match);
  if (!record_keys.ok()) return record_keys.status();
  std::map<std::string, StateCounts> counts;
  for (const std::string& record_key : *record_keys) {
    const std::optional<KeyId> id = ParseRecordKey(record_key);
    if (!id.has_value()) continue;
    absl::StatusOr<KeyRead> read = Read(record_key, KeySlot(record_key));
    if (!read.ok()) {
      if (read.status().code() == absl::StatusCode::kDataLoss) continue;
      return read.status();
    }
    if (!read->record.has_value()) continue;
    counts[id->name_space].Add(Snapshot(&*read->record, read->now));
  }
  // Namespaces whose keys all expired are not reported, as with RocksDB.
  std::erase_if(counts, [](const auto& entry) {
    return entry.second.in_progress == 0 && entry.second.completed == 0;
  });
  return counts;
}

StoreStats RedisClusterStore::Stats() {
  StoreStats stats;
  // Quick (kHealthTimeout) per master: a metrics scrape, and /healthz
  // behind it on the same thread, must not wait out a hung master.
  for (const std::string& master : cluster_->Masters()) {
    absl::StatusOr<RedisReply> size = cluster_->RunQuick(master, {"DBSIZE"});
    if (size.ok() && size->kind == RedisReply::Kind::kInteger &&
        size->integer > 0) {
      stats.estimated_keys += static_cast<uint64_t>(size->integer);
    }
  }
  SlotMigrationStats& migrations = stats.slot_migrations.emplace();
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (const auto& entry : open_migrations_) {
    ++migrations.open;
    migrations.oldest = std::max(migrations.oldest, now - entry.second.since);
  }
  return stats;
}

absl::Status RedisClusterStore::CheckMasterSettings(const std::string& master) {
  auto setting = [&](const char* name) -> std::optional<std::string> {
    absl::StatusOr<RedisReply> got =
        cluster_->RunOnNode(master, {"CONFIG", "GET", name});
    if (!got.ok() || got->kind != RedisReply::Kind::kArray ||
        got->elements.size() != 2) {
      return std::nullopt;  // CONFIG disabled (managed services), or down.
    }
    return got->elements[1].text;
  };
  auto note = [&](std::string text) {
    absl::MutexLock lock(&mu_);
    durability_notes_.push_back(std::move(text));
  };
  // Eviction would silently drop leases, results or token counters.
  const std::optional<std::string> policy = setting("maxmemory-policy");
  if (policy.has_value() && *policy != "noeviction") {
    return absl::FailedPreconditionError(absl::StrCat(
        "Redis node ", master, " has maxmemory-policy ", *policy,
        ": Idem needs noeviction (an evicted record or token counter breaks "
        "its promises); CONFIG SET maxmemory-policy noeviction"));
  }
  const std::optional<std::string> aof = setting("appendonly");
  if (!policy.has_value() || !aof.has_value()) {
    note(absl::StrCat(master,
                      ": its settings cannot be read (CONFIG refused); "
                      "noeviction and appendonly yes are taken on trust"));
    return absl::OkStatus();
  }
  if (*aof != "yes") {
    if (options_.accept_loss_on_restart) {
      note(absl::StrCat(
          master,
          ": appendonly no, accepted by --redis-accept-loss-on-restart: a "
          "restart before failover empties it and its replica, losing "
          "acknowledged results and sending tokens backwards"));
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "Redis node ", master,
        " has appendonly no: killed and restarted before its node timeout, "
        "a master without an append-only file comes back empty and its "
        "replica resyncs from it, so acknowledged results are lost (the "
        "work runs again) and fencing tokens go backwards. Set appendonly "
        "yes and appendfsync always (CONFIG SET appendonly yes; CONFIG SET "
        "appendfsync always; CONFIG REWRITE), or accept that risk with "
        "--redis-accept-loss-on-restart (docs/cluster.md)"));
  }
  const std::optional<std::string> fsync = setting("appendfsync");
  if (fsync.has_value() && *fsync != "always") {
    note(absl::StrCat(master, ": appendfsync ", *fsync,
                      ": a restart before failover can lose up to ",
                      *fsync == "everysec" ? "the last second"
                                           : "what the OS had not written",
                      " of acknowledged changes (appendfsync always keeps "
                      "them)"));
  }
  return absl::OkStatus();
}

absl::Status RedisClusterStore::CheckNewMasters() {
  for (const std::string& master : cluster_->Masters()) {
    if (checked_masters_.count(master) > 0) continue;
    if (absl::Status checked = CheckMasterSettings(master); !checked.ok()) {
      return checked;
    }
    checked_masters_.insert(master);
  }
  return absl::OkStatus();
}

absl::Status RedisClusterStore::ProbeMaster(const std::string& master,
                                            int slot) {
  const std::string probe =
      absl::StrCat(options_.prefix, ":probe:{",
                   counter_tags_[static_cast<size_t>(slot)], "}");
  const std::string counter = CounterKey(slot);
  // A master that appeared since start (a failover) may not have the
  // scripts yet; calls load them on NOSCRIPT, the probe does it here.
  for (const char* script :
       {kReadScript, kApplyScript, kConfirmScript, kReadOneScript, kRaiseScript,
        kApplyOneScript, kConfirmOneScript}) {
    absl::StatusOr<RedisReply> loaded =
        cluster_->RunOnNode(master, {"SCRIPT", "LOAD", script});
    if (!loaded.ok()) return loaded.status();
    if (loaded->is_error()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Redis master ", master, " refused SCRIPT LOAD: ", loaded->text,
          " (docs/cluster.md lists what the Redis user needs)"));
    }
  }
  std::vector<std::pair<std::string, RedisCommand>> steps = {
      {"the read script (EVALSHA: TIME, GET)",
       {"EVALSHA", read_sha_, "2", probe, counter}},
      {"the write script (EVALSHA: SET, PUBLISH to " + channel_ + ")",
       {"EVALSHA", apply_sha_, "2", probe, counter, "", "idem-probe", "10000",
        "0", channel_}},
      {"the confirm script (EVALSHA: INCRBY)",
       {"EVALSHA", confirm_sha_, "2", probe, counter, "idem-probe"}},
      {"the write script deleting (EVALSHA: DEL)",
       {"EVALSHA", apply_sha_, "2", probe, counter, "idem-probe", "", "0", "0",
        ""}}};
  if (options_.wait_replicas > 0) {
    steps.push_back(
        {"WAIT",
         {"WAIT", absl::StrCat(options_.wait_replicas),
          absl::StrCat(absl::ToInt64Milliseconds(options_.wait_timeout))}});
  }
  std::vector<RedisCommand> pipeline;
  for (const auto& step : steps) pipeline.push_back(step.second);
  absl::StatusOr<std::vector<RedisReply>> replies =
      cluster_->RunPipeline(slot, pipeline, /*tryagain_is_reply=*/true);
  if (!replies.ok()) return replies.status();
  // The probe's slot is being migrated: its two keys may be split between
  // two nodes. Nothing to learn this round; the next probe tries again.
  for (const RedisReply& reply : *replies) {
    if (reply.error_code() == "TRYAGAIN") return absl::OkStatus();
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    const RedisReply& reply = (*replies)[i];
    if (reply.is_error()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Redis master ", master, " refused ", steps[i].first, ": ",
          reply.text, " (docs/cluster.md lists what the Redis user needs)"));
    }
  }
  if (options_.wait_replicas > 0) {
    const RedisReply& acks = replies->back();
    if (acks.kind != RedisReply::Kind::kInteger ||
        acks.integer < options_.wait_replicas) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Redis master ", master, " has ",
          acks.kind == RedisReply::Kind::kInteger ? acks.integer : 0,
          " replica(s) acknowledging within --redis-wait-timeout, fewer than "
          "--redis-wait-replicas=",
          options_.wait_replicas, ": every change to its slots would fail"));
    }
  }
  absl::StatusOr<redisContext*> connected =
      cluster_->ConnectTo(master, absl::Seconds(2));
  if (!connected.ok()) return connected.status();
  void* raw = redisCommand(*connected, "SUBSCRIBE %b", channel_.data(),
                           channel_.size());
  std::string refusal;
  if (raw == nullptr) {
    refusal = "no answer";
  } else if (static_cast<redisReply*>(raw)->type == REDIS_REPLY_ERROR) {
    refusal = static_cast<redisReply*>(raw)->str;
  }
  if (raw != nullptr) freeReplyObject(raw);
  redisFree(*connected);
  if (!refusal.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("Redis master ", master, " refused SUBSCRIBE ", channel_,
                     ": ", refusal, " (waiters would never hear of changes)"));
  }
  return absl::OkStatus();
}

absl::Status RedisClusterStore::ProbeMasters() {
  for (const auto& [master, slot] : cluster_->MasterSlots()) {
    if (absl::Status probed = ProbeMaster(master, slot); !probed.ok()) {
      return probed;
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> RedisClusterStore::durability_notes() const {
  absl::MutexLock lock(&mu_);
  return durability_notes_;
}

absl::Status RedisClusterStore::Health() {
  absl::MutexLock lock(&mu_);
  return health_;
}

void RedisClusterStore::Watch() {
  absl::Time next_refresh = absl::Now();
  absl::Time next_probe = absl::Now() + absl::Seconds(10);
  while (!stop_) {
    if (absl::Now() >= next_refresh) {
      // Notices failovers and slot migrations before a call trips on them.
      cluster_->RefreshSlots().IgnoreError();
      TrackMigrations();
      next_refresh = absl::Now() + absl::Seconds(5);
    }
    absl::Status health = cluster_->CheckHealth();
    // A master that appeared since (failover, new node) must keep the same
    // promises, and permissions can change: until they are back, the store
    // is unhealthy.
    if (health.ok()) health = CheckNewMasters();
    if (health.ok() && absl::Now() >= next_probe) {
      health = ProbeMasters();
      next_probe =
          absl::Now() + (health.ok() ? absl::Seconds(10) : absl::Seconds(1));
    } else if (!health.ok()) {
      next_probe = absl::Now();
    }
    {
      absl::MutexLock lock(&mu_);
      health_ = std::move(health);
    }
    for (int i = 0; i < 10 && !stop_; ++i)
      absl::SleepFor(absl::Milliseconds(100));
  }
}

void RedisClusterStore::TrackMigrations() {
  absl::StatusOr<std::vector<SlotMigration>> seen = cluster_->SlotMigrations();
  // A master that does not answer is health's business; what was open
  // stays open until a full answer says otherwise.
  if (!seen.ok()) return;
  const absl::Time now = absl::Now();
  std::vector<SlotMigrationReport> reports;
  {
    absl::MutexLock lock(&mu_);
    std::map<int, OpenMigration> open;
    for (SlotMigration& migration : *seen) {
      const auto known = open_migrations_.find(migration.slot);
      OpenMigration& entry = open[migration.slot];
      entry.since = known == open_migrations_.end() ? now : known->second.since;
      entry.reported =
          known != open_migrations_.end() && known->second.reported;
      entry.migration = std::move(migration);
      if (!entry.reported &&
          now - entry.since >= options_.migration_stuck_after) {
        entry.reported = true;
        reports.push_back({entry.migration, now - entry.since, false});
      }
    }
    for (const auto& [slot, was] : open_migrations_) {
      if (was.reported && open.count(slot) == 0) {
        reports.push_back({was.migration, now - was.since, true});
      }
    }
    open_migrations_ = std::move(open);
  }
  if (options_.on_slot_migration) {
    for (const SlotMigrationReport& report : reports) {
      options_.on_slot_migration(report);
    }
  }
}

void RedisClusterStore::WatchChanges(
    const std::function<void(const KeyId&)>& on_change) {
  absl::MutexLock lock(&mu_);
  on_change_ = on_change;
  if (!subscriber_.joinable()) {
    subscriber_ = std::thread([this] { Subscribe(); });
  }
}

void RedisClusterStore::Announced(const redisReply& reply) {
  // ["message", channel, record key]; PING answers and the like are not.
  if (reply.type != REDIS_REPLY_ARRAY || reply.elements != 3 ||
      reply.element[2]->type != REDIS_REPLY_STRING) {
    return;
  }
  const std::optional<KeyId> id = ParseRecordKey(
      absl::string_view(reply.element[2]->str, reply.element[2]->len));
  if (!id.has_value()) return;
  std::function<void(const KeyId&)> on_change;
  {
    absl::MutexLock lock(&mu_);
    on_change = on_change_;
  }
  if (on_change) on_change(*id);
}

void RedisClusterStore::Subscribe() {
  size_t next_node = 0;
  while (!stop_) {
    // Cluster pub/sub reaches every node: any master will do.
    const std::vector<std::string> masters = cluster_->Masters();
    if (masters.empty()) {
      absl::SleepFor(absl::Milliseconds(200));
      continue;
    }
    const std::string& address = masters[next_node++ % masters.size()];
    absl::StatusOr<redisContext*> connected =
        cluster_->ConnectTo(address, absl::Seconds(2));
    if (!connected.ok()) {
      absl::SleepFor(absl::Milliseconds(200));
      continue;
    }
    redisContext* context = *connected;
    void* raw =
        redisCommand(context, "SUBSCRIBE %b", channel_.data(), channel_.size());
    bool healthy = raw != nullptr &&
                   static_cast<redisReply*>(raw)->type == REDIS_REPLY_ARRAY;
    if (raw != nullptr) freeReplyObject(raw);
    if (!healthy) {
      // Refused (an ACL without the channel) or cut: not in a tight loop.
      redisFree(context);
      absl::SleepFor(absl::Seconds(1));
      continue;
    }
    absl::Time last_heard = absl::Now();
    bool ping_sent = false;
    while (healthy && !stop_) {
      // First what hiredis has read already (messages may have come in with
      // the SUBSCRIBE confirmation), then wait for the socket.
      void* message = nullptr;
      while (healthy) {
        if (redisReaderGetReply(context->reader, &message) != REDIS_OK) {
          healthy = false;  // A protocol error: reconnect.
          break;
        }
        if (message == nullptr) break;
        last_heard = absl::Now();
        ping_sent = false;
        Announced(*static_cast<redisReply*>(message));
        freeReplyObject(message);
        message = nullptr;
      }
      if (!healthy) break;
      // A connection that went silent (a half-open TCP connection after a
      // node vanished) is noticed by a PING without answer.
      const absl::Duration quiet = absl::Now() - last_heard;
      if (quiet > absl::Seconds(10) && ping_sent) break;
      if (quiet > absl::Seconds(5) && !ping_sent) {
        int done = 0;
        if (redisAppendCommand(context, "PING") != REDIS_OK) break;
        while (!done) {
          if (redisBufferWrite(context, &done) != REDIS_OK) break;
        }
        if (!done) break;
        ping_sent = true;
      }
      pollfd ready = {context->fd, POLLIN, 0};
      const int polled = poll(&ready, 1, 200);
      if (polled < 0 && errno != EINTR) break;
      if (polled <= 0) continue;
      if (redisBufferRead(context) != REDIS_OK) break;
    }
    redisFree(context);
    // Messages published while reconnecting are missed; parked calls look
    // again on their own (the server's fallback poll).
  }
}

absl::Status RedisClusterStore::DeleteEverything() {
  absl::StatusOr<std::vector<std::string>> keys =
      ScanKeys(absl::StrCat(GlobEscape(options_.prefix), ":*"));
  if (!keys.ok()) return keys.status();
  for (const std::string& key : *keys) {
    absl::StatusOr<RedisReply> deleted =
        cluster_->Run(KeySlot(key), {"DEL", key});
    if (!deleted.ok()) return deleted.status();
  }
  return absl::OkStatus();
}

}  // namespace idem::storage
