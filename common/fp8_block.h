// FP8 E4M3 with 128 x 128 block scales (the DeepSeek-V3 / Kimi-K2 checkpoint format), on the CPU:
// the host backend's conversion and the reference the cuda kernel (gpu/fp8_kernel.cu) matches bit
// for bit (docs/conversion.md).
//
// For a BF16 matrix W of rows x cols (row-major), per 128 x 128 block (the last row and column of
// blocks may be smaller): scale_inv = amax(|W|) / 448 in float32 (1 for a block of zeros), and
// W_fp8 = e4m3(W / scale_inv), the division in float32, rounded to nearest even, saturating at
// +-448. The scales form a float32 matrix of ceil(rows / 128) x ceil(cols / 128).
#ifndef CKPT_COMMON_FP8_BLOCK_H_
#define CKPT_COMMON_FP8_BLOCK_H_

#include <cstdint>

namespace ckpt {

inline constexpr uint64_t kFp8Block = 128;
inline constexpr float kE4m3Max = 448.0f;

inline uint64_t Fp8ScaleBlocks(uint64_t n) { return (n + kFp8Block - 1) / kFp8Block; }

// bfloat16 bits -> float32 (exact).
float Bf16ToFloat(uint16_t bits);
// float32 -> float8_e4m3fn bits: round to nearest even, finite values and infinities beyond 448
// saturate to +-448 (0x7e / 0xfe); NaN -> 0x7f (with its sign).
uint8_t FloatToE4m3(float x);
// float8_e4m3fn bits -> float32 (exact; 0x7f / 0xff: NaN).
float E4m3ToFloat(uint8_t bits);

// Quantizes `rows` rows of a BF16 matrix of `cols` columns whose first row starts a block row
// (its index in the whole matrix is a multiple of 128): `src` has rows x cols elements, `dst` gets
// rows x cols bytes and `scales` ceil(rows / 128) x ceil(cols / 128) floats. False when an element
// is NaN or infinite (then dst and scales hold no meaning).
bool QuantizeBf16BlocksE4m3(const uint16_t* src, uint64_t rows, uint64_t cols, uint8_t* dst,
                            float* scales);

}  // namespace ckpt

#endif  // CKPT_COMMON_FP8_BLOCK_H_
