#include "gpu/ipc_mapping.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/cuda_status.h"
#include "gpu/scoped_device.h"

namespace ckpt::gpu {

absl::StatusOr<IpcMapping> IpcMapping::Open(int device, const IpcHandle& handle, size_t bytes) {
  ASSIGN_OR_RETURN(ScopedDevice scope, ScopedDevice::Create(device));
  void* data = nullptr;
  const cudaError_t error =
      cudaIpcOpenMemHandle(&data, handle.cuda(), cudaIpcMemLazyEnablePeerAccess);
  if (error != cudaSuccess) {
    return Annotate(CudaStatus(error,
                               "cudaIpcOpenMemHandle(&data, handle.cuda(), "
                               "cudaIpcMemLazyEnablePeerAccess)",
                               __FILE__, __LINE__),
                    absl::StrCat("opening IPC handle on device ", device));
  }
  return IpcMapping(data, bytes, device);
}

IpcMapping::~IpcMapping() { Reset(); }

IpcMapping::IpcMapping(IpcMapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      device_(std::exchange(other.device_, -1)) {}

IpcMapping& IpcMapping::operator=(IpcMapping&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

void IpcMapping::Reset() {
  if (data_ != nullptr) {
    // The mapping belongs to the context of the device it was opened on.
    absl::StatusOr<ScopedDevice> scope = ScopedDevice::Create(device_);
    if (cudaIpcCloseMemHandle(data_) != cudaSuccess) (void)cudaGetLastError();
  }
  data_ = nullptr;
  size_ = 0;
  device_ = -1;
}

}  // namespace ckpt::gpu
