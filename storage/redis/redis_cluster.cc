#include "storage/redis/redis_cluster.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace idem::storage {
namespace {

// CRC16-CCITT (XModem), the hash Redis Cluster uses for slots.
constexpr std::array<uint16_t, 256> MakeCrc16Table() {
  std::array<uint16_t, 256> table{};
  for (int i = 0; i < 256; ++i) {
    uint16_t crc = static_cast<uint16_t>(i << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) != 0 ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<uint16_t>(crc << 1);
    }
    table[static_cast<size_t>(i)] = crc;
  }
  return table;
}
constexpr std::array<uint16_t, 256> kCrc16Table = MakeCrc16Table();

uint16_t Crc16(absl::string_view data) {
  uint16_t crc = 0;
  for (const char c : data) {
    crc = static_cast<uint16_t>(
        (crc << 8) ^
        kCrc16Table[((crc >> 8) ^ static_cast<unsigned char>(c)) & 0xff]);
  }
  return crc;
}

RedisReply Copy(const redisReply& in) {
  RedisReply out;
  switch (in.type) {
    case REDIS_REPLY_STRING:
      out.kind = RedisReply::Kind::kString;
      out.text.assign(in.str, in.len);
      break;
    case REDIS_REPLY_STATUS:
      out.kind = RedisReply::Kind::kStatus;
      out.text.assign(in.str, in.len);
      break;
    case REDIS_REPLY_ERROR:
      out.kind = RedisReply::Kind::kError;
      out.text.assign(in.str, in.len);
      break;
    case REDIS_REPLY_INTEGER:
      out.kind = RedisReply::Kind::kInteger;
      out.integer = in.integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.kind = RedisReply::Kind::kArray;
      out.elements.reserve(in.elements);
      for (size_t i = 0; i < in.elements; ++i) {
        out.elements.push_back(Copy(*in.element[i]));
      }
      break;
    default:
      out.kind = RedisReply::Kind::kNil;
  }
  return out;
}

bool SplitAddress(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = address.substr(0, colon);
  return absl::SimpleAtoi(address.substr(colon + 1), port) && *port > 0 &&
         *port < 65536;
}

// Sends `commands` pipelined and reads one reply each. False, with the
// context's error, on a transport failure.
bool Exchange(redisContext* context, const std::vector<RedisCommand>& commands,
              std::vector<RedisReply>* replies) {
  for (const RedisCommand& command : commands) {
    std::vector<const char*> argv;
    std::vector<size_t> lengths;
    argv.reserve(command.size());
    lengths.reserve(command.size());
    for (const std::string& arg : command) {
      argv.push_back(arg.data());
      lengths.push_back(arg.size());
    }
    if (redisAppendCommandArgv(context, static_cast<int>(argv.size()),
                               argv.data(), lengths.data()) != REDIS_OK) {
      return false;
    }
  }
  replies->clear();
  for (size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(context, &raw) != REDIS_OK || raw == nullptr) {
      return false;
    }
    replies->push_back(Copy(*static_cast<redisReply*>(raw)));
    freeReplyObject(raw);
  }
  return true;
}

// Errors that say "not now, try again shortly".
bool IsTransient(absl::string_view code) {
  return code == "TRYAGAIN" || code == "CLUSTERDOWN" || code == "LOADING" ||
         code == "MASTERDOWN" || code == "READONLY";
}

}  // namespace

