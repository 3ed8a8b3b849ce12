#include "client/ckptctl/update_command.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/ckptctl/update_format.h"
#include "common/units.h"

namespace ckpt::ctl {
namespace {

constexpr absl::Duration kPollEvery = absl::Milliseconds(200);

// Columns of the terminal on stderr (0: unknown). A line wider than that would wrap, and "\r"
// would then not redraw it in place.
size_t TerminalColumns() {
  struct winsize w {};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &w) == 0) return w.ws_col;
  return 0;
}

// Runs `call` on a thread of its own and returns its result. With `show`, meanwhile polls
// Admin.Status on a channel of its own every kPollEvery (each poll's deadline: the global timeout,
// at most 1 s) and redraws line(last answer or nullptr, tick, elapsed) on stderr; stops and erases
// the line as soon as `call` returns.
template <typename T>
absl::StatusOr<T> WithProgress(
    const GlobalOptions& global, bool show, const std::function<absl::StatusOr<T>()>& call,
    const std::function<std::string(const v1::StatusResponse*, int, absl::Duration)>& line) {
  if (!show) return call();
  absl::StatusOr<T> result = absl::UnknownError("not run");
  absl::Notification done;
  std::thread worker([&] {
    result = call();
    done.Notify();
  });
  auto poller = ConnectAdmin(global);
  if (poller.ok()) {
    const absl::Time start = absl::Now();
    const absl::Duration poll_timeout = std::min(global.timeout, absl::Seconds(1));
    std::optional<v1::StatusResponse> last;
    for (int tick = 0; !done.HasBeenNotified(); ++tick) {
      auto status = (*poller)->Status(poll_timeout);
      if (status.ok()) last = *std::move(status);
      if (done.HasBeenNotified()) break;
      std::string text = line(last.has_value() ? &*last : nullptr, tick, absl::Now() - start);
      const size_t columns = TerminalColumns();
      if (columns > 1 && text.size() >= columns) text.resize(columns - 1);
      std::fprintf(stderr, "\r\033[K%s", text.c_str());
      std::fflush(stderr);
      done.WaitForNotificationWithTimeout(kPollEvery);
    }
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
  worker.join();
  return result;
}

}  // namespace

std::optional<v1::UpdateProgress> UpdateTracker::Track(const v1::StatusResponse& status) {
  if (!status.has_last_update()) return std::nullopt;
  const v1::UpdateOutcome& o = status.last_update();
  const std::pair<uint64_t, int64_t> key(o.version(), o.started_unix_ms());
  if (o.state() == "running" && (version_ == 0 || o.version() == version_)) {
    followed_ = key;  // --previous may run one update after another: follow the newest
    return o.progress();
  }
  if (followed_ == key) return o.progress();  // ended; the Update call is about to return
  return std::nullopt;
}

std::string WaitLoadedLine(const v1::StatusResponse* status, uint64_t version, int tick,
                           absl::Duration elapsed) {
  if (status == nullptr) return SpinnerText("waiting for the workers", tick, elapsed);
  if (version == 0) version = status->latest_committed_version();
  const v1::UpdateOutcome& o = status->last_update();
  if (status->has_last_update() && o.state() == "running" && o.version() == version) {
    return absl::StrCat("version ", version, ": ", UpdateProgressLine(o.progress()));
  }
  int holding = 0;
  for (const v1::WorkerStatus& w : status->workers()) {
    if (w.loaded_version() >= version && w.mixed_version() == 0) ++holding;
  }
  return SpinnerText(absl::StrCat("waiting until every worker holds version ", version, " (",
                                  holding, " of ", status->workers_size(), " do)"),
                     tick, elapsed);
}

