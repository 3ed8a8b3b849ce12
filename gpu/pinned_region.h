// PinnedRegion: host memory page-locked for CUDA with cudaHostRegister, unregistered on
// destruction.
//
// Two ways to get one:
//   // Pin memory the caller owns (a store mapping, a memfd, a tensor); the caller keeps it alive
//   // for as long as the PinnedRegion exists and frees it afterwards.
//   ASSIGN_OR_RETURN(PinnedRegion pin, PinnedRegion::Register(ptr, bytes));
//   // Or let the region own fresh anonymous memory: mmap, fault in, register; munmap at the end.
//   ASSIGN_OR_RETURN(PinnedRegion store, PinnedRegion::Create(bytes));
//
// Why cudaHostRegister over mmap rather than cudaHostAlloc: on the GPU machines cudaHostAlloc with
// first touch ran at ~1.7 GB/s (the VM faults pages lazily), while registering memory that is
// already faulted in took ~0.07 s per GiB; registering also works on memory we did not allocate
// (memfd mappings shared with workers, NUMA-placed memory).
//
// Flags: cudaHostRegisterPortable only.
// - Portable: the pages count as pinned for every CUDA context in the process, not only the current
//   device's. The daemon copies from one host store into all GPUs of the node, so this is required.
// - not Mapped: we never dereference host memory from kernels; copies use the DMA engines, and with
//   unified addressing the registered range is usable in cudaMemcpy* as is.
// - not ReadOnly: D2H copies write into registered memory (and the flag is optional hardware
//   support).
// - not IoMemory: this is system RAM, not a PCIe BAR.
//
// Contract:
// - Move-only; a default-constructed or moved-from PinnedRegion is empty (data() == nullptr).
// - Destruction unregisters (and for Create(), unmaps). Copies into or out of the region must have
//   completed first: wait on their CudaEvent before destroying the region.
// - On failure nothing stays registered or mapped. The calling thread's current device is
//   unchanged.
// - The object is not synchronized; the memory itself may be used from any thread.
#ifndef CKPT_GPU_PINNED_REGION_H_
#define CKPT_GPU_PINNED_REGION_H_

#include <cstddef>

#include "absl/status/statusor.h"

namespace ckpt::gpu {

class PinnedRegion {
 public:
  PinnedRegion() = default;  // empty
  ~PinnedRegion();

  PinnedRegion(PinnedRegion&& other) noexcept;
  PinnedRegion& operator=(PinnedRegion&& other) noexcept;
  PinnedRegion(const PinnedRegion&) = delete;
  PinnedRegion& operator=(const PinnedRegion&) = delete;

  // Registers [data, data + bytes) owned by the caller. INVALID_ARGUMENT for a null pointer, zero
  // size, or a range already registered; FAILED_PRECONDITION without a driver.
  static absl::StatusOr<PinnedRegion> Register(void* data, size_t bytes);

  // Maps `bytes` (> 0, rounded up to whole pages) of private anonymous memory, faults every page in
  // (MAP_POPULATE, then a write per page in case the kernel skipped some), and registers it. The
  // memory reads as zeros. RESOURCE_EXHAUSTED when the mapping fails.
  static absl::StatusOr<PinnedRegion> Create(size_t bytes);

  bool empty() const { return data_ == nullptr; }
  void* data() const { return data_; }
  // The size asked for (Create() may have mapped up to a page more).
  size_t size() const { return size_; }
  // True for Create(): the region unmaps its memory on destruction.
  bool owns_memory() const { return mapped_bytes_ != 0; }

 private:
  PinnedRegion(void* data, size_t size, size_t mapped_bytes)
      : data_(data), size_(size), mapped_bytes_(mapped_bytes) {}
  void Reset();

  void* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_bytes_ = 0;  // non-zero when we own the mapping
};

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_PINNED_REGION_H_
