#include "client/ckptctl/update_format.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/units.h"

namespace ckpt::ctl {
namespace {

double GbPerSecond(const v1::UpdateResponse& u) {
  return u.seconds() > 0 ? u.bytes() / 1e9 / u.seconds() : 0;
}

}  // namespace

nlohmann::json UpdateJson(const v1::UpdateResponse& u) {
  nlohmann::json workers = nlohmann::json::array();
  for (const v1::WorkerResult& w : u.workers()) {
    workers.push_back({{"pid", w.pid()},
                       {"gpu_uuid", w.gpu_uuid()},
                       {"engine", w.engine()},
                       {"ok", w.ok()},
                       {"skipped", w.skipped()},
                       {"error", w.error()},
                       {"tensors", w.tensors()},
                       {"bytes", w.bytes()},
                       {"node_name", w.node_name()}});
  }
  return {{"version", u.version()},
          {"seconds", u.seconds()},
          {"bytes", u.bytes()},
          {"buckets", u.buckets()},
          {"gb_per_s", GbPerSecond(u)},
          {"wait_slot_seconds", u.wait_slot_seconds()},
          {"fill_seconds", u.fill_seconds()},
          {"load_seconds", u.load_seconds()},
          {"finish_seconds", u.finish_seconds()},
          {"fp8_tensors", u.fp8_tensors()},
          {"fp8_source_bytes", u.fp8_source_bytes()},
          {"fp8_bytes", u.fp8_bytes()},
          {"workers", workers}};
}

std::string UpdateText(const v1::UpdateResponse& u) {
  int sent = 0, skipped = 0;
  for (const v1::WorkerResult& w : u.workers()) (w.skipped() ? skipped : sent) += 1;
  std::string out;
  if (sent == 0) {
    absl::StrAppend(&out, "version ", u.version(), ": all ", skipped,
                    " workers hold it already (--force resends)\n");
  } else {
    // Wall time first; the stage figures are sums over buckets whose stages overlap, so they are
    // labelled as such (they may add up to more than the wall time).
    absl::StrAppend(&out, "version ", u.version(), " sent to ", sent,
                    " workers: ", FormatBytes(u.bytes()), " in ", u.buckets(), " buckets, ",
                    absl::StrFormat("%.3fs wall time (%.2f GB/s)", u.seconds(), GbPerSecond(u)),
                    "\n");
    if (u.fp8_tensors() > 0) {
      absl::StrAppend(
          &out, "  ", u.fp8_tensors(), u.fp8_tensors() == 1 ? " weight" : " weights",
          " sent as FP8 (e4m3, 128 x 128 block scales): ", FormatBytes(u.fp8_source_bytes()),
          " in the store, ", FormatBytes(u.fp8_bytes()), " sent\n");
    }
    absl::StrAppend(&out, "  per-stage time summed over ", u.buckets(),
                    u.buckets() == 1 ? " bucket" : " buckets",
                    absl::StrFormat(" (stages overlap; not wall time): waiting for slots %.3fs, "
                                    "filling %.3fs, worker loads %.3fs\n",
                                    u.wait_slot_seconds(), u.fill_seconds(), u.load_seconds()));
    absl::StrAppend(&out,
                    absl::StrFormat("  then waiting for the workers to report it loaded: %.3fs "
                                    "wall time\n",
                                    u.finish_seconds()));
  }
  for (const v1::WorkerResult& w : u.workers()) {
    // In a cluster update each worker is named by its member.
    absl::StrAppend(&out, "  ", w.node_name().empty() ? "" : absl::StrCat(w.node_name(), "  "),
                    "pid ", w.pid(), "  ", w.engine().empty() ? "?" : w.engine(), "  ",
                    w.gpu_uuid().empty() ? "host" : w.gpu_uuid(), "  ",
                    w.skipped() ? "holds it already"
                    : w.ok()
                        ? absl::StrCat("loaded ", w.tensors(), " tensors, ", FormatBytes(w.bytes()))
                        : absl::StrCat("FAILED: ", w.error()),
                    "\n");
  }
  return out;
}

nlohmann::json ProgressJson(const v1::UpdateProgress& p) {
  return {{"buckets_total", p.buckets_total()},   {"buckets_done", p.buckets_done()},
          {"bytes_total", p.bytes_total()},       {"bytes_done", p.bytes_done()},
          {"workers_total", p.workers_total()},   {"workers_done", p.workers_done()},
          {"workers_failed", p.workers_failed()}, {"elapsed_seconds", p.elapsed_seconds()}};
}

nlohmann::json OutcomeJson(const v1::UpdateOutcome& o) {
  return {{"version", o.version()},
          {"state", o.state()},
          {"trigger", o.trigger()},
          {"started_unix_ms", o.started_unix_ms()},
          {"ended_unix_ms", o.ended_unix_ms()},
          {"code", o.code()},
          {"error", o.error()},
          {"result", UpdateJson(o.result())},
          {"progress", ProgressJson(o.progress())}};
}

std::string OutcomeText(const v1::UpdateOutcome& o) {
  const std::string how = o.trigger().empty() ? "" : absl::StrCat(" (", o.trigger(), ")");
  if (o.state() == "running") return absl::StrCat("version ", o.version(), " running", how);
  const double seconds = static_cast<double>(o.ended_unix_ms() - o.started_unix_ms()) / 1000.0;
  if (o.state() == "succeeded") {
    return absl::StrCat("version ", o.version(), " succeeded", how,
                        absl::StrFormat(" in %.3fs", seconds));
  }
  // The daemon's error names the version already ("update to version 7: ..."): say it once.
  const absl::string_view error =
      absl::StripPrefix(o.error(), absl::StrCat("update to version ", o.version(), ": "));
  return absl::StrCat("version ", o.version(), " FAILED", how, ": ", o.code(), ": ", error);
}

namespace {

constexpr char kFrames[] = {'|', '/', '-', '\\'};
constexpr int kBarWidth = 20;

}  // namespace

std::string UpdateProgressLine(const v1::UpdateProgress& p) {
  const uint64_t total = p.bytes_total();
  const uint64_t done = std::min(p.bytes_done(), total);
  const double fraction =
      total > 0 ? static_cast<double>(done) / static_cast<double>(total)
                : (p.buckets_total() > 0 ? static_cast<double>(p.buckets_done()) / p.buckets_total()
                                         : 0.0);
  const int filled = std::clamp(static_cast<int>(fraction * kBarWidth), 0, kBarWidth);
  std::string line = absl::StrCat(
      "[", std::string(filled, '#'), std::string(kBarWidth - filled, '-'), "] ",
      absl::StrFormat("%3d%%", static_cast<int>(fraction * 100)), "  ", p.buckets_done(), "/",
      p.buckets_total(), p.buckets_total() == 1 ? " bucket  " : " buckets  ", FormatBytes(done),
      "/", FormatBytes(total));
  if (p.elapsed_seconds() > 0.2 && done > 0) {
    absl::StrAppend(&line, absl::StrFormat("  %.2f GB/s", done / 1e9 / p.elapsed_seconds()));
  }
  if (p.workers_done() == 0 && p.workers_failed() == 0) {
    absl::StrAppend(&line, "  ", p.workers_total(),
                    p.workers_total() == 1 ? " worker" : " workers");
  } else {
    absl::StrAppend(&line, "  workers: ", p.workers_done(), "/", p.workers_total(), " loaded");
    if (p.workers_failed() > 0) absl::StrAppend(&line, ", ", p.workers_failed(), " failed");
  }
  absl::StrAppend(&line, "  ", HumanDuration(absl::Seconds(p.elapsed_seconds())));
  return line;
}

std::string SpinnerText(const std::string& what, int tick, absl::Duration elapsed) {
  return absl::StrCat(std::string(1, kFrames[tick % 4]), " ", what, "  ", HumanDuration(elapsed));
}

nlohmann::json WaitLoadedJson(const v1::WaitLoadedResponse& w) {
  nlohmann::json workers = nlohmann::json::array();
  for (const v1::WorkerStatus& s : w.workers()) {
    workers.push_back({{"pid", s.pid()},
                       {"engine", s.engine()},
                       {"gpu_uuid", s.gpu_uuid()},
                       {"loaded_version", s.loaded_version()},
                       {"mixed_version", s.mixed_version()},
                       {"last_update_version", s.last_update_version()},
                       {"last_update_ok", s.last_update_ok()},
                       {"last_update_error", s.last_update_error()}});
  }
  nlohmann::json out = {{"version", w.version()},
                        {"loaded", w.loaded()},
                        {"summary", w.summary()},
                        {"workers", workers}};
  out["update"] = w.has_update() ? OutcomeJson(w.update()) : nlohmann::json();
  return out;
}

}  // namespace ckpt::ctl
