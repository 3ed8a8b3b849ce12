// TransferBackend: how the bytes of an update get from the host store to the workers, chosen once
// at start-up (docs/architecture.md, "The update path").
//
// It owns the staging slots (a SlotSet per GPU on cuda; one host set on host), says which slot set
// serves a worker and what the worker is granted to read them (memfds, or CUDA IPC handles), and
// fills a slot with one bucket of an update plan:
// - host (host_transfer.cc): slots are sealed memfds; a fill is a memcpy per run of the bucket.
// - cuda (cuda_transfer.cc): slots are device buffers exported through CUDA IPC; each GPU uploads
//   its segment of the bucket from pinned host memory on its copy stream, and with several GPUs a
//   grouped NCCL broadcast per segment completes the bucket on every GPU (one communicator over
//   the GPUs, created once and kept).
// The update engine drives it: Fill bucket k into slot k % K, poll Filled, Drain before slots are
// reused after an error. Collectives between nodes (issue 11) extend this interface.
//
// Thread-safety: the accessors may be called from any thread; Fill, Filled and Drain only from the
// one running update (one update runs at a time).
#ifndef CKPT_DAEMON_TRANSFER_TRANSFER_BACKEND_H_
#define CKPT_DAEMON_TRANSFER_TRANSFER_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/transfer/backend_kind.h"
#include "daemon/transfer/staging_slots.h"
#include "daemon/update/update_plan.h"
#include "gpu/gpu_info.h"
#include "proto/consumer.pb.h"

namespace ckpt::daemon {

class TransferBackend {
 public:
  struct Options {
    int slots_per_gpu = 2;
    uint64_t bucket_bytes = 64ull << 20;  // each slot's size
    // Deadline for NCCL set-up and for the collectives of one fill.
    absl::Duration gpu_timeout = absl::Seconds(60);
  };

  // host: `gpus` is ignored. cuda: a slot set and streams per GPU of `gpus` (at least one).
  static absl::StatusOr<std::unique_ptr<TransferBackend>> Create(
      BackendKind kind, const std::vector<gpu::GpuInfo>& gpus, const Options& options);

  virtual ~TransferBackend() = default;

  virtual BackendKind kind() const = 0;
  int slot_set_count() const { return static_cast<int>(slots_.size()); }
  const SlotSet& slots(int set) const { return *slots_[set]; }
  // Device memory the slots take per GPU (0 on host).
  virtual uint64_t gpu_bytes_per_gpu() const = 0;

  // The slot set serving a worker on the GPU `uuid`. cuda: FAILED_PRECONDITION naming the UUID and
  // this daemon's GPUs when it drives no such GPU. host: always 0 (workers may run anywhere).
  virtual absl::StatusOr<int> SlotSetForGpu(const std::string& uuid) const = 0;
  // What a worker of slot set `set` is given: the descriptors sent on the descriptor socket
  // (host: the slots' memfds, owned here; cuda: none) and the SlotGrant message (backend, set,
  // slot sizes, cuda: each slot's IPC handle).
  virtual std::vector<int> GrantFds(int set) const = 0;
  void DescribeGrant(int set, v1::SlotGrant* grant) const;

  // FP8 conversion (docs/conversion.md): called before the first Fill of an update whose plan
  // converts (UpdatePlan::converts), with the scale buffer's size and the name of each of the
  // plan's tensors (errors name them). Buffers are kept and grown across updates (cuda: a mapped
  // pinned scale buffer, and per GPU a device buffer of 2 x bucket_bytes for the BF16 sources).
  virtual absl::Status BeginConversion(uint64_t scale_bytes, std::vector<std::string> names) = 0;

  // Fills slot `slot` of every slot set with `bucket` (host: copies; cuda: enqueues). Converted
  // copies are quantized (host: here, on the CPU; cuda: on the uploader's GPU) and their scales
  // copied once every quantization before them is done.
  virtual absl::Status Fill(const Bucket& bucket, int slot, const uint8_t* arena) = 0;
  // Whether the last Fill of `slot` is complete in every set. FAILED_PRECONDITION naming the
  // tensor when a converted weight held a NaN or infinity (host: Fill says so).
  virtual absl::StatusOr<bool> Filled(int slot) = 0;
  // Waits for all enqueued work (before an error return leaves slots to be reused).
  virtual absl::Status Drain(absl::Time deadline) = 0;

 protected:
  TransferBackend() = default;
  // FAILED_PRECONDITION naming tensor `tensor` of the plan (conversion_names_) as holding a NaN
  // or infinity.
  absl::Status NonFiniteError(int tensor) const;
  std::vector<std::unique_ptr<SlotSet>> slots_;
  // The plan's tensor names, from the last BeginConversion (for errors).
  std::vector<std::string> conversion_names_;
};

// The two implementations (Create picks one).
absl::StatusOr<std::unique_ptr<TransferBackend>> CreateHostTransfer(
    const TransferBackend::Options& options);
absl::StatusOr<std::unique_ptr<TransferBackend>> CreateCudaTransfer(
    const std::vector<gpu::GpuInfo>& gpus, const TransferBackend::Options& options);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_TRANSFER_TRANSFER_BACKEND_H_
