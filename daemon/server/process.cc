#include "daemon/server/process.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "common/units.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

uint64_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<uint64_t>(limit.rlim_cur);
}

void ForceExitAfter(absl::Duration delay, std::vector<std::string> files) {
  std::thread([delay, files = std::move(files)] {
    absl::SleepFor(delay);
    spdlog::error(
        "shutdown did not finish within {}: a request handler is stuck; removing the "
        "socket files and exiting",
        HumanDuration(delay));
    for (const std::string& f : files) ::unlink(f.c_str());
    spdlog::default_logger()->flush();
    std::_Exit(1);
  }).detach();
}

}  // namespace ckpt::daemon
