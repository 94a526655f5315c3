#include "storage/record_codec.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace idem::storage {
namespace {

constexpr char kRecordTag = 'k';
constexpr char kFormatVersion = 1;
constexpr size_t kHeaderSize = 1 + sizeof(uint64_t);

}  // namespace

std::string EncodeKey(const KeyId& id) {
  return absl::StrCat(NamespacePrefix(id.name_space), id.key);
}

std::string NamespacePrefix(absl::string_view name_space) {
  std::string prefix;
  prefix.reserve(name_space.size() + 2);
  prefix.push_back(kRecordTag);
  prefix.append(name_space.data(), name_space.size());
  prefix.push_back('\0');
  return prefix;
}

bool IsRecordKey(absl::string_view encoded_key) {
  return !encoded_key.empty() && encoded_key.front() == kRecordTag;
}

std::optional<KeyId> DecodeKey(absl::string_view encoded_key) {
  if (!IsRecordKey(encoded_key)) return std::nullopt;
  encoded_key.remove_prefix(1);
  const size_t separator = encoded_key.find('\0');
  if (separator == absl::string_view::npos) return std::nullopt;
  return KeyId{std::string(encoded_key.substr(0, separator)),
               std::string(encoded_key.substr(separator + 1))};
}

std::string EncodeFixed64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  }
  return out;
}

uint64_t DecodeFixed64(absl::string_view in) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) {
    value = (value << 8) | static_cast<unsigned char>(in[i]);
  }
  return value;
}

std::string EncodeRecord(const Record& record) {
  std::string value(1, kFormatVersion);
  value += EncodeFixed64(static_cast<uint64_t>(record.expires_at_us()));
  record.AppendToString(&value);
  return value;
}

absl::StatusOr<Record> DecodeRecord(absl::string_view value) {
  if (value.size() < kHeaderSize || value[0] != kFormatVersion) {
    return absl::DataLossError(
        absl::StrCat("stored record is corrupt or of an unknown format (",
                     value.size(), " bytes)"));
  }
  Record record;
  value.remove_prefix(kHeaderSize);
  if (!record.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return absl::DataLossError("stored record does not parse");
  }
  return record;
}

std::optional<int64_t> PeekExpiryMicros(absl::string_view value) {
  if (value.size() < kHeaderSize || value[0] != kFormatVersion) {
    return std::nullopt;
  }
  return static_cast<int64_t>(DecodeFixed64(value.substr(1)));
}

}  // namespace idem::storage
