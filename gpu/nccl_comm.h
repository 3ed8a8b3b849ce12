// NcclComm: owns one NCCL communicator rank, created non-blocking and waited for with a deadline.
//
// One daemon drives all GPUs of its node, so the usual shape is one process holding one rank per
// local GPU, created together and kept for the daemon's lifetime (re-creating NCCL per update is
// one of the reference system's costs we avoid):
//
//   ASSIGN_OR_RETURN(std::vector<NcclComm> comms,
//                    NcclComm::CreateLocal({0, 1, 2, 3}, absl::Seconds(60)));
//   // per bucket, from one thread:
//   RETURN_IF_ERROR(NcclComm::GroupBroadcast(absl::MakeSpan(comms), buffers, bytes, root,
//                                            absl::Seconds(5)));
//   // then wait on a CudaEvent recorded on each stream, with a deadline.
//
// For several nodes each daemon will own one or more ranks of a larger communicator built from an
// ncclUniqueId exchanged over the control plane: NewUniqueId() + CreateRank().
//
//   NCCL_RETURN_IF_ERROR(ncclGroupStart());
//
// returns from the enclosing function (absl::Status or StatusOr) a Status naming the call,
// file:line, ncclGetErrorString and ncclGetLastError. Do not wrap calls on non-blocking
// communicators that may answer ncclInProgress with it: that answer is not an error (the methods
// below handle it).
//
// Contract:
// - Every wait has a deadline: creation and enqueueing poll ncclCommGetAsyncError (backoff up to
//   2 ms) until ready, failed, or the deadline; on error or timeout the communicators involved are
//   aborted (ncclCommAbort) before the error is returned, since a half-initialized or half-enqueued
//   clique would leave its peers blocked.
// - Broadcast/GroupBroadcast return once the work is enqueued on the given streams, not completed:
//   completion is observed with CudaEvent::WaitWithDeadline. If that wait times out (a peer died, a
//   kernel hangs), call Abort() on the ranks: only an abort unblocks NCCL kernels.
// - Destruction: ncclCommDestroy when healthy (it is local: ranks of one process may be destroyed
//   one by one, in any order), ncclCommAbort after an error. Destroy waits for this rank's queued
//   NCCL work; wait for it with a deadline first, or Abort().
// - Move-only; a default-constructed, moved-from or aborted NcclComm is empty.
// - Threads: NCCL forbids concurrent calls on one communicator; a group of local ranks must be
//   driven by one thread. The object is not synchronized.
// - NCCL reads its environment at the first communicator's creation; on the shared GPU machines
//   NCCL_NVLS_ENABLE=0 must be set before that (the test runner does).
#ifndef CKPT_GPU_NCCL_COMM_H_
#define CKPT_GPU_NCCL_COMM_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace ckpt::gpu {

// The Status for `result` from the NCCL call spelled `expr` at `file`:`line`. OK for ncclSuccess.
// Codes: invalid argument -> INVALID_ARGUMENT, invalid usage -> FAILED_PRECONDITION, remote error
// -> UNAVAILABLE, in progress -> UNAVAILABLE, others (CUDA, system, internal) -> INTERNAL.
absl::Status NcclStatus(ncclResult_t result, const char* expr, const char* file, int line);

// One rank's buffers for a grouped broadcast. `send` is read on the root only (may equal `recv`
// there: in place); `stream` must belong to the rank's device.
struct NcclBroadcastBuffers {
  const void* send = nullptr;
  void* recv = nullptr;
  cudaStream_t stream = nullptr;
};

class NcclComm {
 public:
  NcclComm() = default;  // empty
  ~NcclComm();

  NcclComm(NcclComm&& other) noexcept;
  NcclComm& operator=(NcclComm&& other) noexcept;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  // One communicator over `devices` (distinct CUDA ordinals) in this process: element i of the
  // result is rank i on devices[i]. Non-blocking init of all ranks in one NCCL group, then a poll
  // until all are ready. DEADLINE_EXCEEDED after `timeout` (all ranks aborted); INVALID_ARGUMENT
  // for an empty or repeated device list. Leaves the calling thread's current device unchanged.
  static absl::StatusOr<std::vector<NcclComm>> CreateLocal(absl::Span<const int> devices,
                                                           absl::Duration timeout);

