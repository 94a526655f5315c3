// idemctl: the Idem command-line tool. One subcommand per RPC, for operators
// and shell scripts. It uses the public C++ client library, like any service.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "idem/admin_client.h"
#include "idem/client.h"
#include "idem/credentials.h"
#include "idem/keys.h"

namespace idem::tools {
namespace {

using client::BeginReply;
using client::KeyInfo;
using client::Outcome;

// Exit codes: documented in docs/clients.md, relied on by scripts.
enum ExitCode {
  kOk = 0,  // Success; for begin: ACQUIRED.
  kOtherError = 1,
  kUsage = 2,
  kUnreachable = 3,    // UNAVAILABLE or DEADLINE_EXCEEDED.
  kRejected = 4,       // INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
  kLeaseLost = 5,      // FAILED_PRECONDITION.
  kAlreadyStored = 6,  // ALREADY_EXISTS.
  kCompleted = 10,     // begin: COMPLETED (a stored result was returned).
  kInProgress = 11,    // begin: IN_PROGRESS.
  kMismatch = 12,      // begin: MISMATCH.
};

constexpr char kUsageText[] =
    R"(usage: idemctl [--server=HOST:PORT] [--json] [--timeout=5s] COMMAND ARGS

Commands (one per RPC of idem.v1.Idempotency):
  begin NAMESPACE KEY [--fingerprint=HEX | --request=TEXT] [--lease=30s]
        [--retention=24h] [--wait=5s] [--owner=ID]
  complete NAMESPACE KEY --token=N [--code=N] [--body=TEXT|@FILE]
        [--meta=K=V ...] [--retention=D]
  release NAMESPACE KEY --token=N
  extend NAMESPACE KEY --token=N [--lease=30s]
  checkpoint NAMESPACE KEY --token=N --data=TEXT|@FILE
  lookup NAMESPACE KEY
  ping
  fingerprint PART...   (local: the fingerprint clients compute)

Operator commands (idem.v1.Admin):
  list NAMESPACE [--state=in_progress|completed] [--lapsed]
        [--page-size=N] [--page-token=T] [--all]
  delete NAMESPACE KEY --reason=TEXT
  force-release NAMESPACE KEY --reason=TEXT
  stats [NAMESPACE]

Global flags:
  --server=HOST:PORT  the Idem server (default $IDEM_SERVER or 127.0.0.1:50051)
  --tls-ca=FILE       connect with TLS, trusting this PEM CA bundle
  --tls-cert=FILE     client certificate for mutual TLS (with --tls-key)
  --tls-key=FILE      its private key
  --token-file=FILE   send the token in FILE as "authorization: Bearer" (TLS)
  --json              print one JSON object shaped like the RPC's response
  --timeout=D         give up after D, retries and begin's --wait included
                      (a longer --wait is cut to 4/5 of D; default 5s)
  --help              this text; "idemctl COMMAND --help" for one command

Exit codes: 0 success (begin: ACQUIRED), 10 COMPLETED, 11 IN_PROGRESS,
12 MISMATCH, 1 other error, 2 usage, 3 server unreachable or timed out,
4 request rejected as invalid, 5 lease lost (wrong or stale token),
6 a different result is already stored.
)";

const std::map<std::string, std::string>& CommandHelp() {
  static const auto* help = new std::map<std::string, std::string>{
      {"begin",
       "usage: idemctl begin NAMESPACE KEY [--fingerprint=HEX | "
       "--request=TEXT]\n"
       "         [--lease=30s] [--retention=24h] [--wait=5s] [--owner=ID]\n"
       "Claims KEY. --request fingerprints TEXT with SHA-256, as the server\n"
       "would. Exit 0 ACQUIRED, 10 COMPLETED, 11 IN_PROGRESS, 12 MISMATCH.\n"},
      {"complete",
       "usage: idemctl complete NAMESPACE KEY --token=N [--code=N]\n"
       "         [--body=TEXT|@FILE] [--meta=K=V ...] [--retention=D]\n"
       "Stores the result of the work done under lease N.\n"},
      {"release",
       "usage: idemctl release NAMESPACE KEY --token=N\n"
       "Gives the key up so that the next begin acquires it.\n"},
      {"extend",
       "usage: idemctl extend NAMESPACE KEY --token=N [--lease=30s]\n"
       "Extends lease N to end LEASE from now.\n"},
      {"checkpoint",
       "usage: idemctl checkpoint NAMESPACE KEY --token=N --data=TEXT|@FILE\n"
       "Records a recovery point for the next holder of the key.\n"},
      {"lookup",
       "usage: idemctl lookup NAMESPACE KEY\n"
       "Shows the state of the key. No side effects.\n"},
      {"ping",
       "usage: idemctl ping\n"
       "Checks that the server is serving (gRPC health check).\n"},
      {"fingerprint",
       "usage: idemctl fingerprint PART...\n"
       "Prints (hex) the fingerprint of the parts as every Idem client\n"
       "computes it (length-prefixed SHA-256), e.g. the HTTP middleware's:\n"
       "  idemctl fingerprint POST /v1/orders '{\"item\":1}'\n"
       "Contacts no server.\n"},
      {"list",
       "usage: idemctl list NAMESPACE [--state=in_progress|completed] "
       "[--lapsed]\n"
       "         [--page-size=N] [--page-token=T] [--all]\n"
       "Lists keys in key order, one page (default 100) at a time; --all\n"
       "follows every page. --lapsed: in-progress keys whose lease lapsed\n"
       "(stuck work).\n"},
      {"delete",
       "usage: idemctl delete NAMESPACE KEY --reason=TEXT\n"
       "Forgets the key (result, lease, history). The reason is logged.\n"},
      {"force-release",
       "usage: idemctl force-release NAMESPACE KEY --reason=TEXT\n"
       "Frees a stuck in-progress key and fences its holder out. The reason\n"
       "is logged.\n"},
      {"stats",
       "usage: idemctl stats [NAMESPACE]\n"
       "Counts keys per state and namespace (reads every record), and disk\n"
       "use.\n"},
  };
  return *help;
}

struct UsageError {
  std::string message;
};

// --- JSON output
// --------------------------------------------------------------

bool IsUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t extra = 0;
    if (c < 0x80) {
      extra = 0;
    } else if (c >= 0xc2 && c <= 0xdf) {
      extra = 1;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2;
    } else if (c >= 0xf0 && c <= 0xf4) {
      extra = 3;
    } else {
      return false;
    }
    if (s.size() - i <= extra) return false;
    for (size_t k = 1; k <= extra; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          absl::StrAppend(&out, "\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out += "\"";
  return out;
}

std::string Time(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E*SZ", t, absl::UTCTimeZone());
}

// Builds one JSON object from fields in order; unset fields are left out,
// as in the proto3 JSON mapping.
class JsonObject {
 public:
  JsonObject& Raw(absl::string_view name, absl::string_view json) {
    parts_.push_back(absl::StrCat(JsonString(name), ":", json));
    return *this;
  }
  JsonObject& String(absl::string_view name, absl::string_view value) {
    return Raw(name, JsonString(value));
  }
  JsonObject& Int(absl::string_view name, int64_t value) {
    return Raw(name, absl::StrCat(value));
  }
  JsonObject& Time(absl::string_view name, absl::Time t) {
    if (t == absl::InfinitePast()) return *this;
    return String(name, tools::Time(t));
  }
  // Text when valid UTF-8, else base64 under `name`_base64.
  JsonObject& Bytes(absl::string_view name, absl::string_view value) {
    if (value.empty()) return *this;
    if (IsUtf8(value)) return String(name, value);
    return String(absl::StrCat(name, "_base64"), absl::Base64Escape(value));
  }
  bool empty() const { return parts_.empty(); }
  std::string str() const {
    return absl::StrCat("{", absl::StrJoin(parts_, ","), "}");
  }

 private:
  std::vector<std::string> parts_;
};

std::string ResultJson(const client::Result& r) {
  JsonObject metadata;
  for (const auto& [k, v] : r.metadata) metadata.String(k, v);
  JsonObject result;
  result.Int("code", r.code).Bytes("body", r.body);
  if (!metadata.empty()) result.Raw("metadata", metadata.str());
  result.Time("completed_at", r.completed_at);
  return result.str();
}

std::string LeaseJson(uint64_t token, absl::Time expires_at) {
  JsonObject lease;
  if (token != 0) lease.String("token", absl::StrCat(token));
  lease.Time("expires_at", expires_at);
  return lease.str();
}

// --- Human output
// -------------------------------------------------------------

void PrintResult(const client::Result& r) {
  std::cout << "code: " << r.code << "\n";
  if (r.completed_at != absl::InfinitePast()) {
    std::cout << "completed_at: " << Time(r.completed_at) << "\n";
  }
  for (const auto& [k, v] : r.metadata) {
    std::cout << "metadata: " << k << ": " << v << "\n";
  }
  if (IsUtf8(r.body)) {
    std::cout << "body: " << r.body << "\n";
  } else {
    std::cout << "body (base64): " << absl::Base64Escape(r.body) << "\n";
  }
}

// --- Arguments
// ----------------------------------------------------------------

struct Args {
  std::string server;
  client::TlsSettings tls;
  bool use_tls = false;
  bool json = false;
  absl::Duration timeout = absl::Seconds(5);
  bool help = false;
  std::string command;
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;  // Subcommand flags.
};

// gRPC wraps a port above 65535 into another one (99999 dials 34463): a
// HOST:PORT target's port is checked here. Targets with a scheme
// ("dns:///...", "unix:...") are gRPC's to check.
void CheckServerPort(const std::string& server) {
  if (absl::StrContains(server, "://") || absl::StartsWith(server, "unix:")) {
    return;
  }
  const size_t colon = server.rfind(':');
  const std::string port =
      colon == std::string::npos ? "" : server.substr(colon + 1);
  int number = 0;
  if (colon == 0 || port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(port, &number) || number < 1 || number > 65535) {
    throw UsageError{
        absl::StrCat("--server=", server,
                     " (or $IDEM_SERVER) is not HOST:PORT with a port "
                     "from 1 to 65535")};
  }
}

Args Parse(int argc, char** argv) {
  Args args;
  const char* env = std::getenv("IDEM_SERVER");
  args.server = env != nullptr && *env != '\0' ? env : "127.0.0.1:50051";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      args.help = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--")) {
      if (args.command.empty()) {
        args.command = arg;
      } else {
        args.positional.push_back(arg);
      }
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    const size_t eq = name.find('=');
    const bool has_value = eq != std::string::npos;
    if (has_value) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    if (name == "json") {
      args.json = true;
    } else if (name == "lapsed" || name == "all") {
      if (has_value) {
        throw UsageError{absl::StrCat("--", name, " takes no value")};
      }
      args.flags.emplace(name, "true");
    } else if (!has_value) {
      throw UsageError{
          absl::StrCat("flag --", name, " needs a value: --", name, "=VALUE")};
    } else if (name == "server") {
      if (value.empty()) throw UsageError{"--server must not be empty"};
      args.server = value;
    } else if (name == "tls-ca" || name == "tls-cert" || name == "tls-key" ||
               name == "token-file") {
      if (value.empty()) {
        throw UsageError{absl::StrCat("--", name, " must name a file")};
      }
      (name == "tls-ca"     ? args.tls.ca_file
       : name == "tls-cert" ? args.tls.cert_file
       : name == "tls-key"  ? args.tls.key_file
                            : args.tls.token_file) = value;
      args.use_tls = true;
    } else if (name == "timeout") {
      if (!absl::ParseDuration(value, &args.timeout) ||
          args.timeout <= absl::ZeroDuration()) {
        throw UsageError{absl::StrCat("--timeout=", value,
                                      " is not a positive duration (e.g. 5s)")};
      }
    } else {
      args.flags.emplace(name, value);
    }
  }
  CheckServerPort(args.server);
  return args;
}

class Command {
 public:
  explicit Command(const Args& args) : args_(args) {}

