// The command table is what usage, help and argument checks are made of:
// it must agree with itself.
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tools/idemctl/idemctl.h"

namespace idem::tools {
namespace {

TEST(IdemctlTableTest, NamesAreUniqueAndEveryCommandRuns) {
  std::set<std::string> names;
  for (const CommandGroup& group : AllCommandGroups()) {
    EXPECT_FALSE(group.commands.empty()) << group.title;
    for (const CommandSpec& spec : group.commands) {
      EXPECT_TRUE(names.insert(std::string(spec.name)).second) << spec.name;
      EXPECT_NE(spec.run, nullptr) << spec.name;
      EXPECT_TRUE(absl::EndsWith(spec.help, "\n")) << spec.name;
    }
  }
  // One command per RPC of idem.v1.Idempotency and idem.v1.Admin (Ping is
  // the health check), plus fingerprint.
  EXPECT_EQ(names, (std::set<std::string>{"begin", "complete", "release",
                                          "extend", "checkpoint", "lookup",
                                          "ping", "fingerprint", "list",
                                          "delete", "force-release", "stats"}));
}

TEST(IdemctlTableTest, TheSynopsisShowsExactlyTheFlagsACommandAccepts) {
  for (const CommandGroup& group : AllCommandGroups()) {
    for (const CommandSpec& spec : group.commands) {
      for (absl::string_view flag : spec.flags) {
        EXPECT_TRUE(absl::StrContains(spec.synopsis, absl::StrCat("--", flag)))
            << spec.name << " accepts --" << flag << " but does not show it";
      }
      // Every "--name" the synopsis shows is accepted.
      for (size_t at = spec.synopsis.find("--"); at != absl::string_view::npos;
           at = spec.synopsis.find("--", at + 2)) {
        const size_t end = spec.synopsis.find_first_of("=] |\n", at + 2);
        const absl::string_view shown =
            spec.synopsis.substr(at + 2, end - (at + 2));
        bool accepted = false;
        for (absl::string_view flag : spec.flags) {
          accepted = accepted || flag == shown;
        }
        EXPECT_TRUE(accepted)
            << spec.name << " shows --" << shown << " but rejects it";
      }
    }
  }
}

}  // namespace
}  // namespace idem::tools