int KeySlot(absl::string_view key) {
  const size_t open = key.find('{');
  if (open != absl::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != absl::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(key) & (kRedisSlots - 1);
}

absl::string_view RedisReply::error_code() const {
  if (kind != Kind::kError) return {};
  absl::string_view code(text);
  return code.substr(0, code.find(' '));
}

// Idle connections to one node.
struct RedisCluster::Node {
  absl::Mutex mu;
  std::vector<redisContext*> idle ABSL_GUARDED_BY(mu);

  ~Node() {
    absl::MutexLock lock(&mu);
    for (redisContext* context : idle) redisFree(context);
  }
};

RedisCluster::RedisCluster(RedisClusterOptions options)
    : options_(std::move(options)) {
  slot_master_.fill(-1);
}

RedisCluster::~RedisCluster() = default;

absl::StatusOr<std::unique_ptr<RedisCluster>> RedisCluster::Connect(
    RedisClusterOptions options) {
  if (options.seeds.empty()) {
    return absl::InvalidArgumentError("no Redis Cluster node given");
  }
  for (const std::string& seed : options.seeds) {
    std::string host;
    int port = 0;
    if (!SplitAddress(seed, &host, &port)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad Redis node address \"", seed, "\": expected HOST:PORT"));
    }
  }
  std::unique_ptr<RedisCluster> cluster(new RedisCluster(std::move(options)));
  absl::Status loaded = cluster->RefreshSlots();
  if (!loaded.ok()) return loaded;
  return cluster;
}

absl::StatusOr<redisContext*> RedisCluster::ConnectTo(
    const std::string& address, absl::Duration read_timeout) {
  std::string host;
  int port = 0;
  if (!SplitAddress(address, &host, &port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad Redis node address \"", address, "\""));
  }
  redisContext* context = redisConnectWithTimeout(
      host.c_str(), port, absl::ToTimeval(options_.connect_timeout));
  if (context == nullptr) {
    return absl::UnavailableError("out of memory connecting to Redis");
  }
  if (context->err != 0) {
    absl::Status error = absl::UnavailableError(absl::StrCat(
        "cannot connect to Redis node ", address, ": ", context->errstr));
    redisFree(context);
    return error;
  }
  redisSetTimeout(context, absl::ToTimeval(read_timeout));
  redisEnableKeepAlive(context);
  if (!options_.password.empty()) {
    std::vector<RedisReply> replies;
    RedisCommand auth = {"AUTH", options_.password};
    if (!options_.user.empty())
      auth = {"AUTH", options_.user, options_.password};
    const bool sent = Exchange(context, {auth}, &replies);
    if (!sent || replies[0].is_error()) {
      // Redis's error names neither the user nor the password.
      absl::Status error =
          sent
              ? absl::PermissionDeniedError(absl::StrCat(
                    "Redis node ", address, " refused AUTH: ", replies[0].text))
              : absl::UnavailableError(absl::StrCat("Redis node ", address,
                                                    ": ", context->errstr));
      redisFree(context);
      return error;
    }
  }
  return context;
}

RedisCluster::Node& RedisCluster::NodeAt(const std::string& address) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Node>& node = nodes_[address];
  if (node == nullptr) node = std::make_unique<Node>();
  return *node;
}

absl::StatusOr<std::vector<RedisReply>> RedisCluster::Attempt(
    const std::string& address, const std::vector<RedisCommand>& commands,
    bool asking, absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) {
    return absl::DeadlineExceededError("no time left for another attempt");
  }
  const absl::Duration timeout = std::min(options_.command_timeout, left);
  Node& node = NodeAt(address);
  redisContext* context = nullptr;
  {
    absl::MutexLock lock(&node.mu);
    if (!node.idle.empty()) {
      context = node.idle.back();
      node.idle.pop_back();
    }
  }
  if (context == nullptr) {
    absl::StatusOr<redisContext*> connected = ConnectTo(address, timeout);
    if (!connected.ok()) return connected.status();
    context = *connected;
  }
  // A hung node must not hold the call past its deadline (pooled
  // connections keep whatever the last attempt set).
  redisSetTimeout(context, absl::ToTimeval(timeout));
  std::vector<RedisCommand> sent;
  const std::vector<RedisCommand>* to_send = &commands;
  if (asking) {
    sent.reserve(commands.size() + 1);
    sent.push_back({"ASKING"});
    sent.insert(sent.end(), commands.begin(), commands.end());
    to_send = &sent;
  }
  std::vector<RedisReply> replies;
  if (!Exchange(context, *to_send, &replies)) {
    absl::Status error = absl::UnavailableError(
        absl::StrCat("Redis node ", address, ": ",
                     context->err != 0 ? context->errstr : "no reply"));
    redisFree(context);
    // The node's other idle connections are likely dead too (a restart,
    // CLIENT KILL): drop them, so that the next attempt connects afresh.
    std::vector<redisContext*> stale;
    {
      absl::MutexLock lock(&node.mu);
      stale.swap(node.idle);
    }
    for (redisContext* idle : stale) redisFree(idle);
    return error;
  }
  {
    absl::MutexLock lock(&node.mu);
    node.idle.push_back(context);
  }
  if (asking) replies.erase(replies.begin());
  return replies;
}

