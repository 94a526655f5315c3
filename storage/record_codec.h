// How records are laid out in an ordered key-value store.
//
// Key:   'k' namespace '\0' key. Namespaces and keys are printable ASCII, so
//        '\0' never occurs inside them: a namespace's keys form one
//        contiguous range that a prefix scan (NamespacePrefix) covers, and no
//        namespace is a prefix of another's range.
// Value: format version (1 byte, 1), expiry in Unix microseconds (8 bytes,
//        little endian), then the Record protobuf. The fixed expiry lets the
//        TTL compaction filter decide without parsing the record.
#ifndef IDEM_STORAGE_RECORD_CODEC_H_
#define IDEM_STORAGE_RECORD_CODEC_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/record.pb.h"
#include "storage/store.h"

namespace idem::storage {

std::string EncodeKey(const KeyId& id);
std::string NamespacePrefix(absl::string_view name_space);
bool IsRecordKey(absl::string_view encoded_key);
// The (namespace, key) of a record key; nullopt for other keys.
std::optional<KeyId> DecodeKey(absl::string_view encoded_key);

// 8 bytes, little endian (the token counter, and the record expiry).
std::string EncodeFixed64(uint64_t value);
// Reads the first 8 bytes of `in`, which must hold at least 8.
uint64_t DecodeFixed64(absl::string_view in);

std::string EncodeRecord(const Record& record);
// DATA_LOSS when `value` is not a record this version can read.
absl::StatusOr<Record> DecodeRecord(absl::string_view value);
// The expiry of an encoded record without decoding it; nullopt if malformed.
std::optional<int64_t> PeekExpiryMicros(absl::string_view value);

}  // namespace idem::storage

#endif  // IDEM_STORAGE_RECORD_CODEC_H_
