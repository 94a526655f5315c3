// Loopback ports for the servers tests start (PostgreSQL, Redis nodes).
#ifndef IDEM_TESTS_TESTING_PORTS_H_
#define IDEM_TESTS_TESTING_PORTS_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <random>

namespace idem::testing {

// Whether 127.0.0.1:`port` can be bound now (another process may take it
// before the caller does: pick at random, and retry on a failed start).
inline bool LoopbackPortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool free =
      bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return free;
}

// A random port P, with P + `companion` too (0: none), both free now and
// both below the kernel's ephemeral range: the idem-servers the tests
// start listen on port 0 and every outgoing connection takes an ephemeral
// port, so a pick inside that range can be taken between this check and
// the server's bind (Redis's cluster bus port, P + 10000, was).
// Returns -1 when none is found.
inline int PickLoopbackPort(int companion = 0) {
  int ephemeral_low = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
  constexpr int kLowest = 10000;
  const int highest = ephemeral_low - 1 - companion;
  if (highest <= kLowest) return -1;
  static std::minstd_rand random(std::random_device{}());
  std::uniform_int_distribution<int> range(kLowest, highest);
  for (int tries = 0; tries < 1000; ++tries) {
    const int port = range(random);
    if (LoopbackPortFree(port) &&
        (companion == 0 || LoopbackPortFree(port + companion))) {
      return port;
    }
  }
  return -1;
}

}  // namespace idem::testing

#endif  // IDEM_TESTS_TESTING_PORTS_H_
