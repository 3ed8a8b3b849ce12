// The cuda backend's FP8 conversion (docs/conversion.md): BF16 -> float8_e4m3fn with 128 x 128
// block scales on the GPU, bit for bit what common/fp8_block.h computes on the CPU. Compiled by
// nvcc (gpu/BUILD.bazel, genrule fp8_kernel_obj); callable from host C++.
#ifndef CKPT_GPU_FP8_KERNEL_H_
#define CKPT_GPU_FP8_KERNEL_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace ckpt::gpu {

// Enqueues on `stream` the quantization of `rows` rows (the first starting a block row) of the
// BF16 matrix `src` (device memory, rows x cols, row-major) into `dst` (rows x cols bytes, device)
// and `scales` (ceil(rows / 128) x ceil(cols / 128) floats; device or mapped host memory). A NaN or
// infinity sets *nonfinite (device int) to `mark`; `dst` and `scales` are then meaningless.
// Returns the launch's error (cudaErrorInvalidValue for a shape past the grid's limits).
cudaError_t LaunchFp8BlockQuantize(const uint16_t* src, uint64_t rows, uint64_t cols, uint8_t* dst,
                                   float* scales, int* nonfinite, int mark, cudaStream_t stream);

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_FP8_KERNEL_H_
