// idemctl, the real binary, against the real idem-server.
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/temp_dir.h"

#ifndef IDEMCTL_BINARY
#error "IDEMCTL_BINARY must name the idemctl executable"
#endif

namespace idem {
namespace {

using testing::CommandResult;

class IdemctlTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.Start().ok()) << server_.log(); }

  CommandResult Idemctl(std::vector<std::string> args) {
    args.insert(args.begin(), IDEMCTL_BINARY);
    return testing::RunCommand(args, {{"IDEM_SERVER", server_.address()}});
  }

  // Parses idemctl's --json output; fails the test if it is not one object.
  static google::protobuf::Struct Json(const CommandResult& r) {
    google::protobuf::Struct parsed;
    auto status = google::protobuf::util::JsonStringToMessage(r.out, &parsed);
    EXPECT_TRUE(status.ok()) << status.ToString() << " in: " << r.out;
    return parsed;
  }
  static std::string Field(const google::protobuf::Struct& s,
                           const std::string& a, const std::string& b = "") {
    auto it = s.fields().find(a);
    if (it == s.fields().end()) return "<missing>";
    if (b.empty()) {
      return it->second.has_number_value()
                 ? std::to_string(
                       static_cast<int64_t>(it->second.number_value()))
                 : it->second.string_value();
    }
    return Field(it->second.struct_value(), b);
  }

  testing::ServerProcess server_;
  testing::TempDir dir_;
};

