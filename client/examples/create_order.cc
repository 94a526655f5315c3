// A "create order" call made idempotent with Idem.
//
//   create_order_example [SERVER] [IDEMPOTENCY_KEY] [ORDER_JSON]
//
// Run it twice with the same key: the first run creates the order (in two
// recorded steps: reserve stock, then charge), the second replays the stored
// response without creating anything. With no key a new one is made. Each
// run ends with one line saying what happened:
//
//   created order-42: 201 {"order":"reservation-…","charge":"charge-…"}
//   replayed order-42 (nothing ran again): 201 {"order":…}
//   refused order-42: it was already used with a different order
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "idem/client.h"
#include "idem/keys.h"

namespace {

// Stand-ins for the real side effects of an order service.
std::string ReserveStock(const std::string& order) {
  std::printf("reserving stock for %s\n", order.c_str());
  return "reservation-" + idem::client::NewKey().substr(0, 8);
}

std::string ChargeCard(const std::string& reservation) {
  std::printf("charging the card for %s\n", reservation.c_str());
  return "charge-" + idem::client::NewKey().substr(0, 8);
}

}  // namespace

int main(int argc, char** argv) {
  idem::client::ClientOptions options;
  if (argc > 1) options.target = argv[1];
  const std::string key = argc > 2 ? argv[2] : idem::client::NewKey();
  const std::string order =
      argc > 3 ? argv[3] : R"({"item":"book","quantity":1})";

  auto client = idem::client::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  // The request's canonical form is what is fingerprinted: a retry with the
  // same key and a different order is refused (MISMATCH).
  absl::StatusOr<idem::client::RunResult> created = (*client)->Run(
      "orders/POST /v1/orders", key, order,
      [&](idem::client::RunContext& run)
          -> absl::StatusOr<idem::client::Result> {
        // Each step runs once per key, even if this worker dies and another
        // takes over: the checkpoint records finished steps.
        absl::StatusOr<std::string> reservation =
            run.Step("reserve", [&] { return ReserveStock(order); });
        if (!reservation.ok()) return reservation.status();
        absl::StatusOr<std::string> charge =
            run.Step("charge", [&] { return ChargeCard(*reservation); });
        if (!charge.ok()) return charge.status();
        return idem::client::Result{
            201,
            absl::StrCat(R"({"order":")", *reservation, R"(","charge":")",
                         *charge, R"("})"),
            {{"content-type", "application/json"}}};
      });

  if (!created.ok()) {
    if (idem::client::ErrorKindOf(created.status()) ==
        idem::client::ErrorKind::kMismatch) {
      std::printf("refused %s: it was already used with a different order\n",
                  key.c_str());
      return 3;
    }
    std::fprintf(stderr, "failed %s: %s\n", key.c_str(),
                 created.status().ToString().c_str());
    return 1;
  }
  std::printf("%s %s%s: %d %s\n", created->replayed ? "replayed" : "created",
              key.c_str(), created->replayed ? " (nothing ran again)" : "",
              created->result.code, created->result.body.c_str());
  return 0;
}
