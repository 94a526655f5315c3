// Network addresses given on the command line: HOST:PORT, where HOST is a
// name (letters, digits, '-', '.', '_'), an IPv4 address or a bracketed IPv6
// address ("[::1]:50051"). Every address flag (--listen, --metrics-listen,
// the nodes of --store=redis-cluster://...) is checked here, so that a typo
// such as port 99999 is refused at start-up instead of being wrapped by the
// resolver into another port.
//
//   absl::StatusOr<HostPort> a = ParseHostPort("127.0.0.1:50051",
//                                              PortZero::kAllowed);
#ifndef IDEM_SERVER_OPS_ADDRESS_H_
#define IDEM_SERVER_OPS_ADDRESS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace idem::server {

struct HostPort {
  // Without brackets: "::1", "127.0.0.1", "localhost".
  std::string host;
  int port = 0;
};

// Whether port 0 ("pick a free port") is accepted: yes for addresses this
// server listens on, no for addresses it connects to.
enum class PortZero { kAllowed, kRefused };

// INVALID_ARGUMENT saying what is wrong with `text` (without naming a flag:
// the caller adds that).
absl::StatusOr<HostPort> ParseHostPort(absl::string_view text,
                                       PortZero port_zero);

// A non-blocking listening TCP socket on host:port (port 0: any free one;
// the bound port in *bound_port), SO_REUSEADDR but never SO_REUSEPORT: a
// second server on the same port fails with EADDRINUSE instead of sharing
// the traffic. -errno on failure.
int ListenTcp(const std::string& host, int port, int* bound_port);

}  // namespace idem::server

#endif  // IDEM_SERVER_OPS_ADDRESS_H_
