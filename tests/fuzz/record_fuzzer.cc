// libFuzzer target: arbitrary bytes as a stored record. Decoding must never
// crash; a record that decodes goes through every transition of the key
// state machine (as a corrupt or hostile value on disk would), and what the
// state machine writes must encode and decode back to itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "storage/key_state_machine.h"
#include "storage/record_codec.h"

namespace idem::storage {
namespace {

void CheckRoundTrip(const std::optional<Record>& written) {
  if (!written.has_value()) return;
  const std::string encoded = EncodeRecord(*written);
  absl::StatusOr<Record> decoded = DecodeRecord(encoded);
  if (!decoded.ok() ||
      decoded->SerializeAsString() != written->SerializeAsString() ||
      PeekExpiryMicros(encoded) != written->expires_at_us()) {
    std::abort();
  }
}

void RunTransitions(const Record& record, uint64_t token, absl::Time now) {
  const KeyId id{"fuzz", "key"};
  uint64_t next = token + 1;
  auto next_token = [&next] { return next++; };
  BeginCommand begin{id, "fp", "owner", absl::Seconds(30), absl::Hours(1)};
  CheckRoundTrip(DecideBegin(&record, begin, now, next_token).write);
  begin.fingerprint = record.fingerprint();
  begin.owner = record.owner();
  CheckRoundTrip(DecideBegin(&record, begin, now, next_token).write);
  CompleteCommand complete;
  complete.id = id;
  complete.token = record.token();
  complete.result.body = "body";
  CheckRoundTrip(DecideComplete(&record, complete, now).write);
  complete.token = token;
  CheckRoundTrip(DecideComplete(&record, complete, now).write);
  CheckRoundTrip(
      DecideRelease(&record, ReleaseCommand{id, record.token()}, now).write);
  CheckRoundTrip(
      DecideExtend(&record,
                   ExtendCommand{id, record.token(), absl::Seconds(10)}, now)
          .write);
  CheckRoundTrip(DecideCheckpoint(
                     &record, CheckpointCommand{id, record.token(), "cp"}, now)
                     .write);
  CheckRoundTrip(DecideForceRelease(&record, now, next_token).write);
  Snapshot(&record, now);
}

}  // namespace
}  // namespace idem::storage

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace idem::storage;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  PeekExpiryMicros(bytes);
  if (std::optional<KeyId> key = DecodeKey(bytes); key.has_value()) {
    if (EncodeKey(*key) != bytes) std::abort();
  }
  absl::StatusOr<Record> record = DecodeRecord(bytes);
  if (!record.ok()) return 0;
  // The clock and a token come from the input too, so extreme times meet
  // extreme records.
  const int64_t now_us =
      size >= 9 ? static_cast<int64_t>(DecodeFixed64(bytes.substr(1))) : 0;
  RunTransitions(*record, record->token(), absl::FromUnixMicros(now_us));
  RunTransitions(*record, record->token(), absl::Now());
  return 0;
}
