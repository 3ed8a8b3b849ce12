#include "client/ckptctl/update_format.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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
                       {"bytes", w.bytes()}});
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
    absl::StrAppend(&out, "version ", u.version(), " sent to ", sent,
                    " workers: ", FormatBytes(u.bytes()), " in ", u.buckets(), " buckets, ",
                    absl::StrFormat("%.3fs (%.2f GB/s)", u.seconds(), GbPerSecond(u)), "\n");
    absl::StrAppend(&out,
                    absl::StrFormat("  stages (summed over buckets): waiting for slots %.3fs, "
                                    "filling %.3fs, worker loads %.3fs; finish %.3fs\n",
                                    u.wait_slot_seconds(), u.fill_seconds(), u.load_seconds(),
                                    u.finish_seconds()));
  }
  for (const v1::WorkerResult& w : u.workers()) {
    absl::StrAppend(&out, "  pid ", w.pid(), "  ", w.engine().empty() ? "?" : w.engine(), "  ",
                    w.gpu_uuid().empty() ? "host" : w.gpu_uuid(), "  ",
                    w.skipped() ? "holds it already"
                    : w.ok()
                        ? absl::StrCat("loaded ", w.tensors(), " tensors, ", FormatBytes(w.bytes()))
                        : absl::StrCat("FAILED: ", w.error()),
                    "\n");
  }
  return out;
}

}  // namespace ckpt::ctl