  // A fresh ncclUniqueId (opens NCCL's bootstrap listener in this process) for CreateRank.
  static absl::StatusOr<ncclUniqueId> NewUniqueId();

  // Rank `rank` of an `nranks`-rank communicator identified by `id`, on `device`; returns when
  // every rank has joined (or after `timeout`, aborted, with DEADLINE_EXCEEDED). The other ranks
  // must be created concurrently by other processes or threads.
  static absl::StatusOr<NcclComm> CreateRank(int device, int nranks, int rank,
                                             const ncclUniqueId& id, absl::Duration timeout);

  // Enqueues this rank's part of a broadcast of `bytes` bytes from rank `root` on `stream`; for
  // communicators with one rank per thread. On failure this rank is aborted.
  absl::Status Broadcast(const void* send, void* recv, size_t bytes, int root, cudaStream_t stream,
                         absl::Duration timeout);

  // Enqueues one broadcast across several ranks driven by this thread (typically all ranks of
  // CreateLocal), grouped so that no rank waits for another on the host. buffers[i] belongs to
  // comms[i]. On failure every rank in `comms` is aborted.
  static absl::Status GroupBroadcast(absl::Span<NcclComm> comms,
                                     absl::Span<const NcclBroadcastBuffers> buffers, size_t bytes,
                                     int root, absl::Duration timeout);

  // One broadcast of a grouped in-place set: every rank's bytes [offset, offset + bytes) of its own
  // base pointer, from rank `root`.
  struct InPlaceOp {
    int root = 0;
    size_t offset = 0;
    size_t bytes = 0;
  };

  // Enqueues all `ops` in one NCCL group across several ranks driven by this thread: for rank i
  // the data is at bases[i] + op.offset, on streams[i]. Used for a bucket whose segments have
  // different roots (every GPU uploads one segment, then each is broadcast from its uploader).
  // On failure every rank in `comms` is aborted.
  static absl::Status GroupBroadcastInPlace(absl::Span<NcclComm> comms,
                                            absl::Span<void* const> bases,
                                            absl::Span<const cudaStream_t> streams,
                                            absl::Span<const InPlaceOp> ops,
                                            absl::Duration timeout);

  // OK, or the error NCCL recorded asynchronously (a peer died, a network error). Cheap: poll it
  // while waiting for collectives to complete.
  absl::Status CheckAsyncError() const;

  // Aborts outstanding work and frees the communicator (ncclCommAbort); leaves this object empty.
  void Abort();

  bool empty() const { return comm_ == nullptr; }
  ncclComm_t get() const { return comm_; }
  int rank() const { return rank_; }
  int nranks() const { return nranks_; }
  int device() const { return device_; }

  // "2.28.9", the NCCL library actually loaded.
  static std::string LibraryVersion();

 private:
  // Checks every communicator and root, runs `enqueue` (the collectives) between ncclGroupStart and
  // ncclGroupEnd, and waits for the enqueue until `deadline`; on any failure aborts every rank.
  static absl::Status RunGroup(absl::Span<NcclComm> comms, absl::Span<const int> roots,
                               const char* what, absl::Time deadline,
                               const std::function<absl::Status()>& enqueue);

  NcclComm(ncclComm_t comm, int rank, int nranks, int device)
      : comm_(comm), rank_(rank), nranks_(nranks), device_(device) {}
  void Reset();

  ncclComm_t comm_ = nullptr;
  int rank_ = -1;
  int nranks_ = 0;
  int device_ = -1;
  bool failed_ = false;  // an error was seen: destroy by abort
};

}  // namespace ckpt::gpu

#define NCCL_RETURN_IF_ERROR(call)                                                  \
  do {                                                                              \
    const ncclResult_t ckpt_nccl_result_ = (call);                                  \
    if (ckpt_nccl_result_ != ncclSuccess) {                                         \
      return ::ckpt::gpu::NcclStatus(ckpt_nccl_result_, #call, __FILE__, __LINE__); \
    }                                                                               \
  } while (0)

#endif  // CKPT_GPU_NCCL_COMM_H_
