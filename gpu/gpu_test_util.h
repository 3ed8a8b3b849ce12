// Helpers shared by this package's tests (testonly): deterministic byte patterns and a copy that
// waits with a deadline.
#ifndef CKPT_GPU_GPU_TEST_UTIL_H_
#define CKPT_GPU_GPU_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gpu/cuda_event.h"
#include "gpu/cuda_stream.h"

namespace ckpt::gpu::testing {

// Fills `bytes` bytes at `data` (host memory) with a pattern determined by `seed`; any length.
void FillPattern(void* data, size_t bytes, uint64_t seed);

// Offset of the first byte that differs from FillPattern(seed), or -1 when all match.
int64_t FirstMismatch(const void* data, size_t bytes, uint64_t seed);

// cudaMemcpyAsync(kind inferred) on `stream`, then records `done` and waits for it until `timeout`.
absl::Status CopyAndWait(void* dst, const void* src, size_t bytes, const CudaStream& stream,
                         CudaEvent& done, absl::Duration timeout = absl::Seconds(30));

// cudaGetDeviceCount, 0 on error.
int VisibleDeviceCount();

}  // namespace ckpt::gpu::testing

#endif  // CKPT_GPU_GPU_TEST_UTIL_H_
