// The store the services use, available once it is open. The gRPC server
// starts first (health NOT_SERVING) so that probes get an answer while
// RocksDB replays its log; until the store is set, RPCs that need it fail
// with UNAVAILABLE, which clients retry.
#ifndef IDEM_SERVER_STORE_GATE_H_
#define IDEM_SERVER_STORE_GATE_H_

#include <atomic>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/store.h"

namespace idem::server {

class StoreGate {
 public:
  // `store` is not owned and must outlive every RPC.
  void Open(storage::Store* store) {
    store_.store(store, std::memory_order_release);
  }
  absl::StatusOr<storage::Store*> Get() const {
    storage::Store* store = store_.load(std::memory_order_acquire);
    if (store == nullptr) {
      return absl::UnavailableError("the store is still opening; retry");
    }
    return store;
  }

 private:
  std::atomic<storage::Store*> store_{nullptr};
};

}  // namespace idem::server

#endif  // IDEM_SERVER_STORE_GATE_H_
