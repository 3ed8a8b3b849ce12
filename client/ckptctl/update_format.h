// The result of Admin.Update as JSON (`ckptctl update --json`, the C ABI's ckpt_update) and text.
#ifndef CKPT_CLIENT_CKPTCTL_UPDATE_FORMAT_H_
#define CKPT_CLIENT_CKPTCTL_UPDATE_FORMAT_H_

#include <nlohmann/json.hpp>
#include <string>

#include "absl/time/time.h"
#include "proto/admin.pb.h"

namespace ckpt::ctl {

nlohmann::json UpdateJson(const v1::UpdateResponse& update);
std::string UpdateText(const v1::UpdateResponse& update);

// UpdateProgress under its proto field names.
nlohmann::json ProgressJson(const v1::UpdateProgress& progress);

// An update's outcome (Status.last_update, WaitLoaded): {"version", "state", "trigger",
// "started_unix_ms", "ended_unix_ms", "code", "error", "result": UpdateJson, "progress":
// ProgressJson}.
nlohmann::json OutcomeJson(const v1::UpdateOutcome& outcome);
// One line: "version 7 succeeded (auto_update) in 1.2s" / "version 7 FAILED (request): ...".
std::string OutcomeText(const v1::UpdateOutcome& outcome);

// The progress line of an update (Status.last_update.progress; no newline), as `ckptctl update`
// redraws it on a terminal: a bar of the bytes in buckets every worker acked, buckets, bytes, the
// average rate since the update began, the workers (how many loaded it and failed, once any did)
// and the update's elapsed time:
//   "[########------------]  40%  8/20 buckets  1.2 GiB/3.0 GiB  2.10 GB/s  4 workers  3.6s"
//   "[####################] 100%  20/20 buckets  3.0 GiB/3.0 GiB  2.10 GB/s  workers: 3/4 loaded,
//    1 failed  5.0s"
std::string UpdateProgressLine(const v1::UpdateProgress& progress);

// A spinner frame (turned by `tick`), `what` and `elapsed`: "| waiting for the update  0.4s".
std::string SpinnerText(const std::string& what, int tick, absl::Duration elapsed);

// Admin.WaitLoaded as JSON: {"version", "loaded", "summary", "workers": [...], "update"}.
nlohmann::json WaitLoadedJson(const v1::WaitLoadedResponse& wait);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_UPDATE_FORMAT_H_
