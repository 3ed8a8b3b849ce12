#include "client/ckptctl/push_command.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "client/ckptctl/version_format.h"
#include "client/trainer_client.h"
#include "common/units.h"

namespace ckpt::ctl {

CLI::App* AddPushCommand(CLI::App* app, PushArgs* args) {
  CLI::App* cmd = app->add_subcommand(
      "push", "load safetensors files into a new version (the daemon reads them itself)");
  cmd->add_option("PATH", args->files,
                  "safetensors files, checkpoint directories (the shards of their "
                  "model.safetensors.index.json, else all *.safetensors) or *.index.json files; "
                  "tensor names unique across them")
      ->required();
  cmd->add_flag("--wait", args->wait,
                "wait until the version is committed and print it (always the case: the load is "
                "synchronous)");
  cmd->add_option("--version", args->version, "version id to create (default: the next one)");
  cmd->add_option("--label", args->label, "label stored with the version, e.g. step-1200");
  cmd->add_flag("--json", args->json, "print the committed version as JSON");
  cmd->add_option("--load-timeout", args->load_timeout,
                  "how long the daemon may take to load the files (default 30m)");
  return cmd;
}

std::string PushDoneText(const v1::VersionInfo& info, absl::Duration elapsed) {
  std::string out =
      absl::StrCat("version ", info.version(), " ", StateName(info.state()), ": ",
                   info.tensor_count(), info.tensor_count() == 1 ? " tensor, " : " tensors, ",
                   FormatBytes(info.total_bytes()), " in ", HumanDuration(elapsed));
  if (!info.label().empty()) absl::StrAppend(&out, ", label \"", info.label(), "\"");
  return out;
}

namespace {

constexpr char kFrames[] = {'|', '/', '-', '\\'};
constexpr int kBarWidth = 20;

std::string Spin(int tick) { return std::string(1, kFrames[tick % 4]); }

std::string Count(uint64_t n, const char* one, const char* many) {
  return absl::StrCat(n, " ", n == 1 ? one : many);
}

}  // namespace

std::string SpinnerLine(size_t paths, int tick, absl::Duration elapsed) {
  return absl::StrCat(Spin(tick), " loading ", Count(paths, "path", "paths"),
                      " into ckpt-engined  ", HumanDuration(elapsed));
}

std::string ProgressLine(const v1::LoadFilesProgress& p, int tick, double bytes_per_second,
                         absl::Duration elapsed) {
  const std::string time = HumanDuration(elapsed);
  switch (p.stage()) {
    case v1::LOAD_STAGE_HEADERS:
      return absl::StrCat(Spin(tick), " reading headers: ", p.headers_read(), "/",
                          Count(p.files_total(), "file", "files"), "  ", time);
    case v1::LOAD_STAGE_READING: {
      const uint64_t total = p.bytes_total();
      const uint64_t done = std::min(p.bytes_done(), total);
      const double fraction = total > 0 ? static_cast<double>(done) / total : 1.0;
      const int filled = static_cast<int>(fraction * kBarWidth);
      std::string line = absl::StrCat(
          "[", std::string(filled, '#'), std::string(kBarWidth - filled, '-'), "] ",
          absl::StrFormat("%3d%%", static_cast<int>(fraction * 100)), "  ", FormatBytes(done), "/",
          FormatBytes(total), "  ", p.files_done(), "/", Count(p.files_total(), "file", "files"));
      if (bytes_per_second > 0) {
        absl::StrAppend(&line, absl::StrFormat("  %.2f GB/s", bytes_per_second / 1e9));
      }
      absl::StrAppend(&line, "  ", time);
      return line;
    }
    case v1::LOAD_STAGE_COMMITTING:
      return absl::StrCat(Spin(tick), " committing: ", FormatBytes(p.bytes_total()), " in ",
                          Count(p.files_total(), "file", "files"), " (checksums)  ", time);
    case v1::LOAD_STAGE_DONE:
      return absl::StrCat("done: ", FormatBytes(p.bytes_total()), " in ",
                          Count(p.files_total(), "file", "files"), "  ", time);
    default:
      return absl::StrCat(Spin(tick), " waiting for ckpt-engined  ", time);
  }
}

int RunPushCommand(const GlobalOptions& global, const PushArgs& args) {
  auto load_timeout = ParseDuration(args.load_timeout);
  if (!load_timeout.ok()) {
    return UsageError(absl::InvalidArgumentError(
        absl::StrCat("--load-timeout: ", load_timeout.status().message())));
  }
  auto endpoint = ResolveEndpoint(global);
  if (!endpoint.ok()) return Fail(endpoint.status());
  auto client = client::TrainerClient::Connect(*endpoint);
  if (!client.ok()) return Fail(client.status());

  const absl::Time start = absl::Now();
  // The newest report, and when reading began (for the rate); the load's thread writes them, this
  // one draws.
  struct Latest {
    absl::Mutex mu;
    std::optional<v1::LoadFilesProgress> progress ABSL_GUARDED_BY(mu);
    absl::Time reading_since ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  } latest;
  auto on_progress = [&latest](const v1::LoadFilesProgress& p) {
    absl::MutexLock lock(&latest.mu);
    if (p.stage() == v1::LOAD_STAGE_READING && latest.reading_since == absl::InfiniteFuture()) {
      latest.reading_since = absl::Now();
    }
    latest.progress = p;
  };
  absl::StatusOr<v1::VersionInfo> info;
  std::atomic<bool> done{false};
  std::thread load([&] {
    info = (*client)->LoadFiles(args.files, args.version, args.label, *load_timeout, on_progress);
    done = true;
  });
  if (::isatty(STDERR_FILENO)) {
    for (int tick = 0; !done.load(); ++tick) {
      std::string line;
      {
        absl::MutexLock lock(&latest.mu);
        const absl::Time now = absl::Now();
        if (!latest.progress.has_value()) {
          line = SpinnerLine(args.files.size(), tick, now - start);
        } else {
          const double seconds = absl::ToDoubleSeconds(now - latest.reading_since);
          const double rate = seconds > 0.2 ? latest.progress->bytes_done() / seconds : 0.0;
          line = ProgressLine(*latest.progress, tick, rate, now - start);
        }
      }
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      std::fflush(stderr);
      for (int i = 0; i < 10 && !done.load(); ++i) absl::SleepFor(absl::Milliseconds(10));
    }
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
  load.join();
  if (!info.ok()) return Fail(info.status());
  if (args.json) {
    std::cout << VersionInfoJson(*info).dump(2) << "\n";
  } else {
    std::cout << PushDoneText(*info, absl::Now() - start) << "\n";
  }
  return 0;
}

}  // namespace ckpt::ctl
