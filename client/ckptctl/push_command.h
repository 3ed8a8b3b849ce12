// `ckptctl push FILE.safetensors... [--wait] [--version N] [--label L] [--json]
//  [--load-timeout 30m]`: the daemon reads the safetensors files itself into one new version and
// commits it (Trainer.LoadFiles).
//
// LoadFiles is synchronous, so push always blocks until the version is committed (or the load
// failed) and then prints it; --wait asks for exactly that and is accepted for scripts that want
// to say so. On a terminal (stderr is a TTY) a spinner with the elapsed time runs meanwhile:
// LoadFiles reports no byte progress.
#ifndef CKPT_CLIENT_CKPTCTL_PUSH_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_PUSH_COMMAND_H_

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/ckptctl/command.h"
#include "proto/common.pb.h"

namespace ckpt::ctl {

struct PushArgs {
  std::vector<std::string> files;
  bool wait = false;
  uint64_t version = 0;
  std::string label;
  bool json = false;
  std::string load_timeout = "30m";
};

CLI::App* AddPushCommand(CLI::App* app, PushArgs* args);
int RunPushCommand(const GlobalOptions& global, const PushArgs& args);

// "version 7 committed: 3 tensors, 12.0 MiB in 1.2s, label \"step-9\"" (no label part if empty).
std::string PushDoneText(const v1::VersionInfo& info, absl::Duration elapsed);

// The spinner line for frame `tick`: "| loading 2 files into ckpt-engined  3.1s" (no newline).
std::string SpinnerLine(size_t files, int tick, absl::Duration elapsed);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_PUSH_COMMAND_H_
