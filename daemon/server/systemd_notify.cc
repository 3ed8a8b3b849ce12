#include "daemon/server/systemd_notify.h"

#include <systemd/sd-daemon.h>

#include <cstring>

#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

void Notify(const std::string& message) {
  int r = sd_notify(/*unset_environment=*/0, message.c_str());
  if (r < 0) {
    spdlog::warn("sd_notify failed: {}", std::strerror(-r));
  } else if (r > 0) {
    spdlog::debug("told systemd: {}", message);
  }
}

}  // namespace

void NotifyReady(const std::string& status) { Notify("READY=1\nSTATUS=" + status); }

void NotifyStopping(const std::string& status) { Notify("STOPPING=1\nSTATUS=" + status); }

void NotifyReloading(const std::string& status) { Notify("RELOADING=1\nSTATUS=" + status); }

void NotifyStatus(const std::string& status) { Notify("STATUS=" + status); }

absl::Duration WatchdogInterval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(/*unset_environment=*/0, &usec) <= 0) return absl::ZeroDuration();
  return absl::Microseconds(static_cast<int64_t>(usec));
}

void NotifyWatchdog() { Notify("WATCHDOG=1"); }

}  // namespace ckpt::daemon
