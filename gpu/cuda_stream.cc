#include "gpu/cuda_stream.h"

#include <algorithm>
#include <utility>

#include "common/status_macros.h"
#include "gpu/cuda_status.h"
#include "gpu/scoped_device.h"

namespace ckpt::gpu {

absl::StatusOr<CudaStream> CudaStream::Create(int device, int priority) {
  ASSIGN_OR_RETURN(ScopedDevice scope, ScopedDevice::Create(device));
  int least = 0;
  int greatest = 0;
  CUDA_RETURN_IF_ERROR(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  // "greatest" priority is the numerically smallest value.
  priority = std::clamp(priority, greatest, least);
  cudaStream_t stream = nullptr;
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking, priority));
  return CudaStream(stream, device);
}

CudaStream::~CudaStream() { Reset(); }

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)), device_(std::exchange(other.device_, -1)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    Reset();
    stream_ = std::exchange(other.stream_, nullptr);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

absl::StatusOr<bool> CudaStream::Query() const {
  if (stream_ == nullptr) return absl::FailedPreconditionError("CudaStream::Query on empty stream");
  const cudaError_t error = cudaStreamQuery(stream_);
  if (error == cudaSuccess) return true;
  if (error == cudaErrorNotReady) {
    (void)cudaGetLastError();  // not an error; keep it out of the thread's last-error slot
    return false;
  }
  return CudaStatus(error, "cudaStreamQuery(stream_)", __FILE__, __LINE__);
}

void CudaStream::Reset() {
  if (stream_ != nullptr) {
    // cudaStreamDestroy does not need the stream's device to be current.
    if (cudaStreamDestroy(stream_) != cudaSuccess) (void)cudaGetLastError();
  }
  stream_ = nullptr;
  device_ = -1;
}

}  // namespace ckpt::gpu
