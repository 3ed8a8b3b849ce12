#include "daemon/server/grpc_log.h"

#include <grpc/grpc.h>
#include <grpc/support/log.h>

#include <catch2/catch.hpp>

namespace ckpt::daemon {
namespace {

const char kBindError[] =
    "UNKNOWN:No address added out of total 1 resolved for '192.0.2.1:1' {file:\"x.cc\", "
    "file_line:960, children:[UNKNOWN:Unable to configure socket {fd:9, children:[UNKNOWN:Cannot "
    "assign requested address {syscall:\"bind\", os_error:\"Cannot assign requested address\", "
    "errno:99}]}]}";

TEST_CASE("gRPC errors are reduced to their gist and the OS reason") {
  CHECK(SummarizeGrpcError(kBindError) ==
        "No address added out of total 1 resolved for '192.0.2.1:1' (Cannot assign requested "
        "address)");
  CHECK(SummarizeGrpcError("plain message") == "plain message");
}

TEST_CASE("a capture holds gRPC's error lines, and only while it lives") {
  // As in the daemon, where the server builder has initialized gRPC (and its log verbosity) first.
  grpc_init();
  {
    GrpcLogCapture capture;
    CHECK(capture.ErrorSummary().empty());
    gpr_log(GPR_ERROR, "%s", kBindError);
    gpr_log(GPR_INFO, "%s", "not an error");
    CHECK(capture.ErrorSummary() ==
          "No address added out of total 1 resolved for '192.0.2.1:1' (Cannot assign requested "
          "address)");
  }
  GrpcLogCapture next;
  CHECK(next.ErrorSummary().empty());
  grpc_shutdown();
}

}  // namespace
}  // namespace ckpt::daemon
