#include "tests/testing/server_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tests/testing/spawn.h"

#ifndef IDEM_SERVER_BINARY
#error "IDEM_SERVER_BINARY must name the idem-server executable"
#endif

namespace idem::testing {

ServerProcess::ServerProcess(std::vector<std::string> extra_flags,
                             std::string data_dir)
    : data_dir_(data_dir.empty() ? dir_.Sub("data") : std::move(data_dir)),
      extra_flags_(std::move(extra_flags)) {}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Kill();
}

absl::Status ServerProcess::Start() {
  const std::string port_file = dir_.Sub("port");
  std::remove(port_file.c_str());
  // A restart keeps the port, so clients reconnect to the same address.
  std::vector<std::string> args = {
      IDEM_SERVER_BINARY,
      absl::StrCat("--listen=127.0.0.1:", port_),
      "--data-dir=" + data_dir_,
      "--port-file=" + port_file,
      "--metrics-listen=127.0.0.1:0",
      absl::StrCat("--http-listen=127.0.0.1:", http_port_)};
  args.insert(args.end(), extra_flags_.begin(), extra_flags_.end());
  pid_ = SpawnProcess(std::move(args), dir_.Sub("server.log"));
  if (pid_ < 0) return absl::InternalError("fork failed");

  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("idem-server exited during start-up:\n", log()));
    }
    std::ifstream in(port_file);
    std::string line;
    // Line 1: the gRPC port; then NAME=PORT for the others that are on.
    if (in >> port_ && port_ > 0) {
      while (in >> line) {
        int* named = absl::StartsWith(line, "metrics=") ? &metrics_port_
                     : absl::StartsWith(line, "http=")  ? &http_port_
                                                        : nullptr;
        if (named != nullptr &&
            !absl::SimpleAtoi(line.substr(line.find('=') + 1), named)) {
          *named = 0;
        }
      }
      auto channel = grpc::CreateChannel(
          address(), credentials_ != nullptr
                         ? credentials_
                         : grpc::InsecureChannelCredentials());
      if (channel->WaitForConnected(
              absl::ToChronoTime(absl::Now() + absl::Seconds(10)))) {
        return absl::OkStatus();
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  Kill();
  return absl::DeadlineExceededError(
      absl::StrCat("idem-server did not start in 30s:\n", log()));
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

int ServerProcess::Terminate() {
  if (Signal(SIGTERM) != 0) return -1;
  return Wait();
}

int ServerProcess::Signal(int signal_number) {
  return pid_ > 0 ? kill(pid_, signal_number) : -1;
}

int ServerProcess::Wait() {
  if (pid_ <= 0) return -1;
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
}

std::string ServerProcess::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

std::unique_ptr<v1::Idempotency::Stub> ServerProcess::NewStub() const {
  return v1::Idempotency::NewStub(grpc::CreateChannel(
      address(), credentials_ != nullptr ? credentials_
                                         : grpc::InsecureChannelCredentials()));
}

std::string ServerProcess::log() const {
  std::ifstream in(dir_.path() + "/server.log");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace idem::testing