  // NAMESPACE KEY, checked before any call.
  void NeedKey() const {
    if (args_.positional.size() != 2) {
      throw UsageError{absl::StrCat(args_.command, " takes NAMESPACE KEY; got ",
                                    args_.positional.size(), " arguments")};
    }
  }
  // Rejects flags the command does not know.
  void Allow(std::initializer_list<absl::string_view> known) const {
    for (const auto& [name, value] : args_.flags) {
      bool ok = false;
      for (absl::string_view k : known) ok = ok || k == name;
      if (!ok) {
        throw UsageError{
            absl::StrCat("unknown flag --", name, " for ", args_.command)};
      }
    }
  }
  std::optional<std::string> Flag(const std::string& name) const {
    auto it = args_.flags.find(name);
    if (it == args_.flags.end()) return std::nullopt;
    return it->second;
  }
  absl::Duration Duration(const std::string& name) const {
    std::optional<std::string> value = Flag(name);
    if (!value.has_value()) return absl::ZeroDuration();
    absl::Duration d;
    if (!absl::ParseDuration(*value, &d) || d <= absl::ZeroDuration()) {
      throw UsageError{absl::StrCat("--", name, "=", *value,
                                    " is not a positive duration (e.g. 30s)")};
    }
    return d;
  }
  uint64_t Token() const {
    std::optional<std::string> value = Flag("token");
    uint64_t token = 0;
    if (!value.has_value() || !absl::SimpleAtoi(*value, &token) || token == 0) {
      throw UsageError{absl::StrCat(
          args_.command, " needs --token=N, the token printed by begin")};
    }
    return token;
  }
  // TEXT, or the contents of FILE for @FILE.
  std::string TextOrFile(const std::string& name) const {
    std::string value = Flag(name).value_or("");
    if (!absl::StartsWith(value, "@")) return value;
    std::ifstream in(value.substr(1), std::ios::binary);
    if (!in) {
      throw UsageError{
          absl::StrCat("--", name, ": cannot read file ", value.substr(1))};
    }
    std::stringstream contents;
    contents << in.rdbuf();
    return contents.str();
  }
  const std::string& ns() const { return args_.positional[0]; }
  const std::string& key() const { return args_.positional[1]; }

