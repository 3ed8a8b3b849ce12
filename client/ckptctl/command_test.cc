#include "client/ckptctl/command.h"

#include <catch2/catch.hpp>

namespace ckpt::ctl {
namespace {

TEST_CASE("version ids are positive decimal numbers") {
  CHECK(*ParseVersionId("7") == 7);
  CHECK(*ParseVersionId("18446744073709551615") == UINT64_MAX);
  for (const char* bad : {"", "0", "-1", "+3", "seven", "7x", "18446744073709551616"}) {
    INFO(bad);
    auto v = ParseVersionId(bad);
    REQUIRE_FALSE(v.ok());
    CHECK(v.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(v.status().message()).find("expected a version number") != std::string::npos);
  }
}

TEST_CASE("global options resolve like the client library") {
  GlobalOptions g;
  g.socket_path = "/tmp/s.sock";
  CHECK(ResolveEndpoint(g)->target == "unix:/tmp/s.sock");
  g.address = "h:1";
  CHECK(ResolveEndpoint(g).status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ckpt::ctl
