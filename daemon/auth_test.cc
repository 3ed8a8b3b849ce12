#include "daemon/auth.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>

namespace ckpt::daemon {
namespace {

std::string WriteFile(const std::string& name, const std::string& text, mode_t mode) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir ? dir : "/tmp") + "/" + name;
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
  return path;
}

bool Contains(absl::string_view s, absl::string_view needle) {
  return s.find(needle) != absl::string_view::npos;
}

TEST_CASE("roles parse by name, always include read, and print in a fixed order") {
  CHECK(*ParseRoles("trainer") == (kRoleTrainer | kRoleRead));
  CHECK(*ParseRoles("operator, worker") == (kRoleOperator | kRoleWorker | kRoleRead));
  CHECK(*ParseRoles("all") == kAllRoles);
  CHECK(RolesText(*ParseRoles("peer+trainer")) == "read trainer peer");
  CHECK(ParseRoles("root").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParseRoles("  ").status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("san_roles parse SAN=roles entries") {
  auto m = ParseSanRoles("spiffe://c/trainer=trainer; node-7=peer read");
  REQUIRE(m.ok());
  CHECK(m->at("spiffe://c/trainer") == (kRoleTrainer | kRoleRead));
  CHECK(m->at("node-7") == (kRolePeer | kRoleRead));
  CHECK(ParseSanRoles("justaname").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParseSanRoles("x=wizard").status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("the tokens file is checked: mode, format, length, duplicates") {
  AuthOptions o;
  o.auth_tokens_file = WriteFile("open.tokens", "0123456789abcdef trainer\n", 0644);
  auto open = Authorizer::Create(o);
  CHECK(open.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(open.status().message(), "accessible by group or others"));

  o.auth_tokens_file = WriteFile("short.tokens", "# comment\nshort trainer\n", 0600);
  auto short_token = Authorizer::Create(o);
  CHECK(Contains(short_token.status().message(), "line 2"));
  CHECK(Contains(short_token.status().message(), "at least 16"));

  o.auth_tokens_file = WriteFile("noroles.tokens", "0123456789abcdef\n", 0600);
  CHECK(Contains(Authorizer::Create(o).status().message(), "no role given"));

  o.auth_tokens_file =
      WriteFile("dup.tokens", "0123456789abcdef trainer\n0123456789abcdef operator\n", 0600);
  CHECK(Contains(Authorizer::Create(o).status().message(), "listed twice"));

  o.auth_tokens_file = WriteFile("good.tokens",
                                 "# trainers\n0123456789abcdef trainer\n\nfedcba9876543210 operator\n",
                                 0600);
  auto good = Authorizer::Create(o);
  REQUIRE(good.ok());
  // Reload: one added, one removed; a broken file keeps the old tokens.
  WriteFile("good.tokens", "0123456789abcdef trainer\naaaaaaaaaaaaaaaaaaaa read\n", 0600);
  auto summary = (*good)->Reload();
  REQUIRE(summary.ok());
  CHECK(*summary == "2 token(s) (1 added, 1 removed)");
  WriteFile("good.tokens", "broken\n", 0600);
  CHECK_FALSE((*good)->Reload().ok());
}

}  // namespace
}  // namespace ckpt::daemon