 private:
  const Args& args_;
};

int ExitFor(const absl::Status& status, const std::string& server) {
  std::string hint;
  int code = kOtherError;
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      hint = absl::StrCat("cannot reach the Idem server at ", server, ": ");
      code = kUnreachable;
      break;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kResourceExhausted:
      hint = "rejected: ";
      code = kRejected;
      break;
    case absl::StatusCode::kFailedPrecondition:
      code = kLeaseLost;
      break;
    case absl::StatusCode::kAlreadyExists:
      code = kAlreadyStored;
      break;
    default:
      break;
  }
  std::cerr << "idemctl: " << hint << status.message() << " ("
            << absl::StatusCodeToString(status.code()) << ")\n";
  return code;
}

std::string KeySummaryJson(const client::KeySummary& k) {
  JsonObject out;
  out.String("key", k.key)
      .String("state", absl::StrCat("STATE_", client::KeyStateName(k.state)));
  if (k.state == client::KeyState::kInProgress) {
    out.Time("lease_expires_at", k.lease_expires_at);
    if (k.lease_lapsed) out.Raw("lease_lapsed", "true");
  }
  out.Time("created_at", k.created_at).Time("expires_at", k.expires_at);
  out.Int("attempt", k.attempt);
  if (k.state == client::KeyState::kCompleted) {
    out.Int("result_code", k.result_code);
  }
  return out.str();
}

