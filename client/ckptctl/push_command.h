// `ckptctl push PATH... [--wait] [--version N] [--label L] [--json] [--load-timeout 30m]`: the
// daemon reads safetensors files itself into one new version and commits it
// (Trainer.LoadFilesWithProgress). A PATH may be a safetensors file, a directory (a Hugging Face
// checkpoint as it ships: the shards its model.safetensors.index.json names, else all its
// *.safetensors files) or an index file (*.index.json).
//
// The load is synchronous, so push always blocks until the version is committed (or the load
// failed) and then prints it; --wait asks for exactly that and is accepted for scripts that want
// to say so. On a terminal (stderr is a TTY) a progress line is redrawn meanwhile: the stage, a bar
// of the bytes read, files, rate and elapsed time. Without a terminal nothing but the result (or
// the error) is printed.
#ifndef CKPT_CLIENT_CKPTCTL_PUSH_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_PUSH_COMMAND_H_

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/ckptctl/command.h"
#include "proto/common.pb.h"
#include "proto/trainer.pb.h"

namespace ckpt::ctl {

struct PushArgs {
  std::vector<std::string> files;  // safetensors files, directories, index files
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

// The spinner line for frame `tick`, before the daemon reported anything: "| loading 2 paths into
// ckpt-engined  3.1s" (no newline).
std::string SpinnerLine(size_t paths, int tick, absl::Duration elapsed);

// The progress line for `p` (no newline), `tick` turning the spinner of the stages without a bar,
// `bytes_per_second` the read rate so far (shown when > 0):
//   "/ reading headers: 3/12 files  0.4s"
//   "[#########-----------]  45%  7.2 GiB/16.0 GiB  5/12 files  2.10 GB/s  3.6s"
//   "- committing: 16.0 GiB in 12 files (checksums)  8.0s"
std::string ProgressLine(const v1::LoadFilesProgress& p, int tick, double bytes_per_second,
                         absl::Duration elapsed);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_PUSH_COMMAND_H_
