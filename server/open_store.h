// The one place that turns --store= into a Store: "rocksdb" (the embedded
// default, in --data-dir), "redis-cluster://HOST:PORT,..." or
// "postgresql://..." (stateless replicas). A new backend adds its branch here
// and its own folder under storage/; nothing else in the server names a
// backend.
#ifndef IDEM_SERVER_OPEN_STORE_H_
#define IDEM_SERVER_OPEN_STORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/config.h"
#include "storage/store.h"

namespace idem::server {

// Opens the store `config` names, logging which (event `store`) and what
// its settings weaken. The error says why it cannot be opened (a locked
// data directory, no Redis node answering, a master refusing a check).
absl::StatusOr<std::unique_ptr<storage::Store>> OpenStore(
    const ServerConfig& config);

// Checks a PostgreSQL connection URI without connecting
// (INVALID_ARGUMENT with libpq's reason); what it sets, the password
// masked — what may be logged.
absl::StatusOr<std::string> DescribePostgresUri(const std::string& uri);

}  // namespace idem::server

#endif  // IDEM_SERVER_OPEN_STORE_H_
