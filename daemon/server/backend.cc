#include "daemon/server/backend.h"

#include "absl/strings/str_cat.h"

namespace ckpt::daemon {

absl::StatusOr<BackendKind> ResolveBackend(BackendKind requested, const gpu::GpuProbe& probe) {
  switch (requested) {
    case BackendKind::kHost:
      return BackendKind::kHost;
    case BackendKind::kCuda:
      if (probe.gpus.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "backend 'cuda' was requested but no CUDA device is visible: ", probe.no_gpu_reason));
      }
      return BackendKind::kCuda;
    case BackendKind::kAuto:
      return probe.gpus.empty() ? BackendKind::kHost : BackendKind::kCuda;
  }
  return absl::InternalError("unknown backend kind");
}

}  // namespace ckpt::daemon
