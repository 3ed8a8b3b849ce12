// The systemd watchdog (WatchdogSec): the real daemon sends WATCHDOG=1 only while it proves itself
// alive, including that Admin.Status answers on its Unix socket; with the socket gone (the path
// unlinked, so the daemon can no longer be reached by it) the pings stop.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "tests/testing/state_dict.h"
#include "tests/testing/subprocess.h"

namespace ckpt {
namespace {

using namespace std::chrono_literals;

TEST_CASE("WATCHDOG=1 comes only while the daemon proves itself alive") {
  testing::SpawnOptions options;
  // 600 ms: a check every 200 ms.
  options.env.push_back({"WATCHDOG_USEC", "600000"});
  testing::DaemonProcess d(
      {"--backend", "host", "--host-memory-budget", "16MiB", "--log-level", "info"}, options);
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(d.ready());
  REQUIRE(d.notify.WaitFor("WATCHDOG=1", 10s).has_value());
  REQUIRE(d.notify.WaitFor("WATCHDOG=1", 10s).has_value());
  // Unreachable by its socket path: the self-check's Admin.Status fails, so no more pings.
  REQUIRE(::unlink(d.socket.c_str()) == 0);
  // Drain what was sent before the unlink took effect (at most one check in flight).
  while (d.notify.Receive(1s).has_value()) {
  }
  CHECK_FALSE(d.notify.WaitFor("WATCHDOG=1", 3s).has_value());
  CHECK(testing::WaitUntil(
      [&] {
        return d.proc->Stderr().find("watchdog: not telling systemd the daemon is alive") !=
               std::string::npos;
      },
      10s));
}

}  // namespace
}  // namespace ckpt
