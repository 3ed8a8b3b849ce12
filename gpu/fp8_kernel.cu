// One thread block per 128 x 128 block of the matrix: the block's amax (a max over |x|, exact),
// scale_inv = amax / 448 (IEEE division: nvcc's default -prec-div=true, and -ftz=false), then each
// element x / scale_inv converted by __nv_cvt_float_to_fp8 (round to nearest even, __NV_SATFINITE:
// +-448 beyond) -- the arithmetic of common/fp8_block.cc.
#include <cuda_fp8.h>

#include "gpu/fp8_kernel.h"

namespace ckpt::gpu {
namespace {

constexpr int kBlock = 128;
constexpr int kThreads = 256;

__device__ __forceinline__ float Bf16Bits(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__global__ void __launch_bounds__(kThreads)
    QuantizeBlocks(const uint16_t* __restrict__ src, uint64_t rows, uint64_t cols,
                   uint8_t* __restrict__ dst, float* __restrict__ scales, int* nonfinite,
                   int mark) {
  const uint64_t r0 = static_cast<uint64_t>(blockIdx.y) * kBlock;
  const uint64_t c0 = static_cast<uint64_t>(blockIdx.x) * kBlock;
  const int block_rows = static_cast<int>(min(static_cast<uint64_t>(kBlock), rows - r0));
  const int block_cols = static_cast<int>(min(static_cast<uint64_t>(kBlock), cols - c0));
  const int n = block_rows * block_cols;
  float amax = 0.0f;
  bool bad = false;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int r = i / block_cols, c = i % block_cols;
    const uint16_t bits = src[(r0 + r) * cols + c0 + c];
    bad = bad || (bits & 0x7f80) == 0x7f80;
    amax = fmaxf(amax, fabsf(Bf16Bits(bits)));
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  }
  __shared__ float warp_max[kThreads / 32];
  __shared__ float block_scale;
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) *nonfinite = mark;
    return;
  }
  if (threadIdx.x == 0) {
    float m = warp_max[0];
    for (int w = 1; w < kThreads / 32; ++w) m = fmaxf(m, warp_max[w]);
    const float scale = m == 0.0f ? 1.0f : __fdiv_rn(m, 448.0f);
    block_scale = scale;
    scales[static_cast<uint64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = scale;
  }
  __syncthreads();
  const float scale = block_scale;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int r = i / block_cols, c = i % block_cols;
    const uint64_t at = (r0 + r) * cols + c0 + c;
    const float x = __fdiv_rn(Bf16Bits(src[at]), scale);
    dst[at] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
  }
}

}  // namespace

cudaError_t LaunchFp8BlockQuantize(const uint16_t* src, uint64_t rows, uint64_t cols, uint8_t* dst,
                                   float* scales, int* nonfinite, int mark, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  const uint64_t row_blocks = (rows + kBlock - 1) / kBlock;
  const uint64_t col_blocks = (cols + kBlock - 1) / kBlock;
  if (row_blocks > 65535 || col_blocks > 0x7fffffffu) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks));
  QuantizeBlocks<<<grid, kThreads, 0, stream>>>(src, rows, cols, dst, scales, nonfinite, mark);
  return cudaGetLastError();
}

}  // namespace ckpt::gpu
