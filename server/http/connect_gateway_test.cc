#include "server/http/connect_gateway.h"

#include <string>

#include "gtest/gtest.h"

namespace idem::server {
namespace {

// The spec's table (connectrpc.com/docs/protocol, "Error Codes"), every
// gRPC code.
TEST(ConnectCodeTest, EveryCodeHasTheSpecsNameAndStatus) {
  struct Row {
    grpc::StatusCode code;
    const char* name;
    int status;
  };
  for (const Row& row : {
           Row{grpc::StatusCode::CANCELLED, "canceled", 499},
           Row{grpc::StatusCode::UNKNOWN, "unknown", 500},
           Row{grpc::StatusCode::INVALID_ARGUMENT, "invalid_argument", 400},
           Row{grpc::StatusCode::DEADLINE_EXCEEDED, "deadline_exceeded", 504},
           Row{grpc::StatusCode::NOT_FOUND, "not_found", 404},
           Row{grpc::StatusCode::ALREADY_EXISTS, "already_exists", 409},
           Row{grpc::StatusCode::PERMISSION_DENIED, "permission_denied", 403},
           Row{grpc::StatusCode::RESOURCE_EXHAUSTED, "resource_exhausted", 429},
           Row{grpc::StatusCode::FAILED_PRECONDITION, "failed_precondition",
               400},
           Row{grpc::StatusCode::ABORTED, "aborted", 409},
           Row{grpc::StatusCode::OUT_OF_RANGE, "out_of_range", 400},
           Row{grpc::StatusCode::UNIMPLEMENTED, "unimplemented", 501},
           Row{grpc::StatusCode::INTERNAL, "internal", 500},
           Row{grpc::StatusCode::UNAVAILABLE, "unavailable", 503},
           Row{grpc::StatusCode::DATA_LOSS, "data_loss", 500},
           Row{grpc::StatusCode::UNAUTHENTICATED, "unauthenticated", 401},
       }) {
    const ConnectCode connect = ConnectCodeOf(row.code);
    EXPECT_EQ(connect.name, row.name);
    EXPECT_EQ(connect.http_status, row.status) << row.name;
    const HttpResponse error = ConnectError(row.code, "m");
    EXPECT_EQ(error.status, row.status);
    EXPECT_EQ(error.body, std::string("{\"code\":\"") + row.name +
                              "\",\"message\":\"m\"}\n");
  }
}

TEST(ConnectCodeTest, AnErrorBodyIsValidJsonWhateverTheMessage) {
  const HttpResponse error = ConnectError(grpc::StatusCode::INVALID_ARGUMENT,
                                          "a \"quote\\\" \n\x01 end", 415);
  EXPECT_EQ(error.status, 415);
  EXPECT_EQ(error.body,
            "{\"code\":\"invalid_argument\",\"message\":\"a \\\"quote\\\\\\\" "
            "\\n\\u0001 end\"}\n");
  ASSERT_EQ(error.headers.size(), 1u);
  EXPECT_EQ(error.headers[0].second, "application/json");
}

}  // namespace
}  // namespace idem::server
