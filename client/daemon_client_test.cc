#include "client/daemon_client.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

namespace ckpt::client {
namespace {

TEST_CASE("endpoint: flag, then address, then CKPT_SOCKET, then the default") {
  ::setenv("CKPT_SOCKET", "/tmp/from-env.sock", 1);
  CHECK(ResolveEndpoint("/tmp/flag.sock", "")->target == "unix:/tmp/flag.sock");
  CHECK(ResolveEndpoint("", "10.0.0.1:7070")->target == "10.0.0.1:7070");
  CHECK(ResolveEndpoint("", "10.0.0.1:7070")->unix_path.empty());
  CHECK(ResolveEndpoint("", "")->unix_path == "/tmp/from-env.sock");
  ::unsetenv("CKPT_SOCKET");
  CHECK(ResolveEndpoint("", "")->target == "unix:/run/ckpt-engine/ckpt-engined.sock");
  CHECK(ResolveEndpoint("/a", "b:1").status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("connect explains a missing socket and a path that is not a socket") {
  std::string dir = std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp";
  auto missing = DaemonClient::Connect(*ResolveEndpoint(dir + "/none.sock", ""));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == absl::StatusCode::kUnavailable);
  CHECK(std::string(missing.status().message()).find("is the daemon running?") !=
        std::string::npos);

  std::ofstream(dir + "/file.sock") << "x";
  auto file = DaemonClient::Connect(*ResolveEndpoint(dir + "/file.sock", ""));
  REQUIRE_FALSE(file.ok());
  CHECK(file.status().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("gRPC errors keep their code and name the endpoint") {
  Endpoint e = *ResolveEndpoint("/tmp/x.sock", "");
  absl::Status s =
      FromGrpc(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"), "Status", e);
  CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(std::string(s.message()) == "ckpt-engined at /tmp/x.sock did not answer Status in time");
  // The daemon's own DEADLINE_EXCEEDED (a worker that did not ack) keeps its message.
  s = FromGrpc(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "worker pid 7 did not ack"),
               "Update", e);
  CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(std::string(s.message()) == "Update failed: worker pid 7 did not ack");
  s = FromGrpc(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connect: Connection refused"), "Status",
               e);
  CHECK(s.code() == absl::StatusCode::kUnavailable);
  CHECK(std::string(s.message()).find("stale") != std::string::npos);
  s = FromGrpc(grpc::Status(grpc::StatusCode::NOT_FOUND, "no version 7"), "Update", e);
  CHECK(s.code() == absl::StatusCode::kNotFound);
  CHECK(std::string(s.message()) == "Update failed: no version 7");
}

}  // namespace
}  // namespace ckpt::client
