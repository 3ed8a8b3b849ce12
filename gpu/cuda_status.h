// Turning CUDA runtime errors into absl::Status.
//
//   CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, stream));
//
// returns, from the enclosing function, a Status whose message names the call as written, the file
// and line, and the error's name and description, e.g.
//   "cudaMalloc(&ptr, bytes) at gpu/device_buffer.cc:42: cudaErrorMemoryAllocation: out of
//    memory"
// The enclosing function must return absl::Status or absl::StatusOr<T>.
//
// Codes: no device / driver too old or missing -> FAILED_PRECONDITION; out of memory ->
// RESOURCE_EXHAUSTED; invalid value / device / handle -> INVALID_ARGUMENT; not ready ->
// UNAVAILABLE; every other error -> INTERNAL.
//
// Thread-safe. CUDA keeps a per-thread "last error"; CudaStatus() reads and clears it
// (cudaGetLastError) so that a handled failure does not resurface from an unrelated later call on
// the same thread. Sticky errors (a kernel fault: illegal address, launch failure) cannot be
// cleared: the context is unusable afterwards and every later call returns them again; the process
// must exit.
#ifndef CKPT_GPU_CUDA_STATUS_H_
#define CKPT_GPU_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include <string>

#include "absl/status/status.h"

namespace ckpt::gpu {

// The Status for `error` raised by the call spelled `expr` at `file`:`line`. OK for cudaSuccess.
// Clears the calling thread's last CUDA error as a side effect.
absl::Status CudaStatus(cudaError_t error, const char* expr, const char* file, int line);

// The canonical code for a CUDA error (see the table above). OK for cudaSuccess.
absl::StatusCode CudaErrorToCode(cudaError_t error);

// Whether `error` is sticky: the context that raised it is lost (a kernel or copy fault, an
// uncorrectable ECC error), and every later call in it fails the same way.
bool IsStickyError(cudaError_t error);

// "cudaErrorMemoryAllocation: out of memory". Never null, works without a driver.
std::string CudaErrorText(cudaError_t error);

}  // namespace ckpt::gpu

#define CUDA_RETURN_IF_ERROR(call)                                                 \
  do {                                                                             \
    const cudaError_t ckpt_cuda_error_ = (call);                                   \
    if (ckpt_cuda_error_ != cudaSuccess) {                                         \
      return ::ckpt::gpu::CudaStatus(ckpt_cuda_error_, #call, __FILE__, __LINE__); \
    }                                                                              \
  } while (0)

#endif  // CKPT_GPU_CUDA_STATUS_H_