int RunAdmin(const Args& args, const Command& cmd,
             const client::ClientOptions& options) {
  // Check arguments before contacting the server.
  client::ListOptions list;
  std::string reason;
  if (args.command == "list") {
    cmd.Allow({"state", "lapsed", "page-size", "page-token", "all"});
    if (std::optional<std::string> state = cmd.Flag("state")) {
      if (*state == "in_progress") {
        list.state = client::KeyState::kInProgress;
      } else if (*state == "completed") {
        list.state = client::KeyState::kCompleted;
      } else {
        throw UsageError{"--state must be in_progress or completed"};
      }
    }
    list.lease_lapsed = cmd.Flag("lapsed").has_value();
    if (std::optional<std::string> size = cmd.Flag("page-size")) {
      if (!absl::SimpleAtoi(*size, &list.page_size) || list.page_size < 1 ||
          list.page_size > 1000) {
        throw UsageError{"--page-size must be 1 to 1000"};
      }
    }
    list.page_token = cmd.Flag("page-token").value_or("");
  } else if (args.command == "delete" || args.command == "force-release") {
    cmd.Allow({"reason"});
    reason = cmd.Flag("reason").value_or("");
    if (reason.empty()) {
      throw UsageError{
          absl::StrCat(args.command, " needs --reason=TEXT (it is logged)")};
    }
  } else {
    cmd.Allow({});
  }

  absl::StatusOr<std::unique_ptr<client::AdminClient>> connected =
      client::AdminClient::Connect(options);
  if (!connected.ok()) return ExitFor(connected.status(), args.server);
  client::AdminClient& admin = **connected;

  if (args.command == "delete") {
    absl::StatusOr<bool> existed = admin.Delete(cmd.ns(), cmd.key(), reason);
    if (!existed.ok()) return ExitFor(existed.status(), args.server);
    if (args.json) {
      std::cout << "{\"existed\":" << (*existed ? "true" : "false") << "}\n";
    } else {
      std::cout << (*existed ? "DELETED" : "NOT_FOUND (nothing to delete)")
                << "\n";
    }
    return kOk;
  }
  if (args.command == "force-release") {
    absl::StatusOr<uint64_t> token =
        admin.ForceRelease(cmd.ns(), cmd.key(), reason);
    if (!token.ok()) return ExitFor(token.status(), args.server);
    if (args.json) {
      std::cout
          << JsonObject().String("fencing_token", absl::StrCat(*token)).str()
          << "\n";
    } else {
      std::cout << "RELEASED fencing_token=" << *token << "\n";
    }
    return kOk;
  }
  if (args.command == "stats") {
    absl::StatusOr<client::StoreReport> report =
        admin.Stats(args.positional.empty() ? "" : args.positional[0]);
    if (!report.ok()) return ExitFor(report.status(), args.server);
    if (args.json) {
      std::vector<std::string> namespaces;
      for (const client::NamespaceCounts& n : report->namespaces) {
        namespaces.push_back(
            JsonObject()
                .String("namespace", n.name_space)
                .String("in_progress", absl::StrCat(n.in_progress))
                .String("lease_lapsed", absl::StrCat(n.lease_lapsed))
                .String("completed", absl::StrCat(n.completed))
                .str());
      }
      std::cout << JsonObject()
                       .Raw("namespaces",
                            absl::StrCat("[", absl::StrJoin(namespaces, ","),
                                         "]"))
                       .String("estimated_keys",
                               absl::StrCat(report->estimated_keys))
                       .String("disk_bytes", absl::StrCat(report->disk_bytes))
                       .String("expired_dropped",
                               absl::StrCat(report->expired_dropped))
                       .str()
                << "\n";
    } else {
      std::cout << "namespace\tin_progress\tlease_lapsed\tcompleted\n";
      for (const client::NamespaceCounts& n : report->namespaces) {
        std::cout << n.name_space << "\t" << n.in_progress << "\t"
                  << n.lease_lapsed << "\t" << n.completed << "\n";
      }
      std::cout << "estimated_keys: " << report->estimated_keys << "\n"
                << "disk_bytes: " << report->disk_bytes << "\n"
                << "expired_dropped: " << report->expired_dropped << "\n";
    }
    return kOk;
  }
  // list
  const bool all = cmd.Flag("all").has_value();
  std::vector<std::string> json_keys;
  std::string next;
  do {
    absl::StatusOr<client::KeyPage> page = admin.List(args.positional[0], list);
    if (!page.ok()) return ExitFor(page.status(), args.server);
    for (const client::KeySummary& k : page->keys) {
      if (args.json) {
        json_keys.push_back(KeySummaryJson(k));
        continue;
      }
      std::cout << k.key << "\t" << client::KeyStateName(k.state);
      if (k.state == client::KeyState::kInProgress) {
        std::cout << "\tlease_expires_at=" << Time(k.lease_expires_at)
                  << (k.lease_lapsed ? " (lapsed)" : "");
      } else {
        std::cout << "\tcode=" << k.result_code;
      }
      std::cout << "\tattempt=" << k.attempt << "\n";
    }
    next = page->next_page_token;
    list.page_token = next;
  } while (all && !next.empty());
  if (args.json) {
    JsonObject out;
    out.Raw("keys", absl::StrCat("[", absl::StrJoin(json_keys, ","), "]"));
    if (!next.empty()) out.String("next_page_token", next);
    std::cout << out.str() << "\n";
  } else if (!next.empty()) {
    std::cout << "next_page_token: " << next << "\n";
  }
  return kOk;
}

