#include "client/ckptctl/command.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <vector>

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

// Parses `args` with an app of two commands, as main.cc does; returns MissingCommandText.
std::optional<std::string> Missing(std::vector<std::string> args) {
  CLI::App app("test", "ckptctl");
  app.require_subcommand(1);
  app.fallthrough();
  std::string socket;
  app.add_option("--socket", socket);
  app.add_subcommand("status", "");
  app.add_subcommand("drop", "");
  std::reverse(args.begin(), args.end());  // CLI11 takes them last first
  try {
    app.parse(args);
  } catch (const CLI::ParseError&) {
  }
  return MissingCommandText(app);
}

TEST_CASE("an unknown or missing command is named, with the commands there are") {
  CHECK(Missing({"bogus"}) == "unknown command 'bogus'; commands: status, drop");
  CHECK(Missing({"--socket", "/s", "bogus", "x"}) ==
        "unknown command 'bogus'; commands: status, drop");
  CHECK(Missing({}) == "a command is needed; commands: status, drop");
  CHECK(Missing({"--socket", "/s"}) == "a command is needed; commands: status, drop");
  CHECK(Missing({"--bogus"}) ==
        "a command is needed (unknown option --bogus); commands: status, drop");
  // A command was recognized: its own error applies.
  CHECK(Missing({"status", "--bogus"}) == std::nullopt);
  CHECK(Missing({"status", "--socket", "/s"}) == std::nullopt);
}

}  // namespace
}  // namespace ckpt::ctl
