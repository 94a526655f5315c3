#include "idem/keys.h"

#include <openssl/rand.h>
#include <openssl/sha.h>

#include <array>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace idem::client {

std::string NewKey() {
  std::array<unsigned char, 16> bytes;
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    std::fputs("idem: OpenSSL RAND_bytes failed; cannot make a key\n", stderr);
    std::abort();
  }
  bytes[6] = (bytes[6] & 0x0f) | 0x40;  // Version 4.
  bytes[8] = (bytes[8] & 0x3f) | 0x80;  // RFC 4122 variant.
  const std::string hex = ToHex(absl::string_view(
      reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) +
         "-" + hex.substr(16, 4) + "-" + hex.substr(20, 12);
}

std::string Fingerprint(absl::string_view request) {
  std::string digest(SHA256_DIGEST_LENGTH, '\0');
  SHA256(reinterpret_cast<const unsigned char*>(request.data()), request.size(),
         reinterpret_cast<unsigned char*>(digest.data()));
  return digest;
}

std::string FingerprintParts(absl::Span<const absl::string_view> parts) {
  std::string canonical;
  for (absl::string_view part : parts) {
    absl::StrAppend(&canonical, part.size(), ":", part);
  }
  return Fingerprint(canonical);
}

std::string ToHex(absl::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    hex.push_back(kDigits[c >> 4]);
    hex.push_back(kDigits[c & 0xf]);
  }
  return hex;
}

}  // namespace idem::client
