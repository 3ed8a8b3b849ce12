#include "gpu/scoped_device.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "gpu/cuda_status.h"

namespace ckpt::gpu {

absl::StatusOr<ScopedDevice> ScopedDevice::Create(int device) {
  if (device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ScopedDevice: invalid device ", device));
  }
  int previous = -1;
  CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous));
  if (previous != device) {
    CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  }
  return ScopedDevice(device, previous);
}

ScopedDevice::~ScopedDevice() { Restore(); }

ScopedDevice::ScopedDevice(ScopedDevice&& other) noexcept
    : device_(std::exchange(other.device_, -1)), previous_(std::exchange(other.previous_, -1)) {}

ScopedDevice& ScopedDevice::operator=(ScopedDevice&& other) noexcept {
  if (this != &other) {
    Restore();
    device_ = std::exchange(other.device_, -1);
    previous_ = std::exchange(other.previous_, -1);
  }
  return *this;
}

void ScopedDevice::Restore() {
  if (device_ >= 0 && previous_ >= 0 && previous_ != device_) {
    // Errors are dropped (see the header); clear them so they do not leak into later calls.
    if (cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }
  device_ = -1;
  previous_ = -1;
}

}  // namespace ckpt::gpu
