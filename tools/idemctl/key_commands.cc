// The commands of idem.v1.Idempotency: one per RPC, through the C++ client
// library as any service calls it.
#include <algorithm>
#include <iostream>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "idem/keys.h"
#include "tools/idemctl/idemctl.h"

namespace idem::tools {
namespace {

using client::BeginReply;
using client::KeyInfo;
using client::Outcome;

int ExitForOutcome(Outcome outcome) {
  switch (outcome) {
    case Outcome::kAcquired:
      return kOk;
    case Outcome::kCompleted:
      return kCompleted;
    case Outcome::kInProgress:
      return kInProgress;
    case Outcome::kMismatch:
      return kMismatch;
  }
  return kOtherError;
}

void PrintBegin(const BeginReply& reply, bool json) {
  const std::string outcome(client::OutcomeName(reply.outcome));
  if (json) {
    JsonObject out;
    out.String("outcome", "OUTCOME_" + outcome);
    if (reply.outcome == Outcome::kAcquired ||
        reply.outcome == Outcome::kInProgress) {
      out.Raw("lease", LeaseJson(reply.token, reply.lease_expires_at));
    }
    if (reply.outcome == Outcome::kCompleted) {
      out.Raw("result", ResultJson(reply.result));
      out.Time("expires_at", reply.expires_at);
    }
    if (reply.attempt > 0) out.Int("attempt", reply.attempt);
    out.Bytes("checkpoint", reply.checkpoint);
    std::cout << out.str() << "\n";
    return;
  }
  std::cout << outcome;
  switch (reply.outcome) {
    case Outcome::kAcquired:
      std::cout << " token=" << reply.token
                << " lease_expires_at=" << Time(reply.lease_expires_at)
                << " attempt=" << reply.attempt << "\n";
      if (!reply.checkpoint.empty()) {
        std::cout << "checkpoint: " << reply.checkpoint.size() << " bytes\n";
      }
      break;
    case Outcome::kCompleted:
      std::cout << " expires_at=" << Time(reply.expires_at)
                << " attempt=" << reply.attempt << "\n";
      PrintResult(reply.result);
      break;
    case Outcome::kInProgress:
      std::cout << " lease_expires_at=" << Time(reply.lease_expires_at) << "\n";
      break;
    case Outcome::kMismatch:
      std::cout << ": the key was used with a different request\n";
      break;
  }
}

int Begin(const Invocation& in) {
  client::BeginOptions begin;
  std::optional<std::string> hex = in.Flag("fingerprint");
  std::optional<std::string> request = in.Flag("request");
  if (hex.has_value() && request.has_value()) {
    throw UsageError{"set --fingerprint or --request, not both"};
  }
  if (hex.has_value()) {
    begin.fingerprint = absl::HexStringToBytes(*hex);
    if (hex->size() % 2 != 0 || absl::BytesToHexString(begin.fingerprint) !=
                                    absl::AsciiStrToLower(*hex)) {
      throw UsageError{"--fingerprint must be hex digits, e.g. 9f86d081"};
    }
  }
  if (request.has_value()) begin.fingerprint = client::Fingerprint(*request);
  begin.lease = in.Duration("lease");
  begin.retention = in.Duration("retention");
  begin.wait = in.Duration("wait");
  begin.owner = in.Flag("owner").value_or("");
  client::ClientOptions options = in.ClientOptions();
  // --timeout bounds the whole command: a longer wait is cut to 4/5 of it,
  // so that the server's IN_PROGRESS answer still arrives in time, and the
  // retries get the rest (the client adds the wait to their budget).
  const absl::Duration timeout = in.args().timeout;
  if (begin.wait > absl::ZeroDuration()) {
    begin.wait = std::min(begin.wait, timeout * 4 / 5);
    options.retry.total_timeout = timeout - begin.wait;
    options.rpc_timeout = timeout - begin.wait;
  }

  int exit = kOk;
  std::unique_ptr<client::Client> idem =
      Connect<client::Client>(in, options, &exit);
  if (idem == nullptr) return exit;
  absl::StatusOr<BeginReply> reply = idem->Begin(in.ns(), in.key(), begin);
  if (!reply.ok()) return in.Fail(reply.status());
  PrintBegin(*reply, in.json());
  return ExitForOutcome(reply->outcome);
}

int Complete(const Invocation& in) {
  const uint64_t token = in.Token();
  client::Result result;
  if (std::optional<std::string> code = in.Flag("code")) {
    if (!absl::SimpleAtoi(*code, &result.code)) {
      throw UsageError{absl::StrCat("--code=", *code, " is not a number")};
    }
  }
  result.body = in.TextOrFile("body");
  for (const std::string& meta : in.Flags("meta")) {
    const size_t eq = meta.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw UsageError{absl::StrCat("--meta=", meta, " must be KEY=VALUE")};
    }
    result.metadata[meta.substr(0, eq)] = meta.substr(eq + 1);
  }
  const absl::Duration retention = in.Duration("retention");

