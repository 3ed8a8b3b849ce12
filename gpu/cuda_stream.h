// CudaStream: owns one non-blocking CUDA stream on a given device.
//
//   ASSIGN_OR_RETURN(CudaStream copy, CudaStream::Create(/*device=*/0));
//   CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, copy.get()));
//
// Contract:
// - Owns the cudaStream_t; destruction calls cudaStreamDestroy, which returns at once: work already
//   queued still runs to completion (CUDA's semantics). Callers that need the work finished wait on
//   a CudaEvent recorded on the stream, with a deadline, before destroying the stream.
// - The stream is created with cudaStreamNonBlocking: it never synchronizes implicitly with the
//   legacy default stream, so a library or engine using stream 0 cannot stall our copies.
// - Move-only; a default-constructed or moved-from CudaStream is empty (get() == nullptr, which
//   CUDA would read as the default stream: do not enqueue on an empty CudaStream).
// - Thread-safe in CUDA's sense: enqueueing from several threads is allowed, ordering between them
//   is the caller's business. The object itself must not be moved or destroyed while others use it.
// - Create() leaves the calling thread's current device unchanged, on success and failure.
#ifndef CKPT_GPU_CUDA_STREAM_H_
#define CKPT_GPU_CUDA_STREAM_H_

#include <cuda_runtime_api.h>

#include "absl/status/statusor.h"

namespace ckpt::gpu {

class CudaStream {
 public:
  CudaStream() = default;  // empty
  ~CudaStream();

  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  // Creates a non-blocking stream on `device`. `priority` follows cudaStreamCreateWithPriority
  // (lower is higher priority; 0 is the default); it is clamped to the device's range.
  static absl::StatusOr<CudaStream> Create(int device, int priority = 0);

  bool empty() const { return stream_ == nullptr; }
  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }

  // cudaStreamQuery: true when all queued work has completed, false while some is pending;
  // an error status when earlier work failed.
  absl::StatusOr<bool> Query() const;

 private:
  CudaStream(cudaStream_t stream, int device) : stream_(stream), device_(device) {}
  void Reset();

  cudaStream_t stream_ = nullptr;
  int device_ = -1;
};

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_CUDA_STREAM_H_