std::string RedisCluster::MasterOf(int slot) {
  absl::MutexLock lock(&mu_);
  const int index = slot_master_[static_cast<size_t>(slot)];
  return index < 0 ? std::string() : masters_[static_cast<size_t>(index)];
}

namespace {
thread_local absl::Time operation_deadline = absl::InfiniteFuture();
}  // namespace

RedisCluster::ScopedDeadline::ScopedDeadline(absl::Time deadline)
    : previous_(operation_deadline) {
  operation_deadline = std::min(previous_, deadline);
}

RedisCluster::ScopedDeadline::~ScopedDeadline() {
  operation_deadline = previous_;
}

absl::StatusOr<std::vector<RedisReply>> RedisCluster::RunPipeline(
    int slot, const std::vector<RedisCommand>& commands,
    bool tryagain_is_reply) {
  const absl::Time deadline =
      std::min(absl::Now() + options_.retry_deadline, operation_deadline);
  absl::Duration backoff = absl::Milliseconds(20);
  thread_local std::minstd_rand jitter(std::random_device{}());
  std::string ask_address;
  absl::Status last_error = absl::UnavailableError("no attempt made");
  for (int attempt = 0;; ++attempt) {
    bool wait_first = false;
    std::string address = ask_address;
    const bool asking = !ask_address.empty();
    ask_address.clear();
    if (address.empty()) address = MasterOf(slot);
    if (address.empty()) {
      last_error = absl::UnavailableError(
          absl::StrCat("no Redis master serves slot ", slot));
      wait_first = true;
    } else {
      absl::StatusOr<std::vector<RedisReply>> replies =
          Attempt(address, commands, asking, deadline);
      if (!replies.ok()) {
        last_error = replies.status();
        wait_first = true;
      } else {
        // The first redirect or transient error decides what happens next.
        const RedisReply* redirect = nullptr;
        for (const RedisReply& reply : *replies) {
          const absl::string_view code = reply.error_code();
          if (tryagain_is_reply && code == "TRYAGAIN") break;
          if (code == "MOVED" || code == "ASK" || IsTransient(code)) {
            redirect = &reply;
            break;
          }
        }
        if (redirect == nullptr) return replies;
        const absl::string_view code = redirect->error_code();
        last_error = absl::UnavailableError(
            absl::StrCat("Redis node ", address, ": ", redirect->text));
        if (code == "MOVED" || code == "ASK") {
          // "MOVED 3999 127.0.0.1:6381"
          std::vector<std::string> parts =
              absl::StrSplit(redirect->text, ' ', absl::SkipEmpty());
          if (parts.size() == 3) {
            if (code == "ASK") {
              ask_address = parts[2];
            } else {
              absl::MutexLock lock(&mu_);
              auto known =
                  std::find(masters_.begin(), masters_.end(), parts[2]);
              if (known == masters_.end()) {
                masters_.push_back(parts[2]);
                known = masters_.end() - 1;
              }
              slot_master_[static_cast<size_t>(slot)] =
                  static_cast<int>(known - masters_.begin());
            }
          }
          // Many redirects in a row: the map is stale, reload it.
          if (attempt > 0 && attempt % 4 == 0) wait_first = true;
        } else {
          wait_first = true;
        }
      }
    }
    if (!wait_first) continue;
    if (absl::Now() + backoff > deadline) {
      return absl::UnavailableError(absl::StrCat(
          "Redis Cluster did not answer for slot ", slot, " within ",
          absl::FormatDuration(options_.retry_deadline),
          "; last error: ", last_error.message()));
    }
    std::uniform_int_distribution<int64_t> spread(
        absl::ToInt64Microseconds(backoff) / 2,
        absl::ToInt64Microseconds(backoff));
    absl::SleepFor(absl::Microseconds(spread(jitter)));
    backoff = std::min(backoff * 2, absl::Milliseconds(500));
    // A failover or resharding may have moved the slot: ask the cluster,
    // unless another call just did. Best effort; the next attempt reports
    // what still fails.
    // A reload may wait on a hung node: only while the call has the time
    // (the watcher reloads every 5 s anyway).
    bool stale = false;
    if (deadline - absl::Now() > options_.command_timeout) {
      absl::MutexLock lock(&mu_);
      stale = absl::Now() - last_refresh_ > absl::Milliseconds(100);
      if (stale) last_refresh_ = absl::Now();
    }
    if (stale) RefreshSlots().IgnoreError();
  }
}

