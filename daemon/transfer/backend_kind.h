// BackendKind: how the daemon moves bytes to workers (config key `backend`): host (shared memory,
// no GPU) or cuda (GPU slots, CUDA IPC, NCCL); auto is resolved at start-up (server/backend.h).
#ifndef CKPT_DAEMON_TRANSFER_BACKEND_KIND_H_
#define CKPT_DAEMON_TRANSFER_BACKEND_KIND_H_

#include "absl/strings/string_view.h"

namespace ckpt::daemon {

enum class BackendKind { kAuto, kCuda, kHost };

// "auto", "cuda", "host".
inline absl::string_view BackendName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto:
      return "auto";
    case BackendKind::kCuda:
      return "cuda";
    case BackendKind::kHost:
      return "host";
  }
  return "?";
}

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_TRANSFER_BACKEND_KIND_H_
