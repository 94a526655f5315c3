// idemctl: the Idem command-line tool. One command per RPC, for operators
// and shell scripts, on the public C++ client library like any service.
// The commands are a table (idemctl.h); this file parses the command line,
// writes usage and help from the table, checks operands and flags against
// it and runs the command.
#include <cstdlib>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tools/idemctl/idemctl.h"

namespace idem::tools {
namespace {

constexpr char kGlobalHelp[] =
    R"(Global flags:
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

const CommandSpec* Find(absl::string_view name) {
  for (const CommandGroup& group : AllCommandGroups()) {
    for (const CommandSpec& spec : group.commands) {
      if (spec.name == name) return &spec;
    }
  }
  return nullptr;
}

// "name synopsis", continuation lines indented by `indent`.
std::string UsageLine(const CommandSpec& spec, size_t indent) {
  return absl::StrCat(
      spec.name, spec.synopsis.empty() ? "" : " ",
      absl::StrReplaceAll(spec.synopsis,
                          {{"\n", "\n" + std::string(indent, ' ')}}));
}

std::string Usage() {
  std::string text =
      "usage: idemctl [--server=HOST:PORT] [--json] [--timeout=5s] COMMAND "
      "ARGS\n";
  for (const CommandGroup& group : AllCommandGroups()) {
    absl::StrAppend(&text, "\n", group.title, "\n");
    for (const CommandSpec& spec : group.commands) {
      absl::StrAppend(&text, "  ", UsageLine(spec, 8), "\n");
    }
  }
  absl::StrAppend(&text, "\n", kGlobalHelp);
  return text;
}

std::string Help(const CommandSpec& spec) {
  return absl::StrCat("usage: idemctl ", UsageLine(spec, 9), "\n", spec.help);
}

// Flags that take no value: those every synopsis shows as "[--name]".
bool IsSwitch(absl::string_view name) {
  for (const CommandGroup& group : AllCommandGroups()) {
    for (const CommandSpec& spec : group.commands) {
      if (absl::StrContains(spec.synopsis, absl::StrCat("[--", name, "]"))) {
        return true;
      }
    }
  }
  return false;
}

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
    } else if (IsSwitch(name)) {
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

// The operands and flags `spec` declares, checked before it runs.
void CheckArguments(const CommandSpec& spec, const Args& args) {
  const size_t n = args.positional.size();
  switch (spec.operands) {
    case Operands::kNone:
      if (n != 0) {
        throw UsageError{absl::StrCat(spec.name, " takes no arguments")};
      }
      break;
    case Operands::kNamespaceKey:
      if (n != 2) {
        throw UsageError{absl::StrCat(spec.name, " takes NAMESPACE KEY; got ",
                                      n, " arguments")};
      }
      break;
    case Operands::kNamespace:
      if (n != 1) throw UsageError{absl::StrCat(spec.name, " takes NAMESPACE")};
      break;
    case Operands::kOptionalNamespace:
      if (n > 1) {
        throw UsageError{absl::StrCat(spec.name, " takes at most a NAMESPACE")};
      }
      break;
    case Operands::kAny:
      break;
  }
  for (const auto& [name, value] : args.flags) {
    bool known = false;
    for (absl::string_view flag : spec.flags) known = known || flag == name;
    if (!known) {
      throw UsageError{
          absl::StrCat("unknown flag --", name, " for ", spec.name)};
    }
  }
}

int Run(const Args& args) {
  const CommandSpec* spec = Find(args.command);
  if (args.help || args.command == "help") {
    std::cout << (spec != nullptr ? Help(*spec) : Usage());
    return kOk;
  }
  if (args.command.empty()) throw UsageError{"no command given"};
  if (spec == nullptr) {
    throw UsageError{absl::StrCat("unknown command \"", args.command, "\"")};
  }
  CheckArguments(*spec, args);
  return spec->run(Invocation(args));
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
