// Readiness and stopping notifications to systemd (Type=notify units) through libsystemd's
// sd_notify. Without systemd (NOTIFY_SOCKET unset) every call does nothing. Thread-safe.
#ifndef CKPT_DAEMON_SERVER_SYSTEMD_NOTIFY_H_
#define CKPT_DAEMON_SERVER_SYSTEMD_NOTIFY_H_

#include <string>

#include "absl/time/time.h"

namespace ckpt::daemon {

// "READY=1" plus a STATUS= line.
void NotifyReady(const std::string& status);
// "STOPPING=1" plus a STATUS= line.
void NotifyStopping(const std::string& status);
// "RELOADING=1" plus a STATUS= line (SIGHUP); NotifyReady again when done.
void NotifyReloading(const std::string& status);
// A STATUS= line only (progress, e.g. the store's warm-up; before or after READY=1).
void NotifyStatus(const std::string& status);

// The unit's WatchdogSec= (WATCHDOG_USEC for this process), or zero when systemd expects no pings.
absl::Duration WatchdogInterval();
// "WATCHDOG=1": the daemon proved itself alive (see Daemon's watchdog thread).
void NotifyWatchdog();

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_SYSTEMD_NOTIFY_H_
