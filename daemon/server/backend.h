// Choice of the data-plane backend from the configured kind and the GPUs this process sees.
#ifndef CKPT_DAEMON_SERVER_BACKEND_H_
#define CKPT_DAEMON_SERVER_BACKEND_H_

#include "absl/status/statusor.h"
#include "daemon/server/config.h"
#include "gpu/gpu_info.h"

namespace ckpt::daemon {

// auto -> cuda when `probe` has GPUs, else host. cuda without GPUs -> FAILED_PRECONDITION with the
// probe's reason. host is always possible. Never returns kAuto.
absl::StatusOr<BackendKind> ResolveBackend(BackendKind requested, const gpu::GpuProbe& probe);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_BACKEND_H_
