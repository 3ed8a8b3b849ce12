#include "daemon/server/socket_path.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace ckpt::daemon {
namespace {

// A fresh, short directory (socket paths must stay under 108 bytes).
std::string FreshDir() {
  std::string tmpl = "/tmp/ckpt-sock-XXXXXX";
  REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
  return tmpl;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// Binds a socket at `path` and closes it: the file stays, nobody listens (a dead daemon's
// leftover).
void MakeStaleSocket(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  ::close(fd);
}

bool Contains(absl::string_view haystack, absl::string_view needle) {
  return haystack.find(needle) != absl::string_view::npos;
}

TEST_CASE("claims a fresh path, creating its directory, and cleans up on release") {
  std::string dir = FreshDir();
  std::string path = dir + "/sub/dir/d.sock";
  {
    auto claim = SocketPathClaim::Claim(path);
    REQUIRE(claim.ok());
    CHECK(Exists(dir + "/sub/dir"));
    CHECK(Exists(path + ".lock"));
    std::ifstream lock(path + ".lock");
    int pid = 0;
    lock >> pid;
    CHECK(pid == ::getpid());
  }
  CHECK_FALSE(Exists(path + ".lock"));
}

TEST_CASE("a second claim of a held path fails naming the holder") {
  std::string path = FreshDir() + "/d.sock";
  auto first = SocketPathClaim::Claim(path);
  REQUIRE(first.ok());
  auto second = SocketPathClaim::Claim(path);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == absl::StatusCode::kAlreadyExists);
  CHECK(Contains(second.status().message(), path));
  CHECK(Contains(second.status().message(), "pid " + std::to_string(::getpid())));
  // The first claim is intact: its lock file is still there.
  CHECK(Exists(path + ".lock"));
}

TEST_CASE("a moved claim keeps the lock") {
  std::string path = FreshDir() + "/d.sock";
  SocketPathClaim outer;
  {
    auto claim = SocketPathClaim::Claim(path);
    REQUIRE(claim.ok());
    outer = std::move(*claim);
  }
  CHECK(outer.path() == path);
  CHECK_FALSE(SocketPathClaim::Claim(path).ok());
}

TEST_CASE("a stale socket is replaced") {
  std::string path = FreshDir() + "/d.sock";
  MakeStaleSocket(path);
  REQUIRE(Exists(path));
  auto claim = SocketPathClaim::Claim(path);
  REQUIRE(claim.ok());
  CHECK_FALSE(Exists(path));
}

TEST_CASE("a path that is not a socket is refused and kept") {
  std::string path = FreshDir() + "/d.sock";
  std::ofstream(path) << "precious";
  auto claim = SocketPathClaim::Claim(path);
  REQUIRE_FALSE(claim.ok());
  CHECK(claim.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(claim.status().message(), "not a socket"));
  std::ifstream in(path);
  std::string content;
  in >> content;
  CHECK(content == "precious");
}

TEST_CASE("a directory that cannot be created is refused") {
  std::string dir = FreshDir();
  std::ofstream(dir + "/file") << "x";
  auto claim = SocketPathClaim::Claim(dir + "/file/d.sock");
  REQUIRE_FALSE(claim.ok());
  CHECK(claim.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(claim.status().message(), dir + "/file"));
}

TEST_CASE("relative paths are refused") {
  CHECK(SocketPathClaim::Claim("d.sock").status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ckpt::daemon
