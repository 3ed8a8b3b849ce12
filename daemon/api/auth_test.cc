#include "daemon/api/auth.h"

#include <sys/stat.h>
#include <unistd.h>

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

  o.auth_tokens_file = WriteFile(
      "good.tokens", "# trainers\n0123456789abcdef trainer\n\nfedcba9876543210 operator\n", 0600);
  auto good = Authorizer::Create(o);
  REQUIRE(good.ok());
  // Reload: one added, one removed; a broken file keeps the old tokens.
  WriteFile("good.tokens", "0123456789abcdef trainer\naaaaaaaaaaaaaaaaaaaa read\n", 0600);
  auto summary = (*good)->Reload({});
  REQUIRE(summary.ok());
  CHECK(*summary ==
        "2 token(s) (1 added, 1 removed); 0 uid(s) with roles (0 added, 0 removed, 0 changed)");
  WriteFile("good.tokens", "broken\n", 0600);
  CHECK_FALSE((*good)->Reload({{1000, kRoleTrainer}}).ok());
  // The failed reload changed nothing, the uid map included.
  CHECK((*good)->LocalRoles(1000) == 0);
}

TEST_CASE("uid_roles: numbers and user names; the daemon's uid and root have every role") {
  auto parsed = ParseUidRoles("1000=trainer; root=read ;65534=worker operator;1000=peer");
  REQUIRE(parsed.ok());
  CHECK(parsed->size() == 3);
  CHECK(parsed->at(1000) == (kRoleRead | kRoleTrainer | kRolePeer));
  CHECK(parsed->at(0) == kRoleRead);
  CHECK(parsed->at(65534) == (kRoleRead | kRoleWorker | kRoleOperator));
  CHECK(Contains(ParseUidRoles("no-such-user-xyz=trainer").status().message(),
                 "no user 'no-such-user-xyz'"));
  CHECK(Contains(ParseUidRoles("1000").status().message(), "is not UID=ROLES"));
  CHECK(Contains(ParseUidRoles("1000=wizard").status().message(), "unknown role 'wizard'"));
  CHECK(Contains(ParseUidRoles("4294967295=read").status().message(), "uid -1"));
  CHECK(ParseUidRoles("").ok());

  AuthOptions o;
  o.uid_roles = {{1000, kRoleRead | kRoleTrainer}, {0, kRoleRead}};
  auto a = Authorizer::Create(o);
  REQUIRE(a.ok());
  // Root and the daemon's own uid cannot be narrowed by the map.
  CHECK((*a)->LocalRoles(0) == kAllRoles);
  CHECK((*a)->LocalRoles(::getuid()) == kAllRoles);
  CHECK((*a)->LocalRoles(1000) == (kRoleRead | kRoleTrainer));
  CHECK((*a)->LocalRoles(1001) == 0);
  CHECK((*a)->OtherUidsHaveRoles() == (::getuid() != 1000));
  CHECK(Contains((*a)->LocalAuthText(), "uid 1000: read trainer"));
  auto summary = (*a)->Reload({{1001, kRoleWorker}});
  REQUIRE(summary.ok());
  CHECK(*summary == "1 uid(s) with roles (1 added, 2 removed, 0 changed)");
  CHECK((*a)->LocalRoles(1000) == 0);
  CHECK((*a)->LocalRoles(1001) == kRoleWorker);
}

}  // namespace
}  // namespace ckpt::daemon
