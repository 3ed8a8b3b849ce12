#include "daemon/server/process.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

namespace ckpt::daemon {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

TEST_CASE("ForceExitAfter removes the files and exits 1 while the rest of the process is stuck") {
  char dir[] = "/tmp/ckpt-forced-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string a = std::string(dir) + "/d.sock", b = std::string(dir) + "/d.sock.lock";
  std::ofstream(a) << "x";
  std::ofstream(b) << "y";
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ForceExitAfter(absl::Milliseconds(200), {a, b});
    ::pause();  // stuck, as a handler in a system call would be
    std::_Exit(3);
  }
  int status = 0;
  pid_t done = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while ((done = ::waitpid(child, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (done == 0) ::kill(child, SIGKILL), ::waitpid(child, &status, 0);
  REQUIRE(done == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_FALSE(Exists(a));
  CHECK_FALSE(Exists(b));
  ::rmdir(dir);
}

TEST_CASE("RaiseOpenFileLimit lifts the soft limit to the hard one") {
  rlimit before{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &before) == 0);
  rlimit lowered = before;
  lowered.rlim_cur = std::min<rlim_t>(before.rlim_max, 256);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &lowered) == 0);
  const uint64_t now = RaiseOpenFileLimit();
  rlimit after{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &after) == 0);
  CHECK(after.rlim_cur == before.rlim_max);
  CHECK(now == (after.rlim_cur == RLIM_INFINITY ? UINT64_MAX : after.rlim_cur));
}

}  // namespace
}  // namespace ckpt::daemon
