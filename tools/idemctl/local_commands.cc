// Commands that contact no server.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "idem/keys.h"
#include "tools/idemctl/idemctl.h"

namespace idem::tools {
namespace {

int Fingerprint(const Invocation& in) {
  const std::vector<absl::string_view> parts(in.args().positional.begin(),
                                             in.args().positional.end());
  const std::string hex = client::ToHex(client::FingerprintParts(parts));
  std::cout << (in.json() ? absl::StrCat("{\"fingerprint\":\"", hex, "\"}")
                          : hex)
            << "\n";
  return kOk;
}

const CommandSpec kCommands[] = {
    {"fingerprint",
     Operands::kAny,
     "PART...",
     "Prints (hex) the fingerprint of the parts as every Idem client\n"
     "computes it (length-prefixed SHA-256), e.g. the HTTP middleware's:\n"
     "  idemctl fingerprint POST /v1/orders '{\"item\":1}'\n"
     "Contacts no server.\n",
     {},
     Fingerprint},
};

}  // namespace

CommandGroup LocalCommands() {
  return {"Local commands (no server):", kCommands};
}

}  // namespace idem::tools