absl::StatusOr<RedisReply> RedisCluster::Run(int slot,
                                             const RedisCommand& command) {
  absl::StatusOr<std::vector<RedisReply>> replies =
      RunPipeline(slot, {command});
  if (!replies.ok()) return replies.status();
  return std::move((*replies)[0]);
}

absl::StatusOr<RedisReply> RedisCluster::RunOnNode(
    const std::string& address, const RedisCommand& command) {
  // A pooled connection may have been closed by the node since its last
  // use (a restart, a timeout, CLIENT KILL): one more try, on a new one.
  // The commands sent this way (PING, SCAN, SCRIPT LOAD, CLUSTER SLOTS...)
  // are safe to repeat.
  absl::StatusOr<std::vector<RedisReply>> replies =
      Attempt(address, {command}, /*asking=*/false);
  if (!replies.ok()) replies = Attempt(address, {command}, /*asking=*/false);
  if (!replies.ok()) return replies.status();
  return std::move((*replies)[0]);
}

absl::StatusOr<std::vector<std::pair<std::string, RedisReply>>>
RedisCluster::RunOnEveryMaster(const RedisCommand& command) {
  std::vector<std::pair<std::string, RedisReply>> out;
  for (const std::string& address : Masters()) {
    absl::StatusOr<RedisReply> reply = RunOnNode(address, command);
    if (!reply.ok()) return reply.status();
    out.emplace_back(address, *std::move(reply));
  }
  return out;
}

