#include "server/ops/address.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace idem::server {
namespace {

bool IsHostName(absl::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  for (char c : host) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' &&
        c != '.' && c != '_') {
      return false;
    }
  }
  return host.front() != '-' && host.front() != '.';
}

bool IsIpv6(absl::string_view host) {
  in6_addr address;
  return inet_pton(AF_INET6, std::string(host).c_str(), &address) == 1;
}

}  // namespace

absl::StatusOr<HostPort> ParseHostPort(absl::string_view text,
                                       PortZero port_zero) {
  const size_t colon = text.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError("expected HOST:PORT");
  }
  absl::string_view host = text.substr(0, colon);
  const absl::string_view port_text = text.substr(colon + 1);
  HostPort address;
  if (host.empty()) {
    return absl::InvalidArgumentError(
        port_zero == PortZero::kAllowed
            ? "the host is empty (use 127.0.0.1 for loopback, 0.0.0.0 for "
              "every interface)"
            : "the host is empty");
  }
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']' ||
        !IsIpv6(host.substr(1, host.size() - 2))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", host, "\" is not a bracketed IPv6 address such as [::1]"));
    }
    address.host = std::string(host.substr(1, host.size() - 2));
  } else if (host.find(':') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        "an IPv6 address needs brackets, e.g. [::1]:50051");
  } else if (!IsHostName(host)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", host,
        "\" is not a host name or IP address (letters, digits, '-', '.')"));
  } else {
    address.host = std::string(host);
  }
  const bool digits_only =
      !port_text.empty() && port_text.size() <= 5 &&
      port_text.find_first_not_of("0123456789") == absl::string_view::npos;
  int port = -1;
  if (!digits_only || !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "port \"", port_text, "\" is not a number from ",
        port_zero == PortZero::kAllowed ? "0 (any free port)" : "1",
        " to 65535"));
  }
  if (port == 0 && port_zero == PortZero::kRefused) {
    return absl::InvalidArgumentError(
        "port 0 is not a port to connect to (1 to 65535)");
  }
  address.port = port;
  return address;
}

int ListenTcp(const std::string& host, int port, int* bound_port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) !=
      0) {
    return -EADDRNOTAVAIL;
  }
  int error = EADDRNOTAVAIL;
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                a->ai_protocol);
    if (fd < 0) {
      error = errno;
      continue;
    }
    // SO_REUSEADDR only: with SO_REUSEPORT (cpp-httplib's default) a second
    // server on the same port started and shared the probes with this one.
    const int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
      error = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return -error;
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  *bound_port = ntohs(address.ss_family == AF_INET6
                          ? reinterpret_cast<sockaddr_in6*>(&address)->sin6_port
                          : reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  return fd;
}

}  // namespace idem::server
