// ckpt-engined: parse flags and config, start the daemon, serve until SIGINT/SIGTERM.
//
// Exit codes: 0 after a clean shutdown (or --help/--version), 2 when start-up fails (bad flag or
// config, socket in use, ...: one line on stderr names the problem), 1 for failures after start-up.
#include <signal.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/units.h"
#include "common/version.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/flags.h"
#include "daemon/grpc_log.h"
#include "daemon/systemd_notify.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace {

int StartupFailure(const absl::Status& status) {
  std::fprintf(stderr, "ckpt-engined: %s\n", std::string(status.message()).c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ckpt::daemon;

  auto cmdline = ParseCommandLine(argc, argv);
  if (!cmdline.ok()) return StartupFailure(cmdline.status());
  if (cmdline->exit_now) {
    std::fputs(cmdline->output.c_str(), stdout);
    return 0;
  }
  Config config = ResolveConfig(cmdline->config);

  auto logger = spdlog::stderr_logger_mt("ckpt-engined");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  RouteGrpcLogsToSpdlog();

  // Signals are taken synchronously by this thread (sigtimedwait below), so block them before any
  // other thread exists: gRPC's threads inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto daemon = Daemon::Start(config);
  if (!daemon.ok()) return StartupFailure(daemon.status());

  spdlog::info("ckpt-engined {} started: {}", ckpt::kVersion, DescribeConfig(config));
  const auto& gpus = (*daemon)->gpus();
  if (gpus.gpus.empty()) {
    spdlog::info("backend {}; no GPU visible ({})", std::string(BackendName((*daemon)->backend())),
                 gpus.no_gpu_reason);
  } else {
    spdlog::info("backend {}; {} GPU(s): {}", std::string(BackendName((*daemon)->backend())),
                 gpus.gpus.size(),
                 absl::StrJoin(gpus.gpus, ", ", [](std::string* out, const auto& g) {
                   absl::StrAppend(out, g.index, " ", g.name, " ", g.uuid);
                 }));
  }
  spdlog::info("version store: {}", (*daemon)->arena_note());
  spdlog::info("updates: {}", (*daemon)->slots_note());
  std::string serving = absl::StrJoin((*daemon)->listen_addresses(), " and ");
  spdlog::info("serving on {}", serving);
  NotifyReady("serving on " + serving);

  int sig = 0;
  while (sig <= 0) sig = sigwaitinfo(&signals, nullptr);
  spdlog::info("received {}; shutting down (in-flight requests get {})", strsignal(sig),
               ckpt::HumanDuration(config.shutdown_grace));
  NotifyStopping("shutting down");
  (*daemon)->Shutdown(config.shutdown_grace);
  daemon->reset();
  spdlog::info("stopped");
  return 0;
}
