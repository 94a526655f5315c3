// idemctl's pieces: the command table, what every command shares (its
// arguments, exit codes, output helpers) and one file per command group
// (key_commands.cc, admin_commands.cc, local_commands.cc). main.cc parses
// the command line, generates usage and help from the table and dispatches.
//
// A command is one CommandSpec: its name, operands, flags, help and the
// function that runs it. The table checks operands and flags before the
// function runs; the function checks flag values, then contacts the server.
#ifndef IDEM_TOOLS_IDEMCTL_IDEMCTL_H_
#define IDEM_TOOLS_IDEMCTL_IDEMCTL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "idem/client.h"
#include "idem/credentials.h"

namespace idem::tools {

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

// Thrown for a command line that cannot run; main prints it and exits 2.
struct UsageError {
  std::string message;
};

// The command line, as parsed by main.cc.
struct Args {
  std::string server;
  client::TlsSettings tls;
  bool use_tls = false;
  bool json = false;
  absl::Duration timeout = absl::Seconds(5);
  bool help = false;
  std::string command;
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;  // The command's flags.
};

// One command's view of the command line, with typed flag accessors that
// throw UsageError naming the flag.
class Invocation {
 public:
  explicit Invocation(const Args& args) : args_(args) {}

  const Args& args() const { return args_; }
  bool json() const { return args_.json; }
  const std::string& ns() const { return args_.positional[0]; }
  const std::string& key() const { return args_.positional[1]; }

  std::optional<std::string> Flag(const std::string& name) const;
  // Every value of a repeated flag, in order.
  std::vector<std::string> Flags(const std::string& name) const;
  // A positive duration; zero when the flag is not given.
  absl::Duration Duration(const std::string& name) const;
  // --token=N, required.
  uint64_t Token() const;
  // TEXT, or the contents of FILE for @FILE.
  std::string TextOrFile(const std::string& name) const;

  // How to reach the server: --server, TLS flags, --timeout.
  client::ClientOptions ClientOptions() const;
  // Prints `status` on stderr (with a hint) and returns its exit code.
  int Fail(const absl::Status& status) const;

 private:
  const Args& args_;
};

// What a command takes besides its flags.
enum class Operands {
  kNone,
  kNamespaceKey,
  kNamespace,
  kOptionalNamespace,
  kAny,
};

struct CommandSpec {
  absl::string_view name;
  Operands operands;
  // The usage line after the name; "\n" starts an indented continuation.
  absl::string_view synopsis;
  // What it does, for "idemctl COMMAND --help".
  absl::string_view help;
  // Every flag it accepts; any other is a usage error.
  std::vector<absl::string_view> flags;
  int (*run)(const Invocation&);
};

struct CommandGroup {
  absl::string_view title;  // Heading in the usage text.
  absl::Span<const CommandSpec> commands;
};

// The groups, one file each.
CommandGroup KeyCommands();    // key_commands.cc: idem.v1.Idempotency
CommandGroup LocalCommands();  // local_commands.cc: no server
CommandGroup AdminCommands();  // admin_commands.cc: idem.v1.Admin

// Every group, in the order usage lists them.
inline std::vector<CommandGroup> AllCommandGroups() {
  return {KeyCommands(), LocalCommands(), AdminCommands()};
}

// Connects a client (client::Client or client::AdminClient), or prints why
// not and returns nullptr with `*exit` set.
template <typename ClientT>
std::unique_ptr<ClientT> Connect(const Invocation& in,
                                 const client::ClientOptions& options,
                                 int* exit) {
  absl::StatusOr<std::unique_ptr<ClientT>> connected =
      ClientT::Connect(options);
  if (!connected.ok()) {
    *exit = in.Fail(connected.status());
    return nullptr;
  }
  return *std::move(connected);
}

// --- Output shared by the commands (output.cc).

std::string Time(absl::Time t);
bool IsUtf8(absl::string_view s);

// Builds one JSON object from fields in order; unset fields are left out,
// as in the proto3 JSON mapping.
class JsonObject {
 public:
  JsonObject& Raw(absl::string_view name, absl::string_view json);
  JsonObject& String(absl::string_view name, absl::string_view value);
  JsonObject& Int(absl::string_view name, int64_t value);
  JsonObject& Time(absl::string_view name, absl::Time t);
  // Text when valid UTF-8, else base64 under `name`_base64.
  JsonObject& Bytes(absl::string_view name, absl::string_view value);
  bool empty() const { return parts_.empty(); }
  std::string str() const;

 private:
  std::vector<std::string> parts_;
};

std::string ResultJson(const client::Result& r);
std::string LeaseJson(uint64_t token, absl::Time expires_at);
void PrintResult(const client::Result& r);

}  // namespace idem::tools

#endif  // IDEM_TOOLS_IDEMCTL_IDEMCTL_H_
