// Loopback ports for the servers tests start (PostgreSQL, Redis nodes).
#ifndef IDEM_TESTS_TESTING_PORTS_H_
#define IDEM_TESTS_TESTING_PORTS_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>

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

}  // namespace idem::testing

#endif  // IDEM_TESTS_TESTING_PORTS_H_
