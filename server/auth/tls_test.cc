#include "server/auth/tls.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_pki.h"

namespace idem::server {
namespace {

using testing::CertFiles;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void Write(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<CertFiles> ca = pki_.MakeCa("ca");
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *ca;
    absl::StatusOr<CertFiles> one =
        pki_.MakeLeaf(ca_, "one", "server-one", {"DNS:localhost"});
    absl::StatusOr<CertFiles> two =
        pki_.MakeLeaf(ca_, "two", "server-two", {"DNS:localhost"});
    ASSERT_TRUE(one.ok() && two.ok());
    one_ = *one;
    two_ = *two;
    // The operator's files, which the tests rotate.
    files_ = {dir_.Sub("cert.pem"), dir_.Sub("key.pem"), ""};
    Write(files_.cert, Slurp(one_.cert));
    Write(files_.key, Slurp(one_.key));
  }

  idem::testing::TempDir dir_;
  idem::testing::TestPki pki_{dir_.path()};
  CertFiles ca_, one_, two_;
  TlsFiles files_;
};

TEST_F(TlsTest, AGoodPairIsDescribedBySubjectAndExpiry) {
  absl::StatusOr<std::string> checked = CheckTlsFiles(files_);
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_TRUE(absl::StrContains(*checked, "subject=\"")) << *checked;
  EXPECT_TRUE(absl::StrContains(*checked, "server-one")) << *checked;
  EXPECT_TRUE(absl::StrContains(*checked, "not_after=\"")) << *checked;

  files_.client_ca = ca_.cert;
  checked = CheckTlsFiles(files_);
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_TRUE(absl::StrContains(*checked, "client_cas=1")) << *checked;
}

TEST_F(TlsTest, EachBadSetIsNamedForWhatIsWrong) {
  struct Case {
    TlsFiles files;
    std::string says;
  };
  Write(dir_.Sub("garbage.pem"), "not a pem\n");
  const std::vector<Case> cases = {
      {{dir_.Sub("missing.pem"), files_.key, ""}, "missing.pem"},
      {{files_.cert, dir_.Sub("missing.pem"), ""}, "missing.pem"},
      {{one_.key, files_.key, ""}, "holds no PEM certificate"},
      {{files_.cert, dir_.Sub("garbage.pem"), ""}, "holds no PEM private key"},
      {{files_.cert, two_.key, ""}, "does not match the certificate"},
      {{files_.cert, files_.key, dir_.Sub("garbage.pem")},
       "holds no PEM CA certificate"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::string> checked = CheckTlsFiles(c.files);
    ASSERT_FALSE(checked.ok()) << c.says;
    EXPECT_EQ(checked.status().code(), absl::StatusCode::kInvalidArgument)
        << checked.status();
    EXPECT_TRUE(absl::StrContains(checked.status().message(), c.says))
        << checked.status() << " should say " << c.says;
    EXPECT_FALSE(TlsReloader::Create(c.files).ok()) << c.says;
  }
}

TEST_F(TlsTest, TheReloaderInstallsAGoodRotationAndRefusesABadOne) {
  absl::StatusOr<std::unique_ptr<TlsReloader>> tls =
      TlsReloader::Create(files_);
  ASSERT_TRUE(tls.ok()) << tls.status();
  TlsReloader& reloader = **tls;
  EXPECT_TRUE(absl::StrContains(reloader.current(), "server-one"));
  EXPECT_EQ(reloader.Reload(false).kind,
            TlsReloader::Outcome::Kind::kUnchanged);

  // The certificate rotated before its key: a mismatched pair is refused,
  // once, and the old set keeps serving.
  Write(files_.cert, Slurp(two_.cert));
  TlsReloader::Outcome outcome = reloader.Reload(false);
  EXPECT_EQ(outcome.kind, TlsReloader::Outcome::Kind::kRefused);
  EXPECT_TRUE(absl::StrContains(outcome.detail, "does not match"))
      << outcome.detail;
  EXPECT_TRUE(absl::StrContains(reloader.current(), "server-one"));
  EXPECT_EQ(reloader.Reload(false).kind,
            TlsReloader::Outcome::Kind::kUnchanged);
  EXPECT_EQ(reloader.Reload(true).kind, TlsReloader::Outcome::Kind::kRefused);

  // Then the key: the new pair is installed.
  Write(files_.key, Slurp(two_.key));
  outcome = reloader.Reload(false);
  EXPECT_EQ(outcome.kind, TlsReloader::Outcome::Kind::kInstalled);
  EXPECT_TRUE(absl::StrContains(outcome.detail, "server-two"));
  EXPECT_TRUE(absl::StrContains(reloader.current(), "server-two"));

  // A file deleted mid-rotation is refused too.
  std::filesystem::remove(files_.key);
  outcome = reloader.Reload(false);
  EXPECT_EQ(outcome.kind, TlsReloader::Outcome::Kind::kRefused);
  EXPECT_TRUE(absl::StrContains(reloader.current(), "server-two"));
}

TEST_F(TlsTest, WatchReportsChangesOnly) {
  absl::StatusOr<std::unique_ptr<TlsReloader>> tls =
      TlsReloader::Create(files_);
  ASSERT_TRUE(tls.ok()) << tls.status();
  absl::Mutex mu;
  std::vector<TlsReloader::Outcome::Kind> seen;
  (*tls)->Watch(absl::Milliseconds(10),
                [&](const TlsReloader::Outcome& outcome) {
                  absl::MutexLock lock(&mu);
                  seen.push_back(outcome.kind);
                });
  absl::SleepFor(absl::Milliseconds(100));
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(seen.empty());
  }
  Write(files_.key, Slurp(two_.key));
  Write(files_.cert, Slurp(two_.cert));
  absl::MutexLock lock(&mu);
  auto installed = [&] {
    return !seen.empty() &&
           seen.back() == TlsReloader::Outcome::Kind::kInstalled;
  };
  EXPECT_TRUE(
      mu.AwaitWithTimeout(absl::Condition(&installed), absl::Seconds(10)));
}

TEST(RemoveStaleTlsCopiesTest, RemovesOnlyTheCopiesOfDeadServers) {
  idem::testing::TempDir base;
  // A process that has exited: its pid names no process any more.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  ASSERT_EQ(waitpid(dead, nullptr, 0), dead);
  const std::string stale = base.Sub(absl::StrCat("idem-tls-", dead, "-abc"));
  const std::string alive =
      base.Sub(absl::StrCat("idem-tls-", getppid(), "-abc"));
  const std::string old_style = base.Sub("idem-tls-XyZ123");
  const std::string other = base.Sub(absl::StrCat("other-", dead, "-abc"));
  for (const std::string& dir : {stale, alive, old_style, other}) {
    std::filesystem::create_directories(dir + "/set-1");
    std::ofstream(dir + "/set-1/key.pem") << "secret";
  }

  EXPECT_EQ(RemoveStaleTlsCopies(base.path()), 1);
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_TRUE(std::filesystem::exists(alive));
  EXPECT_TRUE(std::filesystem::exists(old_style));
  EXPECT_TRUE(std::filesystem::exists(other));
  EXPECT_EQ(RemoveStaleTlsCopies(base.path()), 0);
  EXPECT_EQ(RemoveStaleTlsCopies(base.Sub("missing")), 0);
}

TEST_F(TlsTest, TheCopiesAreNamedByPidAndRemovedWithTheReloader) {
  idem::testing::TempDir base;
  const char* saved = std::getenv("TMPDIR");
  const std::string previous = saved != nullptr ? saved : "";
  setenv("TMPDIR", base.path().c_str(), 1);
  {
    absl::StatusOr<std::unique_ptr<TlsReloader>> tls =
        TlsReloader::Create(files_);
    ASSERT_TRUE(tls.ok()) << tls.status();
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(base.path())) {
      names.push_back(entry.path().filename().string());
    }
    ASSERT_EQ(names.size(), 1u);
    EXPECT_TRUE(
        absl::StartsWith(names[0], absl::StrCat("idem-tls-", getpid(), "-")))
        << names[0];
  }
  EXPECT_TRUE(std::filesystem::is_empty(base.path()));
  if (saved != nullptr) {
    setenv("TMPDIR", previous.c_str(), 1);
  } else {
    unsetenv("TMPDIR");
  }
}

}  // namespace
}  // namespace idem::server
