// The host copy of a push's CUDA tensors for the gRPC path (a daemon on another node): every CUDA
// tensor is copied device-to-host into one block of pinned memory, all GPUs at once (a thread per
// GPU), at the link's rate and without a pageable temporary, before the streams start; the
// streams then send the host copies as they send host tensors.
#ifndef CKPT_CLIENT_DEVICE_STAGING_H_
#define CKPT_CLIENT_DEVICE_STAGING_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/trainer_client.h"

namespace ckpt::client {

class CudaDriver;

// Pinned host memory (cuMemHostAlloc) of one size; freed on destruction.
class PinnedBlock {
 public:
  static absl::StatusOr<std::unique_ptr<PinnedBlock>> Create(const CudaDriver* cuda, int device,
                                                             uint64_t bytes);
  ~PinnedBlock();
  PinnedBlock(const PinnedBlock&) = delete;
  PinnedBlock& operator=(const PinnedBlock&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  PinnedBlock(const CudaDriver* cuda, int device, uint8_t* data, uint64_t size)
      : cuda_(cuda), device_(device), data_(data), size_(size) {}
  const CudaDriver* cuda_;
  int device_;
  uint8_t* data_;
  uint64_t size_;
};

// The pinned blocks of one client's pushes, kept between pushes (pinning memory costs more than
// copying into it): at most one kept, the largest. Thread-safe: concurrent pushes take blocks of
// their own.
class StagingPool {
 public:
  StagingPool();
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  absl::StatusOr<std::unique_ptr<PinnedBlock>> Take(int device, uint64_t bytes);
  void Give(std::unique_ptr<PinnedBlock> block);
  // Frees the kept block.
  void Release();

 private:
  absl::Mutex mu_;
  std::unique_ptr<PinnedBlock> spare_ ABSL_GUARDED_BY(mu_);
};

// A push's tensors with every CUDA tensor (device >= 0) replaced by its host copy in `block`.
struct StagedTensors {
  std::vector<TensorView> tensors;
  std::unique_ptr<PinnedBlock> block;  // null when no tensor is on a GPU
};

// Copies the CUDA tensors of `tensors` into a block from `pool` (each at a 256-byte boundary).
// The devices must be synchronized already (their pending work done). Errors name the tensor.
absl::StatusOr<StagedTensors> StageDeviceTensors(const std::vector<TensorView>& tensors,
                                                 StagingPool& pool);

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_DEVICE_STAGING_H_