TEST_F(IdemctlTest, HelpWorksForTheToolAndEveryCommand) {
  CommandResult help = Idemctl({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("Exit codes"), std::string::npos);
  for (const char* command :
       {"begin", "complete", "release", "extend", "checkpoint", "lookup",
        "ping", "list", "delete", "force-release", "stats"}) {
    CommandResult r = Idemctl({command, "--help"});
    EXPECT_EQ(r.exit_code, 0) << command;
    EXPECT_NE(r.out.find(std::string("usage: idemctl ") + command),
              std::string::npos)
        << r.out;
  }
}

TEST_F(IdemctlTest, BadArgumentsAreUsageErrorsThatNameTheProblem) {
  struct Case {
    std::vector<std::string> args;
    std::string mentions;
  };
  const std::vector<Case> cases = {
      {{}, "no command"},
      {{"frobnicate"}, "unknown command"},
      {{"begin", "ns"}, "NAMESPACE KEY"},
      {{"begin", "ns", "k", "--fingerprint=xyz"}, "hex"},
      {{"begin", "ns", "k", "--fingerprint=ab", "--request=x"}, "not both"},
      {{"begin", "ns", "k", "--lease=soon"}, "--lease"},
      {{"begin", "ns", "k", "--token=1"}, "unknown flag --token"},
      {{"complete", "ns", "k"}, "--token"},
      {{"complete", "ns", "k", "--token=1", "--meta=novalue"}, "KEY=VALUE"},
      {{"complete", "ns", "k", "--token=1", "--body=@/no/such/file"},
       "cannot read"},
      {{"ping", "extra"}, "no arguments"},
      {{"--timeout=0s", "ping"}, "--timeout"},
  };
  for (const Case& c : cases) {
    CommandResult r = Idemctl(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.mentions << ": " << r.err;
    EXPECT_NE(r.err.find(c.mentions), std::string::npos) << r.err;
  }
}

TEST_F(IdemctlTest, ExitCodesFollowTheOutcomes) {
  EXPECT_EQ(Idemctl({"ping"}).exit_code, 0);
  CommandResult begun =
      Idemctl({"--json", "begin", "pay", "k1", "--request=charge 10 EUR"});
  ASSERT_EQ(begun.exit_code, 0) << begun.err;
  google::protobuf::Struct acquired = Json(begun);
  EXPECT_EQ(Field(acquired, "outcome"), "OUTCOME_ACQUIRED");
  const std::string token = Field(acquired, "lease", "token");
  ASSERT_NE(token, "<missing>");

  EXPECT_EQ(
      Idemctl({"begin", "pay", "k1", "--request=charge 10 EUR"}).exit_code, 11);
  EXPECT_EQ(
      Idemctl({"begin", "pay", "k1", "--request=charge 99 EUR"}).exit_code, 12);

  const std::string body_file = dir_.Sub("body.json");
  std::ofstream(body_file) << "{\"charge\":\"ch_1\"}";
  CommandResult done =
      Idemctl({"complete", "pay", "k1", "--token=" + token, "--code=201",
               "--body=@" + body_file, "--meta=content-type=application/json"});
  ASSERT_EQ(done.exit_code, 0) << done.err;
  EXPECT_EQ(done.out.rfind("COMPLETED completed_at=", 0), 0u) << done.out;

  CommandResult replay =
      Idemctl({"--json", "begin", "pay", "k1", "--request=charge 10 EUR"});
  EXPECT_EQ(replay.exit_code, 10);
  google::protobuf::Struct completed = Json(replay);
  EXPECT_EQ(Field(completed, "outcome"), "OUTCOME_COMPLETED");
  EXPECT_EQ(Field(completed, "result", "code"), "201");
  EXPECT_EQ(Field(completed, "result", "body"), "{\"charge\":\"ch_1\"}");
  EXPECT_NE(Field(completed, "expires_at"), "<missing>");

  // Errors have their own codes, distinct from the outcomes.
  CommandResult different =
      Idemctl({"complete", "pay", "k1", "--token=" + token, "--body=other"});
  EXPECT_EQ(different.exit_code, 6) << different.err;
  CommandResult stale = Idemctl({"release", "pay", "k1", "--token=999999"});
  EXPECT_EQ(stale.exit_code, 5);
  EXPECT_NE(stale.err.find("never issued"), std::string::npos) << stale.err;
  CommandResult invalid = Idemctl({"lookup", "pay", std::string(256, 'k')});
  EXPECT_EQ(invalid.exit_code, 4);
  EXPECT_NE(invalid.err.find("key must be 1 to 255"), std::string::npos);
}

TEST_F(IdemctlTest, LookupShowsTheKeyAndBinaryBodiesAreMarked) {
  CommandResult begun = Idemctl(
      {"--json", "begin", "files", "f1", "--fingerprint=00ff", "--lease=1m"});
  ASSERT_EQ(begun.exit_code, 0);
  const std::string token = Field(Json(begun), "lease", "token");
  CommandResult extended = Idemctl(
      {"--json", "extend", "files", "f1", "--token=" + token, "--lease=2m"});
  EXPECT_EQ(extended.exit_code, 0) << extended.err;
  EXPECT_NE(Field(Json(extended), "expires_at"), "<missing>");
  EXPECT_EQ(Idemctl({"checkpoint", "files", "f1", "--token=" + token,
                     "--data=step 1 done"})
                .exit_code,
            0);

  google::protobuf::Struct working =
      Json(Idemctl({"--json", "lookup", "files", "f1"}));
  EXPECT_EQ(Field(working, "state"), "STATE_IN_PROGRESS");
  EXPECT_EQ(Field(working, "checkpoint"), "step 1 done");
  EXPECT_EQ(Field(working, "fingerprint"), "AP8=");  // base64 of 00ff
  EXPECT_EQ(Field(working, "attempt"), "1");

  const std::string binary = dir_.Sub("body.bin");
  std::ofstream(binary, std::ios::binary) << std::string("\xff\x00\x01", 3);
  ASSERT_EQ(Idemctl({"complete", "files", "f1", "--token=" + token,
                     "--body=@" + binary})
                .exit_code,
            0);
  google::protobuf::Struct done =
      Json(Idemctl({"--json", "lookup", "files", "f1"}));
  EXPECT_EQ(Field(done, "state"), "STATE_COMPLETED");
  EXPECT_EQ(Field(done, "result", "body_base64"), "/wAB");
  EXPECT_EQ(Field(done, "result", "body"), "<missing>");

  CommandResult human = Idemctl({"lookup", "files", "f1"});
  EXPECT_EQ(human.exit_code, 0);
  EXPECT_NE(human.out.find("COMPLETED attempt=1"), std::string::npos)
      << human.out;
  EXPECT_NE(human.out.find("fingerprint: 00ff"), std::string::npos);
  EXPECT_NE(human.out.find("body (base64): /wAB"), std::string::npos);

  CommandResult absent = Idemctl({"--json", "lookup", "files", "nope"});
  EXPECT_EQ(absent.exit_code, 0);
  EXPECT_EQ(Field(Json(absent), "state"), "STATE_ABSENT");
}

TEST_F(IdemctlTest, OperatorCommandsListDeleteForceReleaseAndCount) {
  auto token_of = [&](const CommandResult& r) {
    return Field(Json(r), "lease", "token");
  };
  for (int i = 0; i < 5; ++i) {
    const std::string key = "done-" + std::to_string(i);
    const std::string token =
        token_of(Idemctl({"--json", "begin", "ops", key}));
    ASSERT_EQ(Idemctl({"complete", "ops", key, "--token=" + token}).exit_code,
              0);
  }
  Idemctl({"begin", "ops", "stuck", "--lease=1s"});
  const std::string busy_token =
      token_of(Idemctl({"--json", "begin", "ops", "busy"}));
  absl::SleepFor(absl::Milliseconds(1100));

  CommandResult page = Idemctl({"list", "ops", "--page-size=2"});
  EXPECT_EQ(page.exit_code, 0) << page.err;
  EXPECT_NE(page.out.find("next_page_token: "), std::string::npos) << page.out;
  CommandResult all =
      Idemctl({"--json", "list", "ops", "--page-size=2", "--all"});
  google::protobuf::Struct listed = Json(all);
  EXPECT_EQ(listed.fields().at("keys").list_value().values_size(), 7);
  CommandResult lapsed = Idemctl({"list", "ops", "--lapsed"});
  EXPECT_EQ(lapsed.out.rfind("stuck\tIN_PROGRESS", 0), 0u) << lapsed.out;
  EXPECT_NE(lapsed.out.find("(lapsed)"), std::string::npos);
  EXPECT_EQ(lapsed.out.find("busy"), std::string::npos);

  EXPECT_EQ(Idemctl({"delete", "ops", "done-0"}).exit_code, 2);  // No reason.
  CommandResult deleted =
      Idemctl({"delete", "ops", "done-0", "--reason=test cleanup"});
  EXPECT_EQ(deleted.exit_code, 0) << deleted.err;
  EXPECT_EQ(deleted.out, "DELETED\n");
  EXPECT_EQ(Idemctl({"delete", "ops", "done-0", "--reason=again"}).out,
            "NOT_FOUND (nothing to delete)\n");

  CommandResult released =
      Idemctl({"--json", "force-release", "ops", "busy", "--reason=host lost"});
  EXPECT_EQ(released.exit_code, 0) << released.err;
  EXPECT_GT(std::stoull(Field(Json(released), "fencing_token")),
            std::stoull(busy_token));
  EXPECT_EQ(
      Idemctl({"complete", "ops", "busy", "--token=" + busy_token}).exit_code,
      5);
  EXPECT_EQ(Idemctl({"force-release", "ops", "done-1", "--reason=x"}).exit_code,
            5);

  google::protobuf::Struct stats = Json(Idemctl({"--json", "stats"}));
  const auto& namespaces = stats.fields().at("namespaces").list_value();
  ASSERT_EQ(namespaces.values_size(), 1);
  const auto& ops = namespaces.values(0).struct_value();
  EXPECT_EQ(Field(ops, "namespace"), "ops");
  EXPECT_EQ(Field(ops, "completed"), "4");
  EXPECT_EQ(Field(ops, "in_progress"), "1");  // "stuck"; "busy" was released.
  EXPECT_EQ(Field(ops, "lease_lapsed"), "1");
  CommandResult table = Idemctl({"stats", "ops"});
  EXPECT_NE(table.out.find("ops\t1\t1\t4"), std::string::npos) << table.out;
}

TEST_F(IdemctlTest, ADownServerIsReportedClearlyWithinTheTimeout) {
  server_.Kill();
  const absl::Time start = absl::Now();
  CommandResult r = Idemctl({"--timeout=1s", "lookup", "pay", "k1"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("cannot reach the Idem server at " + server_.address()),
            std::string::npos)
      << r.err;
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  CommandResult bad =
      Idemctl({"--server=no such host:1", "--timeout=1s", "ping"});
  EXPECT_EQ(bad.exit_code, 3);
  EXPECT_NE(bad.err.find("no such host:1"), std::string::npos) << bad.err;
}

TEST_F(IdemctlTest, AServerAddressWithABadPortIsAUsageError) {
  for (const char* server : {"127.0.0.1:99999", "127.0.0.1", "localhost:0",
                             ":50051", "127.0.0.1:5x"}) {
    CommandResult r =
        Idemctl({std::string("--server=") + server, "--timeout=1s", "ping"});
    EXPECT_EQ(r.exit_code, 2) << server << ": " << r.err;
    EXPECT_NE(r.err.find(std::string("--server=") + server), std::string::npos)
        << r.err;
  }
}

TEST_F(IdemctlTest, TimeoutBoundsTheWholeCommandWaitIncluded) {
  ASSERT_EQ(Idemctl({"begin", "pay", "busy", "--lease=60s"}).exit_code, 0);
  const absl::Time start = absl::Now();
  CommandResult waited =
      Idemctl({"--timeout=2s", "begin", "pay", "busy", "--wait=60s"});
  const absl::Duration took = absl::Now() - start;
  // The server answered IN_PROGRESS after the cut wait (1.6 s), within the
  // 2 s the command was given; before, it waited the whole minute.
  EXPECT_EQ(waited.exit_code, 11) << waited.err;
  EXPECT_GE(took, absl::Milliseconds(1500));
  EXPECT_LT(took, absl::Seconds(3)) << "--timeout=2s took " << took;
}

// The example client of docs/clients.md: one line per outcome, and the work's
// own lines only when the work runs.
TEST_F(IdemctlTest, TheExampleClientSaysWhatHappenedInOneLine) {
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv = {CREATE_ORDER_EXAMPLE, server_.address(),
                                     "order-42"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return testing::RunCommand(argv);
  };
  CommandResult created = run({});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  std::vector<std::string> lines =
      absl::StrSplit(absl::StripTrailingAsciiWhitespace(created.out), '\n');
  ASSERT_EQ(lines.size(), 3u) << created.out;
  EXPECT_EQ(lines[0].rfind("reserving stock for ", 0), 0u) << created.out;
  EXPECT_EQ(lines[1].rfind("charging the card for ", 0), 0u) << created.out;
  EXPECT_EQ(lines[2].rfind("created order-42: 201 {\"order\":", 0), 0u)
      << created.out;

  CommandResult replayed = run({});
  ASSERT_EQ(replayed.exit_code, 0) << replayed.err;
  EXPECT_EQ(replayed.out,
            "replayed order-42 (nothing ran again): " +
                lines[2].substr(std::string("created order-42: ").size()) +
                "\n");

  CommandResult refused = run({R"({"item":"pen","quantity":2})"});
  EXPECT_EQ(refused.exit_code, 3) << refused.err;
  EXPECT_EQ(refused.out,
            "refused order-42: it was already used with a different order\n");
}

}  // namespace
}  // namespace idem