CLI::App* AddUpdateCommand(CLI::App* app, UpdateArgs* args) {
  CLI::App* cmd = app->add_subcommand(
      "update", "send a committed version to the attached workers and wait until they load it");
  cmd->add_option("VERSION", args->version, "version number or 'latest' (not with --previous)");
  cmd->add_flag("--force", args->force, "also resend to workers that hold the version already");
  cmd->add_flag("--wait", args->wait,
                "start nothing: wait until every attached worker holds VERSION (e.g. sent by "
                "auto_update) or its update failed; exit 1 if it failed");
  cmd->add_flag("--previous", args->previous,
                "recovery after a failed update: resend to each worker with mixed weights the "
                "last version it fully loaded");
  cmd->add_flag("--consistent", args->consistent,
                "a consistent switch: every worker pauses generation before any bucket is sent, "
                "all load, then all resume (every worker needs a pause hook)");
  cmd->add_option("--convert", args->convert,
                  "FP8 on the way: fp8 (the tensors fp8_weights names as float8_e4m3fn with "
                  "128 x 128 block scales), none, or default (the daemon's fp8_by_default)")
      ->check(CLI::IsMember({"default", "fp8", "none"}));
  cmd->add_option("--fp8-weights", args->fp8_weights,
                  "name pattern of tensors to convert in this update (repeatable; implies "
                  "--convert fp8; instead of the daemon's fp8_weights)");
  cmd->add_option("--fp8-exclude", args->fp8_exclude,
                  "name pattern --fp8-weights leaves as it is (repeatable)");
  cmd->add_flag("--json", args->json, "print the result as JSON");
  cmd->add_option("--wait-timeout", args->wait_timeout,
                  "how long to wait for the workers (default 10m)");
  return cmd;
}

int RunUpdateCommand(const GlobalOptions& global, const UpdateArgs& args) {
  if (args.previous && (!args.version.empty() || args.force || args.wait)) {
    return UsageError(
        absl::InvalidArgumentError("--previous takes no VERSION, --force or --wait: it resends "
                                   "each worker's own last version"));
  }
  if (!args.previous && args.version.empty()) {
    return UsageError(absl::InvalidArgumentError("update needs a VERSION (a number or 'latest')"));
  }
  if (args.wait && (args.force || args.consistent)) {
    return UsageError(
        absl::InvalidArgumentError("--wait starts nothing: it takes no --force or --consistent"));
  }
  if (args.previous && args.consistent) {
    return UsageError(absl::InvalidArgumentError("--previous takes no --consistent"));
  }
  uint64_t version = 0;
  if (!args.previous && args.version != "latest") {
    auto parsed = ParseVersionId(args.version);
    if (!parsed.ok()) return UsageError(parsed.status());
    version = *parsed;
  }
  auto wait = ParseDuration(args.wait_timeout);
  if (!wait.ok()) return UsageError(wait.status());
  auto client = ConnectAdmin(global);
  if (!client.ok()) return Fail(client.status());
  const bool show = !args.json && ::isatty(STDERR_FILENO) == 1;
  if (args.wait) {
    auto result = WithProgress<v1::WaitLoadedResponse>(
        global, show, [&] { return (*client)->WaitLoaded(version, *wait); },
        [&](const v1::StatusResponse* status, int tick, absl::Duration elapsed) {
          return WaitLoadedLine(status, version, tick, elapsed);
        });
    if (!result.ok()) return Fail(result.status());
    if (args.json) {
      std::cout << WaitLoadedJson(*result).dump(2) << "\n";
    } else {
      std::cout << result->summary() << "\n";
    }
    return result->loaded() ? 0 : 1;
  }
  v1::UpdateRequest request;
  request.set_version(version);
  request.set_force(args.force);
  request.set_previous(args.previous);
  request.set_consistent(args.consistent);
  request.set_convert(args.convert == "fp8"    ? v1::CONVERSION_FP8
                      : args.convert == "none" ? v1::CONVERSION_NONE
                                               : v1::CONVERSION_DEFAULT);
  for (const std::string& p : args.fp8_weights) request.add_fp8_weights(p);
  for (const std::string& p : args.fp8_exclude) request.add_fp8_exclude(p);
  UpdateTracker tracker(args.previous ? 0 : version);
  auto result = WithProgress<v1::UpdateResponse>(
      global, show, [&] { return (*client)->Update(request, *wait); },
      [&](const v1::StatusResponse* status, int tick, absl::Duration elapsed) {
        std::optional<v1::UpdateProgress> progress;
        if (status != nullptr) progress = tracker.Track(*status);
        if (!progress.has_value()) {
          return SpinnerText("waiting for the update to start", tick, elapsed);
        }
        // No buckets: an empty version, or a daemon that reports no progress.
        if (progress->buckets_total() == 0) return SpinnerText("updating", tick, elapsed);
        return UpdateProgressLine(*progress);
      });
  if (!result.ok()) return Fail(result.status());
  if (args.json) {
    std::cout << UpdateJson(*result).dump(2) << "\n";
  } else {
    std::cout << UpdateText(*result);
  }
  return 0;
}

}  // namespace ckpt::ctl
