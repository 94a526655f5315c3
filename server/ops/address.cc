#include "server/ops/address.h"

#include <arpa/inet.h>

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

}  // namespace idem::server
