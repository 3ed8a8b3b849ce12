// The trainer's side of Trainer.PushLocal (proto/trainer.proto, docs/local-push.md): a push to a
// daemon on the same node whose bytes never cross a socket. The client copies its tensors into a
// memfd window (hashing them as it copies), passes the memfd on the descriptor socket, and the
// daemon copies the window into the version with many threads while the client fills the other
// of two windows.
#ifndef CKPT_CLIENT_LOCAL_PUSH_H_
#define CKPT_CLIENT_LOCAL_PUSH_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "proto/trainer.grpc.pb.h"

namespace ckpt::client {

// One part of a window: `bytes` bytes of tensors[tensor] at `offset`, at `window_offset` in the
// window, streamed by lane `lane`.
struct WindowPartRef {
  uint32_t tensor = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint64_t window_offset = 0;
  uint32_t lane = 0;
};

struct WindowPlan {
  // Back to back from offset 0, lane by lane (each lane's parts in its order).
  std::vector<WindowPartRef> parts;
  uint64_t bytes = 0;
};

// The daemon's limit of parts in one window (as in a chunk), and of tensors in one ipc step.
inline constexpr size_t kMaxWindowParts = kMaxChunkParts;
inline constexpr size_t kMaxIpcTensors = 65536;
// The client's most bytes in one ipc step (a larger tensor goes alone in its step). Large: the
// daemon copies one step at a time, so a step ends with its slowest tensor (one lane hashes each);
// in one step the largest tensors of the whole push start first. At the device-to-host rate a step
// of 64 GiB takes seconds, well inside a push's timeout between answers.
inline constexpr uint64_t kMaxIpcStepBytes = uint64_t{64} << 30;

// Cuts the tensors (but those `skip` marks: the daemon copies them from GPU memory) into windows
// of at most `window_bytes` bytes and `max_parts` parts each, for
// `lanes` threads that each stream whole tensors: a lane takes the next tensor (in order) when its
// last one is done and fills its share of every window (window_bytes / lanes, at least 1 MiB: fewer
// lanes for a small window) with the next bytes of its tensors, so that one thread copies and
// hashes each tensor from its first byte to its last, and each tensor's bytes come once and in
// order. Lanes whose tensors are done leave their share empty. Tensors of 0 bytes are in no window.
// `window_bytes` must be positive. One lane is the tensors in order, back to back.
std::vector<WindowPlan> PlanWindows(const std::vector<TensorView>& tensors, uint64_t window_bytes,
                                    int lanes = 1, size_t max_parts = kMaxWindowParts,
                                    const std::vector<bool>* skip = nullptr);

// A memfd of this process, mapped writable while the client fills it. The daemon only preads it.
class PushWindow;

// The windows of one client's pushes, kept between pushes so that their pages are made once (a
// fresh memfd's first touch costs a page fault per 4 KiB): at most two, each reused by a push whose
// window fits in it. Windows of a push that failed are not kept. Thread-safe.
class WindowPool {
 public:
  WindowPool();
  ~WindowPool();
  WindowPool(const WindowPool&) = delete;
  WindowPool& operator=(const WindowPool&) = delete;

  // A kept window of at least `bytes` bytes, or a new one.
  absl::StatusOr<std::unique_ptr<PushWindow>> Take(uint64_t bytes);
  // Keeps `window` for a later push (or frees it when two are kept).
  void Give(std::unique_ptr<PushWindow> window);
  // Frees the kept windows.
  void Release();

 private:
  absl::Mutex mu_;
  std::vector<std::unique_ptr<PushWindow>> spare_ ABSL_GUARDED_BY(mu_);
};

// Why a local push did not even start, so that transport "auto" may use gRPC instead: nothing was
// begun on the daemon.
struct LocalUnavailable {
  bool unavailable = false;
};

// The local push of `tensors` (already validated; their GPUs synchronized: SynchronizeDevices)
// through `stub` (the daemon's Unix socket
// `endpoint`), with windows from `pool` (null: made for this push). On failure nothing is left on
// the daemon (the stream's end aborts the version); `*unavailable` (not null) is set when the path
// itself is not there (no memfd, no descriptor socket, a daemon without PushLocal) and nothing was
// begun.
//
// CUDA tensors (device >= 0): begin names their GPUs; the daemon answers which it drives. For
// those, the client hands over the CUDA IPC handle of each tensor's allocation and its offset in
// it (ipc steps of at most kMaxIpcStepBytes, sent and answered before any window) and the daemon
// copies the bytes from GPU memory itself; a cancel during that copy takes effect when it ends,
// so the call never returns while the daemon reads the caller's GPU memory (unless the daemon
// makes no progress for options.timeout). A tensor whose allocation refuses an IPC handle
// (PyTorch's expandable segments, cudaMallocAsync pools) or whose GPU the daemon does not drive
// goes through the windows: the lanes copy it device-to-host into the window (pinned once with
// cuMemHostRegister) piece by piece and hash each piece from the window.
absl::StatusOr<v1::VersionInfo> PushLocally(v1::Trainer::Stub* stub, const Endpoint& endpoint,
                                            const std::vector<TensorView>& tensors,
                                            const PushOptions& options, WindowPool* pool,
                                            LocalUnavailable* unavailable);

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_LOCAL_PUSH_H_
