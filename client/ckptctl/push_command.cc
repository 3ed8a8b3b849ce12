#include "client/ckptctl/push_command.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/ckptctl/version_format.h"
#include "client/trainer_client.h"
#include "common/units.h"

namespace ckpt::ctl {

CLI::App* AddPushCommand(CLI::App* app, PushArgs* args) {
  CLI::App* cmd = app->add_subcommand(
      "push", "load safetensors files into a new version (the daemon reads them itself)");
  cmd->add_option("FILE", args->files, "safetensors files (tensor names unique across them)")
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

std::string SpinnerLine(size_t files, int tick, absl::Duration elapsed) {
  static constexpr char kFrames[] = {'|', '/', '-', '\\'};
  return absl::StrCat(std::string(1, kFrames[tick % 4]), " loading ", files,
                      files == 1 ? " file" : " files", " into ckpt-engined  ",
                      HumanDuration(elapsed));
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

  absl::Time start = absl::Now();
  absl::StatusOr<v1::VersionInfo> info;
  std::atomic<bool> done{false};
  std::thread load([&] {
    info = (*client)->LoadFiles(args.files, args.version, args.label, *load_timeout);
    done = true;
  });
  if (::isatty(STDERR_FILENO)) {
    for (int tick = 0; !done.load(); ++tick) {
      std::fprintf(stderr, "\r%s",
                   SpinnerLine(args.files.size(), tick, absl::Now() - start).c_str());
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