  int exit = kOk;
  std::unique_ptr<client::Client> idem =
      Connect<client::Client>(in, in.ClientOptions(), &exit);
  if (idem == nullptr) return exit;
  absl::StatusOr<client::Completion> done =
      idem->Complete(in.ns(), in.key(), token, result,
                     retention > absl::ZeroDuration() ? std::optional(retention)
                                                      : std::nullopt);
  if (!done.ok()) return in.Fail(done.status());
  if (in.json()) {
    std::cout << JsonObject()
                     .Time("completed_at", done->completed_at)
                     .Time("expires_at", done->expires_at)
                     .str()
              << "\n";
  } else {
    std::cout << "COMPLETED completed_at=" << Time(done->completed_at)
              << " expires_at=" << Time(done->expires_at) << "\n";
  }
  return kOk;
}

int Release(const Invocation& in) {
  const uint64_t token = in.Token();
  int exit = kOk;
  std::unique_ptr<client::Client> idem =
      Connect<client::Client>(in, in.ClientOptions(), &exit);
  if (idem == nullptr) return exit;
  if (absl::Status s = idem->Release(in.ns(), in.key(), token); !s.ok()) {
    return in.Fail(s);
  }
  std::cout << (in.json() ? "{}" : "RELEASED") << "\n";
  return kOk;
}

int Extend(const Invocation& in) {
  const uint64_t token = in.Token();
  const absl::Duration lease = in.Duration("lease");
  int exit = kOk;
  std::unique_ptr<client::Client> idem =
      Connect<client::Client>(in, in.ClientOptions(), &exit);
  if (idem == nullptr) return exit;
  absl::StatusOr<absl::Time> expires =
      idem->Extend(in.ns(), in.key(), token, lease);
  if (!expires.ok()) return in.Fail(expires.status());
  if (in.json()) {
    std::cout << JsonObject().Time("expires_at", *expires).str() << "\n";
  } else {
    std::cout << "EXTENDED lease_expires_at=" << Time(*expires) << "\n";
  }
  return kOk;
}

int Checkpoint(const Invocation& in) {
  const uint64_t token = in.Token();
  if (!in.Flag("data").has_value()) {
    throw UsageError{"checkpoint needs --data=TEXT or --data=@FILE"};
  }
  const std::string data = in.TextOrFile("data");
  int exit = kOk;
  std::unique_ptr<client::Client> idem =
      Connect<client::Client>(in, in.ClientOptions(), &exit);
  if (idem == nullptr) return exit;
  if (absl::Status s = idem->Checkpoint(in.ns(), in.key(), token, data);
      !s.ok()) {
    return in.Fail(s);
  }
  std::cout << (in.json() ? "{}" : "RECORDED") << "\n";
  return kOk;
}

int Lookup(const Invocation& in) {
  int exit = kOk;
  std::unique_ptr<client::Client> idem =
      Connect<client::Client>(in, in.ClientOptions(), &exit);
  if (idem == nullptr) return exit;
  absl::StatusOr<KeyInfo> info = idem->Lookup(in.ns(), in.key());
  if (!info.ok()) return in.Fail(info.status());
  const std::string state(client::KeyStateName(info->state));
  if (in.json()) {
    JsonObject out;
    out.String("state", "STATE_" + state);
    if (info->state == client::KeyState::kInProgress) {
      out.Raw("lease", LeaseJson(0, info->lease_expires_at));
    }
    if (info->state == client::KeyState::kCompleted) {
      out.Raw("result", ResultJson(info->result));
    }
    if (!info->fingerprint.empty()) {
      out.String("fingerprint", absl::Base64Escape(info->fingerprint));
    }
    out.Time("created_at", info->created_at);
    out.Time("expires_at", info->expires_at);
    if (info->attempt > 0) out.Int("attempt", info->attempt);
    out.Bytes("checkpoint", info->checkpoint);
    std::cout << out.str() << "\n";
    return kOk;
  }
  std::cout << state;
  if (info->state == client::KeyState::kInProgress) {
    std::cout << " lease_expires_at=" << Time(info->lease_expires_at);
  }
  if (info->attempt > 0) std::cout << " attempt=" << info->attempt;
  std::cout << "\n";
  if (info->attempt > 0) {
    std::cout << "fingerprint: " << client::ToHex(info->fingerprint) << "\n"
              << "created_at: " << Time(info->created_at) << "\n";
  }
  if (info->expires_at != absl::InfinitePast()) {
    std::cout << "expires_at: " << Time(info->expires_at) << "\n";
  }
  if (!info->checkpoint.empty()) {
    std::cout << "checkpoint: " << info->checkpoint.size() << " bytes\n";
  }
  if (info->state == client::KeyState::kCompleted) PrintResult(info->result);
  return kOk;
}

int Ping(const Invocation& in) {
  int exit = kOk;
  std::unique_ptr<client::Client> idem =
      Connect<client::Client>(in, in.ClientOptions(), &exit);
  if (idem == nullptr) return exit;
  if (absl::Status pinged = idem->Ping(); !pinged.ok()) {
    return in.Fail(pinged);
  }
  std::cout << (in.json() ? "{\"status\":\"SERVING\"}" : "SERVING") << "\n";
  return kOk;
}

const CommandSpec kCommands[] = {
    {"begin",
     Operands::kNamespaceKey,
     "NAMESPACE KEY [--fingerprint=HEX | --request=TEXT] [--lease=30s]\n"
     "[--retention=24h] [--wait=5s] [--owner=ID]",
     "Claims KEY. --request fingerprints TEXT with SHA-256, as the server\n"
     "would. Exit 0 ACQUIRED, 10 COMPLETED, 11 IN_PROGRESS, 12 MISMATCH.\n",
     {"fingerprint", "request", "lease", "retention", "wait", "owner"},
     Begin},
    {"complete",
     Operands::kNamespaceKey,
     "NAMESPACE KEY --token=N [--code=N] [--body=TEXT|@FILE]\n"
     "[--meta=K=V ...] [--retention=D]",
     "Stores the result of the work done under lease N.\n",
     {"token", "code", "body", "meta", "retention"},
     Complete},
    {"release",
     Operands::kNamespaceKey,
     "NAMESPACE KEY --token=N",
     "Gives the key up so that the next begin acquires it.\n",
     {"token"},
     Release},
    {"extend",
     Operands::kNamespaceKey,
     "NAMESPACE KEY --token=N [--lease=30s]",
     "Extends lease N to end LEASE from now.\n",
     {"token", "lease"},
     Extend},
    {"checkpoint",
     Operands::kNamespaceKey,
     "NAMESPACE KEY --token=N --data=TEXT|@FILE",
     "Records a recovery point for the next holder of the key.\n",
     {"token", "data"},
     Checkpoint},
    {"lookup",
     Operands::kNamespaceKey,
     "NAMESPACE KEY",
     "Shows the state of the key. No side effects.\n",
     {},
     Lookup},
    {"ping",
     Operands::kNone,
     "",
     "Checks that the server is serving (gRPC health check).\n",
     {},
     Ping},
};

}  // namespace

CommandGroup KeyCommands() {
  return {"Commands (one per RPC of idem.v1.Idempotency):", kCommands};
}

}  // namespace idem::tools
