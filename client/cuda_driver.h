// CudaDriver: the few CUDA driver calls a trainer's client makes for CUDA tensors, loaded at run
// time (dlopen of libcuda.so.1), so that the client libraries link nothing of CUDA and work as
// before (host tensors) on machines without it.
//
//   ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
//   RETURN_IF_ERROR(cuda->Synchronize(device));      // the trainer's pending work is done
//   ASSIGN_OR_RETURN(CudaDriver::Allocation a, cuda->AllocationOf(device, ptr));
//   ASSIGN_OR_RETURN(std::string handle, cuda->IpcHandle(device, a.base));
//
// `device` is always a CUDA ordinal of this process (torch's device index). Every call works in
// the device's primary context (the one the CUDA runtime, and so PyTorch, uses), made current on
// the calling thread for the call only: the caller's current context is left as it was.
//
// Thread-safe. Get() loads the driver once per process; the object lives until the process ends.
#ifndef CKPT_CLIENT_CUDA_DRIVER_H_
#define CKPT_CLIENT_CUDA_DRIVER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace ckpt::client {

class CudaDriver {
 public:
  // FAILED_PRECONDITION naming the cause when libcuda.so.1 cannot be loaded or initialized.
  static absl::StatusOr<const CudaDriver*> Get();

  // cuDeviceGetCount.
  absl::StatusOr<int> DeviceCount() const;
  // The GPU's UUID as common/gpu_uuid.h formats it ("GPU-...").
  absl::StatusOr<std::string> GpuUuid(int device) const;
  // Waits until all work queued on the device by this process is done (cuCtxSynchronize of its
  // primary context: every stream, as torch.cuda.synchronize).
  absl::Status Synchronize(int device) const;

  // INVALID_ARGUMENT unless `ptr` is device memory (not host or pinned host memory) of `device`.
  absl::Status CheckDevicePointer(int device, uint64_t ptr) const;

  struct Allocation {
    uint64_t base = 0;  // device address of the allocation's first byte
    uint64_t size = 0;
  };
  // The allocation that holds device address `ptr`; INVALID_ARGUMENT when `ptr` is not device
  // memory of `device` (CheckDevicePointer).
  absl::StatusOr<Allocation> AllocationOf(int device, uint64_t ptr) const;
  // The 64-byte CUDA IPC handle of the allocation based at `base` (cuIpcGetMemHandle). An error
  // for memory that cannot be shared so: cuMemCreate/cuMemMap (PyTorch's expandable segments),
  // stream-ordered pools (cudaMallocAsync), managed memory.
  absl::StatusOr<std::string> IpcHandle(int device, uint64_t base) const;
  // Device-to-host copy of `bytes` from device address `src` (synchronous, on the calling
  // thread's per-thread default stream; at the link's rate when `dst` is pinned).
  absl::Status CopyToHost(int device, void* dst, uint64_t src, size_t bytes) const;

  // Page-locked host memory (cuMemHostAlloc, portable: every context may use it), made in the
  // context of `device` (any of this process's).
  absl::StatusOr<void*> AllocHost(int device, size_t bytes) const;
  void FreeHost(int device, void* p) const;
  // Page-locks existing host memory (cuMemHostRegister, portable); UnregisterHost undoes it.
  absl::Status RegisterHost(int device, void* p, size_t bytes) const;
  void UnregisterHost(int device, void* p) const;

  struct Functions;

 private:
  CudaDriver() = default;
  const Functions* f_ = nullptr;
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_CUDA_DRIVER_H_
