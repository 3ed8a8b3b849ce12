#include "client/ckptctl/status_format.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/ckptctl/update_format.h"
#include "common/units.h"

namespace ckpt::ctl {
namespace {

// The version store's warm-up: ready, still getting memory ready, pinning, or stopped early.
std::string StoreReadinessText(const v1::StatusResponse& s) {
  const std::string took = HumanDuration(absl::Seconds(s.store_warmup_seconds()));
  const bool cuda = s.backend() == "cuda";
  if (s.store_ready()) {
    return absl::StrCat("ready (", FormatBytes(s.host_memory_budget_bytes()), cuda ? " pinned" : "",
                        " in ", took, ")");
  }
  if (!s.store_error().empty()) {
    return absl::StrCat("NOT fully ready: ", FormatBytes(s.store_ready_bytes()), " of ",
                        FormatBytes(s.host_memory_budget_bytes()), " usable (", s.store_error(),
                        ")");
  }
  if (s.store_ready_bytes() >= s.host_memory_budget_bytes() && cuda) {
    return absl::StrCat("pinning ", FormatBytes(s.host_memory_budget_bytes()),
                        " (cudaHostRegister), ", took,
                        " so far; updates copy from pageable memory until then");
  }
  const int percent = s.host_memory_budget_bytes() == 0
                          ? 0
                          : static_cast<int>(100.0 * static_cast<double>(s.store_ready_bytes()) /
                                             static_cast<double>(s.host_memory_budget_bytes()));
  return absl::StrCat("getting memory ready: ", FormatBytes(s.store_ready_bytes()), " of ",
                      FormatBytes(s.host_memory_budget_bytes()), " (", percent, "%), ", took,
                      " so far; versions that do not fit yet wait or are refused (UNAVAILABLE)");
}

}  // namespace

nlohmann::json StatusJson(const v1::StatusResponse& s) {
  nlohmann::json gpus = nlohmann::json::array();
  for (const v1::GpuStatus& g : s.gpus()) {
    gpus.push_back({{"index", g.index()},
                    {"name", g.name()},
                    {"uuid", g.uuid()},
                    {"total_memory_bytes", g.total_memory_bytes()},
                    {"pci_bus_id", g.pci_bus_id()}});
  }
  nlohmann::json workers = nlohmann::json::array();
  for (const v1::WorkerStatus& w : s.workers()) {
    workers.push_back({{"pid", w.pid()},
                       {"uid", w.uid()},
                       {"engine", w.engine()},
                       {"gpu_uuid", w.gpu_uuid()},
                       {"loaded_version", w.loaded_version()},
                       {"attached_unix_ms", w.attached_unix_ms()},
                       {"tensor_filter", w.tensor_filter()},
                       {"mixed_version", w.mixed_version()},
                       {"last_update_version", w.last_update_version()},
                       {"last_update_ok", w.last_update_ok()},
                       {"last_update_error", w.last_update_error()}});
  }
  nlohmann::json listeners = nlohmann::json::array();
  for (const v1::ListenerStatus& l : s.listeners()) {
    listeners.push_back({{"address", l.address()}, {"auth", l.auth()}});
  }
  return {
      {"daemon_version", s.daemon_version()},
      {"pid", s.pid()},
      {"uptime_seconds", s.uptime_seconds()},
      {"started_unix_ms", s.started_unix_ms()},
      {"backend", s.backend()},
      {"gpus", gpus},
      {"no_gpu_reason", s.no_gpu_reason()},
      {"host_memory_budget_bytes", s.host_memory_budget_bytes()},
      {"host_memory_used_bytes", s.host_memory_used_bytes()},
      {"gpu_memory_per_gpu_bytes", s.gpu_memory_per_gpu_bytes()},
      {"listen_addresses",
       std::vector<std::string>(s.listen_addresses().begin(), s.listen_addresses().end())},
      {"latest_committed_version", s.latest_committed_version()},
      {"attached_workers", s.attached_workers()},
      {"workers", workers},
      {"bucket_bytes", s.bucket_bytes()},
      {"slots_per_gpu", s.slots_per_gpu()},
      {"updating_version", s.updating_version()},
      {"listeners", listeners},
      {"insecure_tcp", s.insecure_tcp()},
      {"store_ready_bytes", s.store_ready_bytes()},
      {"store_ready", s.store_ready()},
      {"store_error", s.store_error()},
      {"store_warmup_seconds", s.store_warmup_seconds()},
      {"store_pinned", s.store_pinned()},
      {"last_update", s.has_last_update() ? OutcomeJson(s.last_update()) : nlohmann::json()},
  };
}

std::string StatusText(const v1::StatusResponse& s) {
  std::string out = absl::StrCat("ckpt-engined ", s.daemon_version(), " (pid ", s.pid(), "), up ",
                                 HumanDuration(absl::Seconds(s.uptime_seconds())), "\n");
  absl::StrAppend(&out, "  backend:      ", s.backend(), "\n");
  if (s.gpus().empty()) {
    absl::StrAppend(&out, "  gpus:         none",
                    s.no_gpu_reason().empty() ? "" : absl::StrCat(" (", s.no_gpu_reason(), ")"),
                    "\n");
  } else {
    absl::StrAppend(&out, "  gpus:         ", s.gpus_size(), "\n");
    for (const v1::GpuStatus& g : s.gpus()) {
      absl::StrAppend(&out, "    [", g.index(), "] ", g.name(), "  ", g.uuid(), "  ",
                      FormatBytes(g.total_memory_bytes()), "  ", g.pci_bus_id(), "\n");
    }
  }
  absl::StrAppend(&out, "  host memory:  ", FormatBytes(s.host_memory_used_bytes()), " used of ",
                  FormatBytes(s.host_memory_budget_bytes()), " budget\n");
  absl::StrAppend(&out, "  store:        ", StoreReadinessText(s), "\n");
  absl::StrAppend(&out, "  versions:     ",
                  s.latest_committed_version() == 0
                      ? std::string("none committed")
                      : absl::StrCat("latest committed ", s.latest_committed_version()),
                  "\n");
  absl::StrAppend(&out, "  slots:        ", s.slots_per_gpu(), " x ", FormatBytes(s.bucket_bytes()),
                  s.gpus().empty()
                      ? " in shared memory"
                      : absl::StrCat(" per GPU (", FormatBytes(s.gpu_memory_per_gpu_bytes()),
                                     " of GPU memory each)"),
                  "\n");
  if (s.updating_version() != 0) {
    absl::StrAppend(&out, "  updating:     version ", s.updating_version(), "\n");
  }
  absl::StrAppend(&out, "  workers:      ", s.attached_workers(), " attached\n");
  for (const v1::WorkerStatus& w : s.workers()) {
    absl::StrAppend(
        &out, "    pid ", w.pid(), "  ", w.engine().empty() ? "?" : w.engine(), "  ",
        w.gpu_uuid().empty() ? "host" : w.gpu_uuid(), "  ",
        w.loaded_version() == 0 ? std::string("no version loaded")
                                : absl::StrCat("holds version ", w.loaded_version()),
        w.mixed_version() == 0
            ? ""
            : absl::StrCat(", MIXED with part of version ", w.mixed_version(),
                           " (ckptctl update --previous)"),
        w.tensor_filter() == 0 ? "" : absl::StrCat("  (", w.tensor_filter(), " tensors)"), "\n");
    if (!w.last_update_ok() && w.last_update_version() != 0) {
      absl::StrAppend(&out, "      last update (version ", w.last_update_version(),
                      ") failed: ", w.last_update_error(), "\n");
    }
  }
  if (s.has_last_update()) {
    absl::StrAppend(&out, "  last update:  ", OutcomeText(s.last_update()), "\n");
  }
  if (s.listeners_size() == 0) {
    absl::StrAppend(&out, "  listening:    ", absl::StrJoin(s.listen_addresses(), ", "), "\n");
  }
  for (const v1::ListenerStatus& l : s.listeners()) {
    absl::StrAppend(&out, "  listening:    ", l.address(), "  (auth: ", l.auth(), ")\n");
  }
  if (s.insecure_tcp()) {
    absl::StrAppend(&out, "  WARNING:      TCP is served without authentication (insecure_tcp)\n");
  }
  return out;
}

}  // namespace ckpt::ctl
