// `ckptctl update VERSION|latest [--force] [--consistent] [--json] [--wait-timeout 10m]`: sends a
// committed version to the attached workers (Admin.Update) and waits until they have loaded it.
//
// On a terminal (stderr is a TTY, no --json) a progress line is redrawn on stderr meanwhile: the
// Update call runs on a thread of its own while this one polls Admin.Status every 200 ms (each poll
// with a deadline of at most 1 s, on a channel of its own) and draws the running update's progress
// (Status.last_update.progress: buckets, bytes, rate, workers). `--wait` draws a waiting line the
// same way. The line is erased when the call returns; nothing is drawn without a terminal.
#ifndef CKPT_CLIENT_CKPTCTL_UPDATE_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_UPDATE_COMMAND_H_

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "client/ckptctl/command.h"

namespace ckpt::ctl {

struct UpdateArgs {
  std::string version;
  bool force = false;
  bool json = false;
  // Start nothing: wait until every attached worker holds VERSION (or its update failed).
  bool wait = false;
  // Resend to workers with mixed weights the last version each fully loaded.
  bool previous = false;
  // A consistent switch: every worker pauses before any bucket, all load, all resume.
  bool consistent = false;
  std::string wait_timeout = "10m";
  // FP8 on the way: "default" (the daemon's fp8_by_default), "fp8" or "none"; patterns of this
  // update's own (imply fp8).
  std::string convert = "default";
  std::vector<std::string> fp8_weights;
  std::vector<std::string> fp8_exclude;
};

CLI::App* AddUpdateCommand(CLI::App* app, UpdateArgs* args);
int RunUpdateCommand(const GlobalOptions& global, const UpdateArgs& args);

// Picks, from successive Admin.Status answers, the update a `ckptctl update` waits for: a running
// update of `version` (0: any, for `latest` and --previous), and that same update (same version
// and start) after it ended, until the Update call returns.
class UpdateTracker {
 public:
  explicit UpdateTracker(uint64_t version) : version_(version) {}
  // The progress to draw; nullopt while no such update has been seen.
  std::optional<v1::UpdateProgress> Track(const v1::StatusResponse& status);

 private:
  const uint64_t version_;
  std::optional<std::pair<uint64_t, int64_t>> followed_;  // version, started_unix_ms
};

// The line `ckptctl update --wait` redraws (no newline), from a Status answer (nullptr: none yet):
// "version 7: " + UpdateProgressLine while an update of it runs, else a spinner
// "| waiting until every worker holds version 7 (1 of 2 do)  3.1s". `version` 0: the newest
// committed.
std::string WaitLoadedLine(const v1::StatusResponse* status, uint64_t version, int tick,
                           absl::Duration elapsed);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_UPDATE_COMMAND_H_
