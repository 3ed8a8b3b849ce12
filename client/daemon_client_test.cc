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
  // The daemon's own UNAVAILABLE (its store still warming up) is not a connection problem.
  s = FromGrpc(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "the store is still getting memory ready: 1.0 GiB of 8.0 GiB ready "
                            "(2.0s so far); this version needs 4.0 GiB, 1.0 GiB of the ready "
                            "memory is free; retry"),
               "BeginVersion", e);
  CHECK(s.code() == absl::StatusCode::kUnavailable);
  CHECK(std::string(s.message())
            .rfind("BeginVersion failed: the store is still getting memory "
                   "ready: 1.0 GiB of 8.0 GiB ready",
                   0) == 0);
  CHECK(std::string(s.message()).find("cannot reach") == std::string::npos);
  s = FromGrpc(grpc::Status(grpc::StatusCode::NOT_FOUND, "no version 7"), "Update", e);
  CHECK(s.code() == absl::StatusCode::kNotFound);
  CHECK(std::string(s.message()) == "Update failed: no version 7");
}

TEST_CASE("a daemon message that names the call already is not prefixed again") {
  Endpoint e = *ResolveEndpoint("/tmp/x.sock", "");
  absl::Status s = FromGrpc(
      grpc::Status(grpc::StatusCode::ABORTED, "update to version 1: 1 of 1 workers failed (x)"),
      "Update", e);
  CHECK(s.code() == absl::StatusCode::kAborted);
  CHECK(std::string(s.message()) == "update to version 1: 1 of 1 workers failed (x)");
  s = FromGrpc(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "update to version 3: timed out"),
               "Update", e);
  CHECK(std::string(s.message()) == "update to version 3: timed out");
  // The daemon's authorization errors begin with the method's name.
  s = FromGrpc(grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                            "Status needs the read role; uid 7 has none"),
               "Status", e);
  CHECK(std::string(s.message()) == "Status needs the read role; uid 7 has none");
  s = FromGrpc(grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                            "LoadFilesWithProgress needs the trainer role; uid 7 has read"),
               "LoadFiles", e);
  CHECK(std::string(s.message()) == "LoadFilesWithProgress needs the trainer role; uid 7 has read");
  // Only the call's name as a word: "updates ..." is not "update ...".
  s = FromGrpc(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "updates are off"), "Update", e);
  CHECK(std::string(s.message()) == "Update failed: updates are off");
  s = FromGrpc(grpc::Status(grpc::StatusCode::NOT_FOUND, "no version 7"), "Drop", e);
  CHECK(std::string(s.message()) == "Drop failed: no version 7");
}

}  // namespace
}  // namespace ckpt::client