std::vector<SlotMigration> ParseSlotMigrations(
    absl::string_view cluster_nodes) {
  // <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch>
  // <link> <slot ranges...>
  std::map<std::string, std::string, std::less<>> address_of;
  std::vector<std::string> own_entries;
  std::string myself;
  for (absl::string_view line :
       absl::StrSplit(cluster_nodes, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> fields =
        absl::StrSplit(absl::StripSuffix(line, "\r"), ' ', absl::SkipEmpty());
    if (fields.size() < 8) continue;
    const absl::string_view address =
        fields[1].substr(0, fields[1].find_first_of("@,"));
    address_of[std::string(fields[0])] = std::string(address);
    const std::vector<absl::string_view> flags = absl::StrSplit(fields[2], ',');
    if (std::find(flags.begin(), flags.end(), "myself") == flags.end()) {
      continue;
    }
    myself = std::string(address);
    for (size_t i = 8; i < fields.size(); ++i) {
      if (absl::StartsWith(fields[i], "[")) {
        own_entries.emplace_back(fields[i]);
      }
    }
  }
  std::vector<SlotMigration> out;
  for (absl::string_view entry : own_entries) {
    entry = absl::StripSuffix(absl::StripPrefix(entry, "["), "]");
    const bool migrating = absl::StrContains(entry, "->-");
    const size_t arrow = entry.find(migrating ? "->-" : "-<-");
    if (arrow == absl::string_view::npos) continue;
    SlotMigration migration;
    if (!absl::SimpleAtoi(entry.substr(0, arrow), &migration.slot) ||
        migration.slot < 0 || migration.slot >= kRedisSlots) {
      continue;
    }
    const auto other = address_of.find(entry.substr(arrow + 3));
    const std::string other_address =
        other == address_of.end() ? "" : other->second;
    migration.from = migrating ? myself : other_address;
    migration.to = migrating ? other_address : myself;
    out.push_back(std::move(migration));
  }
  return out;
}

absl::StatusOr<std::vector<SlotMigration>> RedisCluster::SlotMigrations() {
  // Both sides report an open migration; an interrupted one may be left
  // open on one side only.
  std::map<int, SlotMigration> by_slot;
  for (const std::string& address : Masters()) {
    absl::StatusOr<RedisReply> reply = RunQuick(address, {"CLUSTER", "NODES"});
    if (!reply.ok()) return reply.status();
    if (reply->kind != RedisReply::Kind::kString) continue;
    for (SlotMigration& seen : ParseSlotMigrations(reply->text)) {
      SlotMigration& merged = by_slot[seen.slot];
      merged.slot = seen.slot;
      if (merged.from.empty()) merged.from = std::move(seen.from);
      if (merged.to.empty()) merged.to = std::move(seen.to);
    }
  }
  std::vector<SlotMigration> out;
  for (auto& entry : by_slot) out.push_back(std::move(entry.second));
  return out;
}

std::vector<std::pair<std::string, int>> RedisCluster::MasterSlots() {
  absl::MutexLock lock(&mu_);
  std::vector<int> slot_of(masters_.size(), -1);
  for (int slot = 0; slot < kRedisSlots; ++slot) {
    const int index = slot_master_[static_cast<size_t>(slot)];
    if (index >= 0 && slot_of[static_cast<size_t>(index)] < 0) {
      slot_of[static_cast<size_t>(index)] = slot;
    }
  }
  std::vector<std::pair<std::string, int>> out;
  for (size_t i = 0; i < masters_.size(); ++i) {
    if (slot_of[i] >= 0) out.emplace_back(masters_[i], slot_of[i]);
  }
  return out;
}

std::vector<std::string> RedisCluster::Masters() {
  absl::MutexLock lock(&mu_);
  std::vector<bool> used(masters_.size(), false);
  for (const int index : slot_master_) {
    if (index >= 0) used[static_cast<size_t>(index)] = true;
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < masters_.size(); ++i) {
    if (used[i]) out.push_back(masters_[i]);
  }
  return out;
}

absl::Status RedisCluster::LoadSlotsFrom(const std::string& address) {
  absl::StatusOr<RedisReply> reply = RunOnNode(address, {"CLUSTER", "SLOTS"});
  if (!reply.ok()) return reply.status();
  if (reply->error_code() == "NOAUTH") {
    return absl::PermissionDeniedError(
        absl::StrCat("Redis node ", address,
                     " requires a password (NOAUTH): give one to the client"));
  }
  if (reply->is_error()) {
    return absl::FailedPreconditionError(
        absl::StrCat("Redis node ", address,
                     " is not a cluster node: CLUSTER SLOTS answered \"",
                     reply->text, "\""));
  }
  if (reply->kind != RedisReply::Kind::kArray) {
    return absl::UnavailableError("CLUSTER SLOTS: unexpected reply");
  }
  std::array<int, kRedisSlots> slots;
  slots.fill(-1);
  std::vector<std::string> masters;
  for (const RedisReply& range : reply->elements) {
    // [start, end, [ip, port, id, ...], replicas...]
    if (range.elements.size() < 3 || range.elements[2].elements.size() < 2) {
      continue;
    }
    const int64_t start = range.elements[0].integer;
    const int64_t end = range.elements[1].integer;
    const RedisReply& master = range.elements[2];
    std::string host = master.elements[0].text;
    if (host.empty() || host == "?") {
      // The node asked does not know its own address: use the one we used.
      host = address.substr(0, address.rfind(':'));
    }
    const std::string node =
        absl::StrCat(host, ":", master.elements[1].integer);
    auto known = std::find(masters.begin(), masters.end(), node);
    if (known == masters.end()) {
      masters.push_back(node);
      known = masters.end() - 1;
    }
    for (int64_t slot = std::max<int64_t>(0, start);
         slot <= std::min<int64_t>(kRedisSlots - 1, end); ++slot) {
      slots[static_cast<size_t>(slot)] =
          static_cast<int>(known - masters.begin());
    }
  }
  if (masters.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Redis node ", address, " reports no slots: is the cluster created?"));
  }
  absl::MutexLock lock(&mu_);
  slot_master_ = slots;
  masters_ = std::move(masters);
  last_refresh_ = absl::Now();
  return absl::OkStatus();
}

absl::Status RedisCluster::RefreshSlots() {
  std::vector<std::string> candidates;
  {
    absl::MutexLock lock(&mu_);
    candidates = masters_;
  }
  candidates.insert(candidates.end(), options_.seeds.begin(),
                    options_.seeds.end());
  absl::Status last = absl::UnavailableError("no Redis node to ask");
  // A node that answers but refuses (not a cluster, no slots yet, a
  // password problem) says more than one that cannot be reached.
  absl::Status refusal;
  for (const std::string& address : candidates) {
    last = LoadSlotsFrom(address);
    if (last.ok()) return last;
    if (last.code() != absl::StatusCode::kUnavailable && refusal.ok()) {
      refusal = last;
    }
  }
  if (!refusal.ok()) return refusal;
  return absl::UnavailableError(
      absl::StrCat("no Redis Cluster node answered CLUSTER SLOTS; last error: ",
                   last.message()));
}

absl::StatusOr<RedisReply> RedisCluster::RunQuick(const std::string& address,
                                                  const RedisCommand& command) {
  // On a connection of its own with a short read timeout: the pooled ones
  // wait command_timeout (and once more on a new connection), so a hung
  // master (SIGSTOP, a stalled disk) looked healthy for 5 to 8 s.
  absl::StatusOr<redisContext*> connected = ConnectTo(address, kHealthTimeout);
  if (!connected.ok()) return connected.status();
  std::vector<RedisReply> replies;
  const bool answered = Exchange(*connected, {command}, &replies);
  redisFree(*connected);
  if (!answered) {
    return absl::UnavailableError(
        absl::StrCat("Redis node ", address, " did not answer ", command[0],
                     " within ", absl::FormatDuration(kHealthTimeout)));
  }
  return std::move(replies[0]);
}

absl::Status RedisCluster::CheckHealth() {
  {
    absl::MutexLock lock(&mu_);
    const int uncovered = static_cast<int>(
        std::count(slot_master_.begin(), slot_master_.end(), -1));
    if (uncovered > 0) {
      return absl::UnavailableError(absl::StrCat(
          uncovered, " of ", kRedisSlots, " slots have no Redis master"));
    }
  }
  for (const std::string& address : Masters()) {
    absl::StatusOr<RedisReply> pong = RunQuick(address, {"PING"});
    if (!pong.ok()) return pong.status();
    if (pong->is_error()) {
      return absl::UnavailableError(
          absl::StrCat("Redis node ", address, ": ", pong->text));
    }
  }
  return absl::OkStatus();
}

}  // namespace idem::storage
