// GpuIngest: the cuda backend's copy of tensors out of a local trainer's GPU memory into the
// pinned store (the `ipc` step of Trainer.PushLocal, docs/local-push.md).
//
// The trainer hands over the CUDA IPC handle of each tensor's allocation and the tensor's offset in
// it. Copy opens every distinct handle once (on the daemon's ordinal of the tensor's GPU), checks
// each tensor's range against the allocation's size as this process sees it (cuMemGetAddressRange
// of the mapping), and only then copies: `lanes` threads each take the next tensor (GPUs taken in
// turn, so every GPU's tensors are copied at once) and stream it device-to-host in pieces on a
// stream of their own, hashing (XXH3-64) each piece as soon as it has landed while the next one is
// copied. So a tensor's bytes are written once by the copy engine and read once by the hash, and
// its checksum is known when its last piece is in.
//
// Safety:
// - The daemon only reads the trainer's memory (device-to-host), only inside the allocation the
//   handle names, and only writes the destinations it is given (the version's own memory).
// - Copy returns only after every copy it issued has completed. If the GPU does not finish them
//   within gpu_timeout (a hung device), `quiesced` is false: the destinations may still be
//   written, and the caller must keep that memory from being reused (it leaks the version's
//   lease rather than let a late DMA land in another version).
// - The mappings are closed (cudaIpcCloseMemHandle) when Copy returns; the trainer keeps its
//   tensors alive and unchanged until its push ends (the API says so).
//
// Thread-safety: Copy may run for several pushes at once (each makes its own streams).
#ifndef CKPT_DAEMON_TRANSFER_GPU_INGEST_H_
#define CKPT_DAEMON_TRANSFER_GPU_INGEST_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gpu/gpu_info.h"
#include "gpu/ipc_handle.h"

namespace ckpt::daemon {

class GpuIngest {
 public:
  struct Options {
    // Threads that each stream whole tensors (copy and hash).
    int lanes = 8;
    // Bytes of one device-to-host copy: a lane hashes one piece while the next is copied.
    uint64_t piece_bytes = uint64_t{8} << 20;
    // The longest wait for one piece's copy.
    absl::Duration gpu_timeout = absl::Seconds(60);
  };

  // One tensor to copy.
  struct Source {
    int device = -1;  // this process's CUDA ordinal of the tensor's GPU (DeviceOf)
    gpu::IpcHandle handle;
    uint64_t offset = 0;  // from the allocation's base
    uint64_t bytes = 0;   // at least 1
    uint8_t* dst = nullptr;
    std::string name;  // for errors
  };

  struct Result {
    absl::Status status;
    // OK only: each source's XXH3-64, in order.
    std::vector<uint64_t> xxh3;
    // False when some issued copy was still pending at the end (see the header comment).
    bool quiesced = true;
  };

  // `gpus`: the daemon's (at least one).
  static absl::StatusOr<std::unique_ptr<GpuIngest>> Create(const std::vector<gpu::GpuInfo>& gpus,
                                                           Options options);

  // This process's CUDA ordinal of the GPU `uuid`, or -1 when the daemon does not drive it.
  int DeviceOf(const std::string& uuid) const;

  // How a copy that an update follows at once (an overlapped push + update) goes.
  struct Feed {
    // Lanes take the tensors in TakenEarlier's order (common/parallel.h: those of at least 256 MiB
    // first, largest first, then the others in the order given: the update's), instead of all of
    // them largest first (the fastest copy of the whole).
    bool in_order = false;
    // Called from a lane as source k is in and hashed (its XXH3-64): its bytes no longer change.
    std::function<void(size_t k, uint64_t xxh3)> tensor_done;
  };

  // Copies every source into its dst (see the header comment). `cancelled` (may be empty) is
  // polled between pieces, from every lane. Errors: INVALID_ARGUMENT / OUT_OF_RANGE naming the
  // tensor for a handle that cannot be opened or a range past its allocation (nothing is copied
  // then), CANCELLED, DEADLINE_EXCEEDED, or the CUDA error of a copy.
  Result Copy(const std::vector<Source>& sources, const std::function<bool()>& cancelled,
              const Feed& feed) const;
  Result Copy(const std::vector<Source>& sources, const std::function<bool()>& cancelled) const {
    return Copy(sources, cancelled, Feed());
  }

  // After a failed Copy: true when a GPU of `sources` has lost its CUDA context (a sticky error:
  // every later CUDA call on it fails, so the daemon must restart).
  bool ContextLost(const std::vector<Source>& sources) const;

 private:
  GpuIngest(std::vector<gpu::GpuInfo> gpus, Options options)
      : gpus_(std::move(gpus)), options_(options) {}
  std::vector<gpu::GpuInfo> gpus_;
  Options options_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_TRANSFER_GPU_INGEST_H_
