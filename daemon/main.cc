// ckpt-engined: parse flags and config, start the daemon, serve until a stop signal.
//
// Signals: SIGINT, SIGTERM, SIGQUIT, SIGUSR1 and SIGUSR2 shut down cleanly (the socket, `.fds`
// and lock files are removed); SIGHUP re-reads the config file and the credentials without a
// restart (Daemon::Reload: the tokens file, uid_roles, allowed_uids);
// SIGPIPE is ignored (a client that goes away mid-write is an error on that call, not the end of
// the daemon).
//
// Exit codes: 0 after a clean shutdown (or --help/--version, or --check-config with a good
// config), 2 when start-up fails (bad flag or config, socket in use, ...: one line on stderr names
// the problem; --check-config: the same line for a bad config), 1 for failures after start-up,
// including a shutdown that had to be forced because a request handler did not end within
// shutdown_grace + kForcedExitMargin.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/units.h"
#include "common/version.h"
#include "daemon/server/config.h"
#include "daemon/server/daemon.h"
#include "daemon/server/flags.h"
#include "daemon/server/grpc_log.h"
#include "daemon/server/process.h"
#include "daemon/server/socket_path.h"
#include "daemon/server/systemd_notify.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace {

// How long past shutdown_grace the process waits for stuck request handlers before it removes its
// socket files itself and exits.
constexpr absl::Duration kForcedExitMargin = absl::Seconds(5);

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
  if (cmdline->check_config) {
    // Before the logger: nothing but the verdict is printed.
    if (absl::Status s = Daemon::CheckConfig(config); !s.ok()) return StartupFailure(s);
    std::puts("config ok");
    return 0;
  }

  auto logger = spdlog::stderr_logger_mt("ckpt-engined");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  RouteGrpcLogsToSpdlog();

  // Signals are taken synchronously by this thread (sigwaitinfo below), so block them before any
  // other thread exists: gRPC's threads inherit the mask.
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2, SIGHUP}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const uint64_t open_files = RaiseOpenFileLimit();
  if (open_files < 16384) {
    spdlog::warn(
        "open files limit is {} (RLIMIT_NOFILE); a large LoadFiles or many workers may "
        "need more (LimitNOFILE= in the unit)",
        open_files);
  }
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
  // READY=1 when it serves, not when the store's memory is ready (minutes on a 2 TB host):
  // Status answers at once and shows the warm-up; STATUS= lines follow its progress.
  NotifyReady(absl::StrCat("serving on ", serving, "; ", (*daemon)->store_note()));

  int sig = 0;
  for (;;) {
    sig = sigwaitinfo(&signals, nullptr);
    if (sig <= 0) continue;
    if (sig != SIGHUP) break;
    NotifyReloading("re-reading credentials");
    // The same command line again: the config file is re-read, flags still override it.
    auto fresh = ParseCommandLine(argc, argv);
    if (!fresh.ok()) {
      spdlog::error("SIGHUP: keeping the previous credentials: {}",
                    std::string(fresh.status().message()));
    } else {
      (*daemon)->Reload(ResolveConfig(fresh->config));
    }
    NotifyReady(absl::StrCat("serving on ", serving, "; ", (*daemon)->store_note()));
  }
  spdlog::info("received {}; shutting down (in-flight requests get {})", strsignal(sig),
               ckpt::HumanDuration(config.shutdown_grace));
  NotifyStopping("shutting down");
  std::vector<std::string> files;
  if (!config.listen_unix.empty()) files = SocketFiles(config.listen_unix);
  ForceExitAfter(config.shutdown_grace + kForcedExitMargin, std::move(files));
  (*daemon)->Shutdown(config.shutdown_grace);
  daemon->reset();
  spdlog::info("stopped");
  return 0;
}
