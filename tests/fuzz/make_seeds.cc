// Writes the seed corpora of the fuzzers (committed under corpus/): valid
// requests for every method and valid stored records in every state, so that
// fuzzing starts from inputs that reach deep into the handlers.
//
//   idem-fuzz-seeds tests/fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "idem/v1/admin.pb.h"
#include "idem/v1/idempotency.pb.h"
#include "storage/record.pb.h"
#include "storage/record_codec.h"

namespace {

void Write(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A request seed: the method index byte the request fuzzer reads, then the
// message.
void WriteRequest(const std::filesystem::path& dir, const char* name,
                  char method, const google::protobuf::Message& request) {
  Write(dir / name, std::string(1, method) + request.SerializeAsString());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path requests =
      std::filesystem::path(argv[1]) / "request";
  const std::filesystem::path records =
      std::filesystem::path(argv[1]) / "record";
  std::filesystem::create_directories(requests);
  std::filesystem::create_directories(records);

  idem::v1::BeginRequest begin;
  begin.set_namespace_("orders");
  begin.set_key("order-1");
  begin.set_fingerprint(std::string(32, '\x5a'));
  begin.set_owner("worker-1");
  begin.mutable_lease()->set_seconds(30);
  begin.mutable_retention()->set_seconds(3600);
  WriteRequest(requests, "begin", 0, begin);
  begin.mutable_wait()->set_nanos(5'000'000);
  WriteRequest(requests, "begin_wait", 0, begin);

  idem::v1::CompleteRequest complete;
  complete.set_namespace_("orders");
  complete.set_key("order-1");
  complete.set_token(1);
  complete.mutable_result()->set_code(201);
  complete.mutable_result()->set_body("{\"id\":1}");
  (*complete.mutable_result()->mutable_metadata())["content-type"] =
      "application/json";
  WriteRequest(requests, "complete", 1, complete);

  idem::v1::ReleaseRequest release;
  release.set_namespace_("orders");
  release.set_key("order-1");
  release.set_token(1);
  WriteRequest(requests, "release", 2, release);

  idem::v1::ExtendRequest extend;
  extend.set_namespace_("orders");
  extend.set_key("order-1");
  extend.set_token(1);
  extend.mutable_lease()->set_seconds(60);
  WriteRequest(requests, "extend", 3, extend);

  idem::v1::LookupRequest lookup;
  lookup.set_namespace_("orders");
  lookup.set_key("order-1");
  WriteRequest(requests, "lookup", 4, lookup);

  idem::v1::CheckpointRequest checkpoint;
  checkpoint.set_namespace_("orders");
  checkpoint.set_key("order-1");
  checkpoint.set_token(1);
  checkpoint.set_checkpoint("step 1");
  WriteRequest(requests, "checkpoint", 5, checkpoint);

  idem::v1::BeginBatchRequest begin_batch;
  *begin_batch.add_requests() = begin;
  begin.set_key("order-2");
  *begin_batch.add_requests() = begin;
  WriteRequest(requests, "begin_batch", 6, begin_batch);

  idem::v1::CompleteBatchRequest complete_batch;
  *complete_batch.add_requests() = complete;
  WriteRequest(requests, "complete_batch", 7, complete_batch);

  idem::v1::DeleteRequest del;
  del.set_namespace_("orders");
  del.set_key("order-1");
  del.set_reason("fuzz");
  WriteRequest(requests, "admin_delete", 8, del);

  idem::v1::ForceReleaseRequest force;
  force.set_namespace_("orders");
  force.set_key("order-1");
  force.set_reason("fuzz");
  WriteRequest(requests, "admin_force_release", 9, force);

  idem::v1::ListRequest list;
  list.set_namespace_("orders");
  list.set_page_size(10);
  WriteRequest(requests, "admin_list", 10, list);

  idem::v1::StatsRequest stats;
  stats.set_namespace_("orders");
  WriteRequest(requests, "admin_stats", 11, stats);

  idem::storage::Record record;
  record.set_state(idem::storage::Record::STATE_IN_PROGRESS);
  record.set_fingerprint("fp");
  record.set_owner("owner");
  record.set_token(7);
  record.set_lease_expires_at_us(1'800'000'000'000'000);
  record.set_retention_us(3'600'000'000);
  record.set_expires_at_us(1'800'003'600'000'000);
  Write(records / "in_progress", idem::storage::EncodeRecord(record));
  record.set_state(idem::storage::Record::STATE_COMPLETED);
  record.mutable_result()->set_code(200);
  record.mutable_result()->set_body("ok");
  Write(records / "completed", idem::storage::EncodeRecord(record));
  record.set_state(idem::storage::Record::STATE_RELEASED);
  record.set_checkpoint("step 2");
  Write(records / "released", idem::storage::EncodeRecord(record));
  Write(records / "key", idem::storage::EncodeKey({"orders", "order-1"}));
  return 0;
}
