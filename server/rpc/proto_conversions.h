// Conversions from storage results to API messages, shared by the services.
#ifndef IDEM_SERVER_RPC_PROTO_CONVERSIONS_H_
#define IDEM_SERVER_RPC_PROTO_CONVERSIONS_H_

#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"
#include "idem/v1/idempotency.pb.h"
#include "storage/store.h"

namespace idem::server {

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* out);
void SetResult(const storage::Result& result, absl::Time completed_at,
               v1::Result* out);
void FillBegin(const storage::BeginResult& begun, v1::BeginResponse* out);
void FillLookup(const storage::KeySnapshot& seen, v1::LookupResponse* out);

}  // namespace idem::server

#endif  // IDEM_SERVER_RPC_PROTO_CONVERSIONS_H_
