#include "daemon/systemd_notify.h"

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

}  // namespace ckpt::daemon