int Run(const Args& args) {
  if (args.help || args.command == "help") {
    auto it = CommandHelp().find(args.command);
    std::cout << (it != CommandHelp().end() ? it->second : kUsageText);
    return kOk;
  }
  if (args.command.empty()) throw UsageError{"no command given"};
  if (CommandHelp().count(args.command) == 0) {
    throw UsageError{absl::StrCat("unknown command \"", args.command, "\"")};
  }
  Command cmd(args);
  if (args.command == "fingerprint") {
    cmd.Allow({});
    const std::vector<absl::string_view> parts(args.positional.begin(),
                                               args.positional.end());
    const std::string hex = client::ToHex(client::FingerprintParts(parts));
    std::cout << (args.json ? absl::StrCat("{\"fingerprint\":\"", hex, "\"}")
                            : hex)
              << "\n";
    return kOk;
  }

  client::ClientOptions options;
  options.target = args.server;
  if (args.use_tls) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        client::MakeCredentials(args.tls);
    if (!credentials.ok()) {
      throw UsageError{std::string(credentials.status().message())};
    }
    options.credentials = *std::move(credentials);
  }
  options.rpc_timeout = args.timeout;
  options.retry.total_timeout = args.timeout;

  if (args.command == "ping") {
    cmd.Allow({});
    if (!args.positional.empty()) throw UsageError{"ping takes no arguments"};
  } else if (args.command == "list") {
    if (args.positional.size() != 1) {
      throw UsageError{"list takes NAMESPACE"};
    }
  } else if (args.command == "stats") {
    if (args.positional.size() > 1) {
      throw UsageError{"stats takes at most a NAMESPACE"};
    }
  } else {
    cmd.NeedKey();
  }
  if (args.command == "list" || args.command == "delete" ||
      args.command == "force-release" || args.command == "stats") {
    return RunAdmin(args, cmd, options);
  }

  // Check every argument before contacting the server.
  client::BeginOptions begin;
  client::Result result;
  uint64_t token = 0;
  absl::Duration lease, retention;
  std::string data;
  if (args.command == "begin") {
    cmd.Allow(
        {"fingerprint", "request", "lease", "retention", "wait", "owner"});
    std::optional<std::string> hex = cmd.Flag("fingerprint");
    std::optional<std::string> request = cmd.Flag("request");
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
    begin.lease = cmd.Duration("lease");
    begin.retention = cmd.Duration("retention");
    begin.wait = cmd.Duration("wait");
    // --timeout bounds the whole command: a longer wait is cut to 4/5 of it,
    // so that the server's IN_PROGRESS answer still arrives in time, and the
    // retries get the rest (the client adds the wait to their budget).
    if (begin.wait > absl::ZeroDuration()) {
      begin.wait = std::min(begin.wait, args.timeout * 4 / 5);
      options.retry.total_timeout = args.timeout - begin.wait;
      options.rpc_timeout = args.timeout - begin.wait;
    }
    begin.owner = cmd.Flag("owner").value_or("");
  } else if (args.command == "complete") {
    cmd.Allow({"token", "code", "body", "meta", "retention"});
    token = cmd.Token();
    if (std::optional<std::string> code = cmd.Flag("code")) {
      if (!absl::SimpleAtoi(*code, &result.code)) {
        throw UsageError{absl::StrCat("--code=", *code, " is not a number")};
      }
    }
    result.body = cmd.TextOrFile("body");
    auto [first, last] = args.flags.equal_range("meta");
    for (auto it = first; it != last; ++it) {
      const size_t eq = it->second.find('=');
      if (eq == std::string::npos || eq == 0) {
        throw UsageError{
            absl::StrCat("--meta=", it->second, " must be KEY=VALUE")};
      }
      result.metadata[it->second.substr(0, eq)] = it->second.substr(eq + 1);
    }
    retention = cmd.Duration("retention");
  } else if (args.command == "release") {
    cmd.Allow({"token"});
    token = cmd.Token();
  } else if (args.command == "extend") {
    cmd.Allow({"token", "lease"});
    token = cmd.Token();
    lease = cmd.Duration("lease");
  } else if (args.command == "checkpoint") {
    cmd.Allow({"token", "data"});
    token = cmd.Token();
    if (!cmd.Flag("data").has_value()) {
      throw UsageError{"checkpoint needs --data=TEXT or --data=@FILE"};
    }
    data = cmd.TextOrFile("data");
  } else if (args.command == "lookup") {
    cmd.Allow({});
  }

  absl::StatusOr<std::unique_ptr<client::Client>> connected =
      client::Client::Connect(options);
  if (!connected.ok()) return ExitFor(connected.status(), args.server);
  client::Client& idem = **connected;

  if (args.command == "ping") {
    absl::Status pinged = idem.Ping();
    if (!pinged.ok()) return ExitFor(pinged, args.server);
    std::cout << (args.json ? "{\"status\":\"SERVING\"}" : "SERVING") << "\n";
    return kOk;
  }
  if (args.command == "begin") {
    absl::StatusOr<BeginReply> reply = idem.Begin(cmd.ns(), cmd.key(), begin);
    if (!reply.ok()) return ExitFor(reply.status(), args.server);
    const std::string outcome(client::OutcomeName(reply->outcome));
    if (args.json) {
      JsonObject out;
      out.String("outcome", "OUTCOME_" + outcome);
      if (reply->outcome == Outcome::kAcquired ||
          reply->outcome == Outcome::kInProgress) {
        out.Raw("lease", LeaseJson(reply->token, reply->lease_expires_at));
      }
      if (reply->outcome == Outcome::kCompleted) {
        out.Raw("result", ResultJson(reply->result));
        out.Time("expires_at", reply->expires_at);
      }
      if (reply->attempt > 0) out.Int("attempt", reply->attempt);
      out.Bytes("checkpoint", reply->checkpoint);
      std::cout << out.str() << "\n";
    } else {
      std::cout << outcome;
      switch (reply->outcome) {
        case Outcome::kAcquired:
          std::cout << " token=" << reply->token
                    << " lease_expires_at=" << Time(reply->lease_expires_at)
                    << " attempt=" << reply->attempt << "\n";
          if (!reply->checkpoint.empty()) {
            std::cout << "checkpoint: " << reply->checkpoint.size()
                      << " bytes\n";
          }
          break;
        case Outcome::kCompleted:
          std::cout << " expires_at=" << Time(reply->expires_at)
                    << " attempt=" << reply->attempt << "\n";
          PrintResult(reply->result);
          break;
        case Outcome::kInProgress:
          std::cout << " lease_expires_at=" << Time(reply->lease_expires_at)
                    << "\n";
          break;
        case Outcome::kMismatch:
          std::cout << ": the key was used with a different request\n";
          break;
      }
    }
    switch (reply->outcome) {
      case Outcome::kAcquired:
        return kOk;
      case Outcome::kCompleted:
        return kCompleted;
      case Outcome::kInProgress:
        return kInProgress;
      case Outcome::kMismatch:
        return kMismatch;
    }
  }
  if (args.command == "complete") {
    absl::StatusOr<client::Completion> done = idem.Complete(
        cmd.ns(), cmd.key(), token, result,
        retention > absl::ZeroDuration() ? std::optional(retention)
                                         : std::nullopt);
    if (!done.ok()) return ExitFor(done.status(), args.server);
    if (args.json) {
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
  if (args.command == "release" || args.command == "checkpoint") {
    absl::Status status =
        args.command == "release"
            ? idem.Release(cmd.ns(), cmd.key(), token)
            : idem.Checkpoint(cmd.ns(), cmd.key(), token, data);
    if (!status.ok()) return ExitFor(status, args.server);
    std::cout << (args.json
                      ? "{}"
                      : (args.command == "release" ? "RELEASED" : "RECORDED"))
              << "\n";
    return kOk;
  }
  if (args.command == "extend") {
    absl::StatusOr<absl::Time> expires =
        idem.Extend(cmd.ns(), cmd.key(), token, lease);
    if (!expires.ok()) return ExitFor(expires.status(), args.server);
    if (args.json) {
      std::cout << JsonObject().Time("expires_at", *expires).str() << "\n";
    } else {
      std::cout << "EXTENDED lease_expires_at=" << Time(*expires) << "\n";
    }
    return kOk;
  }
  // lookup
  absl::StatusOr<KeyInfo> info = idem.Lookup(cmd.ns(), cmd.key());
  if (!info.ok()) return ExitFor(info.status(), args.server);
  const std::string state(client::KeyStateName(info->state));
  if (args.json) {
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

}  // namespace
}  // namespace idem::tools

int main(int argc, char** argv) {
  try {
    return idem::tools::Run(idem::tools::Parse(argc, argv));
  } catch (const idem::tools::UsageError& error) {
    std::cerr << "idemctl: " << error.message
              << "\nRun \"idemctl --help\" for usage.\n";
    return idem::tools::kUsage;
  }
}
