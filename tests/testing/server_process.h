// Runs the real idem-server binary for integration tests: on a free loopback
// port, on a data directory that outlives restarts, with its log kept in a
// file that is printed when a test fails.
#ifndef IDEM_TESTS_TESTING_SERVER_PROCESS_H_
#define IDEM_TESTS_TESTING_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "idem/v1/idempotency.grpc.pb.h"
#include "tests/testing/temp_dir.h"

namespace idem::testing {

class ServerProcess {
 public:
  // `extra_flags` are passed to every start, e.g. {"--max-wait=10s"}.
  // `data_dir` defaults to a folder of the server's own temporary directory.
  explicit ServerProcess(std::vector<std::string> extra_flags = {},
                         std::string data_dir = "");
  // Kills the server if it still runs.
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Credentials for the readiness check and NewStub(); plaintext unless set
  // (a TLS server needs a client that trusts it).
  void UseCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
    credentials_ = std::move(credentials);
  }

  // Starts the server and waits until it answers RPCs. The first start picks
  // a free port; restarts reuse it.
  absl::Status Start();
  // SIGKILL, as in a crash: nothing is flushed or closed.
  void Kill();
  // SIGTERM, then waits for exit; returns the exit status (or -signal).
  int Terminate();

  // Sends a signal without waiting; Wait() then collects the exit status.
  int Signal(int signal_number);
  int Wait();

  std::string address() const;
  pid_t pid() const { return pid_; }
  int metrics_port() const { return metrics_port_; }
  // The Connect (HTTP/JSON) port; kept across restarts like port().
  int http_port() const { return http_port_; }
  std::unique_ptr<v1::Idempotency::Stub> NewStub() const;
  std::string log() const;
  const std::string& data_dir() const { return data_dir_; }

 private:
  TempDir dir_;
  std::string data_dir_;
  std::vector<std::string> extra_flags_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  int http_port_ = 0;
};

}  // namespace idem::testing

#endif  // IDEM_TESTS_TESTING_SERVER_PROCESS_H_
