#include "gpu/device_buffer.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/cuda_status.h"
#include "gpu/scoped_device.h"

namespace ckpt::gpu {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Create(int device, size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("DeviceBuffer::Create: size 0");
  ASSIGN_OR_RETURN(ScopedDevice scope, ScopedDevice::Create(device));
  void* data = nullptr;
  const cudaError_t error = cudaMalloc(&data, bytes);
  if (error != cudaSuccess) {
    return Annotate(CudaStatus(error, "cudaMalloc(&data, bytes)", __FILE__, __LINE__),
                    absl::StrCat("allocating ", bytes, " bytes on device ", device));
  }
  return DeviceBuffer(data, bytes, device);
}

DeviceBuffer::~DeviceBuffer() { Reset(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      device_(std::exchange(other.device_, -1)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

void DeviceBuffer::Reset() {
  if (data_ != nullptr) {
    // With unified addressing cudaFree finds the owning device itself; making that device current
    // anyway avoids creating a context on whatever device happens to be current on this thread.
    absl::StatusOr<ScopedDevice> scope = ScopedDevice::Create(device_);
    if (cudaFree(data_) != cudaSuccess) (void)cudaGetLastError();
  }
  data_ = nullptr;
  size_ = 0;
  device_ = -1;
}

}  // namespace ckpt::gpu
