// Helpers for idempotency keys and request fingerprints.
//
//   std::string key = idem::client::NewKey();            // a random UUID
//   std::string fp = idem::client::Fingerprint(body);    // SHA-256 of bytes
//
// The fingerprint is the raw 32-byte SHA-256 digest of the canonical request
// bytes: exactly what the server computes when a Begin carries `request`
// instead of `fingerprint`. Any language produces the same value with its
// standard SHA-256 (Python: hashlib.sha256(body).digest(); Go:
// sha256.Sum256(body)). What counts as "canonical" is the caller's choice;
// it must be byte-for-byte stable across retries (e.g. the HTTP method, path
// and body, not headers that change per attempt).
#ifndef IDEM_CLIENT_INCLUDE_IDEM_KEYS_H_
#define IDEM_CLIENT_INCLUDE_IDEM_KEYS_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace idem::client {

// A random (version 4) UUID in its 36-character text form, from OpenSSL's
// cryptographic RNG. Aborts the process if that RNG fails, as there is no
// safe fallback for a key that must not collide.
std::string NewKey();

// The raw 32-byte SHA-256 digest of `request`.
std::string Fingerprint(absl::string_view request);

// The raw 32-byte SHA-256 of several parts, each written as its length in
// decimal, a colon and its bytes ("4:POST10:/v1/orders2:{}"), so that no two
// lists of parts collide. Python's fingerprint_parts and Go's
// FingerprintParts give the same bytes; the HTTP middleware fingerprints
// (method, path, body) this way.
std::string FingerprintParts(absl::Span<const absl::string_view> parts);

// Lower-case hex of `bytes`, e.g. to print a fingerprint.
std::string ToHex(absl::string_view bytes);

}  // namespace idem::client

#endif  // IDEM_CLIENT_INCLUDE_IDEM_KEYS_H_
