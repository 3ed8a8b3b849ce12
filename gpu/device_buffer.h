// DeviceBuffer: owns one cudaMalloc allocation on a given device.
//
//   ASSIGN_OR_RETURN(DeviceBuffer slot, DeviceBuffer::Create(/*device=*/1, 256 << 20));
//   cudaMemcpyAsync(slot.data(), host, slot.size(), cudaMemcpyHostToDevice, stream);
//
// Contract:
// - Plain cudaMalloc (not the stream-ordered pool, not managed memory): such memory can be exported
//   with cudaIpcGetMemHandle (see ipc_handle.h), and it is what the GPU machines' rules ask for.
// - Move-only; a default-constructed or moved-from DeviceBuffer is empty (data() == nullptr,
//   size() == 0).
// - Destruction calls cudaFree, which waits for all work on the device to finish (CUDA's
//   semantics): free buffers at quiet points (start-up, shutdown, reconfiguration), not on the hot
//   path. Buffers still mapped by other processes through IPC stay alive in the driver until those
//   unmap them.
// - Create() on failure allocates nothing; out of memory is RESOURCE_EXHAUSTED and leaves the CUDA
//   context usable. The calling thread's current device is unchanged either way.
// - The object is not synchronized: share it between threads only for reading data()/size().
#ifndef CKPT_GPU_DEVICE_BUFFER_H_
#define CKPT_GPU_DEVICE_BUFFER_H_

#include <cstddef>

#include "absl/status/statusor.h"

namespace ckpt::gpu {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;  // empty
  ~DeviceBuffer();

  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Allocates `bytes` (> 0) on `device`. The memory is uninitialized; its address is aligned to at
  // least 256 bytes.
  static absl::StatusOr<DeviceBuffer> Create(int device, size_t bytes);

  bool empty() const { return data_ == nullptr; }
  void* data() const { return data_; }
  size_t size() const { return size_; }
  int device() const { return device_; }

 private:
  DeviceBuffer(void* data, size_t size, int device) : data_(data), size_(size), device_(device) {}
  void Reset();

  void* data_ = nullptr;
  size_t size_ = 0;
  int device_ = -1;
};

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_DEVICE_BUFFER_H_
