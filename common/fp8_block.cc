#include "common/fp8_block.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace ckpt {

float Bf16ToFloat(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

uint8_t FloatToE4m3(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80);
  if (std::isnan(x)) return sign | 0x7f;
  const float a = std::fabs(x);
  if (a >= kE4m3Max) return sign | 0x7e;
  if (a < 0.015625f) {
    // Subnormals (and zero): steps of 2^-9; 8 steps round up to the smallest normal, 0x08.
    const float steps = std::nearbyint(a * 512.0f);  // exact scaling, then to nearest even
    return sign | static_cast<uint8_t>(steps);
  }
  int e = 0;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1): the exponent is e - 1, in [-6, 8]
  const int exponent = e - 1;
  // 8 to 16 steps of 2^(exponent - 3); 16 carries into the next exponent (encoded the same way).
  const float steps = std::nearbyint(std::ldexp(a, 3 - exponent));
  const int code = ((exponent + 7) << 3) + static_cast<int>(steps) - 8;
  return sign | static_cast<uint8_t>(code);
}

float E4m3ToFloat(uint8_t bits) {
  const float sign = (bits & 0x80) != 0 ? -1.0f : 1.0f;
  const int exponent = (bits >> 3) & 0x0f;
  const int mantissa = bits & 0x07;
  if (exponent == 0x0f && mantissa == 0x07) return std::nanf("");
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
}

bool QuantizeBf16BlocksE4m3(const uint16_t* src, uint64_t rows, uint64_t cols, uint8_t* dst,
                            float* scales) {
  const uint64_t col_blocks = Fp8ScaleBlocks(cols);
  for (uint64_t r0 = 0; r0 < rows; r0 += kFp8Block) {
    const uint64_t r1 = std::min(rows, r0 + kFp8Block);
    for (uint64_t c0 = 0; c0 < cols; c0 += kFp8Block) {
      const uint64_t c1 = std::min(cols, c0 + kFp8Block);
      float amax = 0.0f;
      for (uint64_t r = r0; r < r1; ++r) {
        const uint16_t* row = src + r * cols;
        for (uint64_t c = c0; c < c1; ++c) {
          // Exponent all ones: an infinity or NaN.
          if ((row[c] & 0x7f80) == 0x7f80) return false;
          amax = std::max(amax, std::fabs(Bf16ToFloat(row[c])));
        }
      }
      const float scale = amax == 0.0f ? 1.0f : amax / kE4m3Max;
      scales[(r0 / kFp8Block) * col_blocks + c0 / kFp8Block] = scale;
      for (uint64_t r = r0; r < r1; ++r) {
        const uint16_t* row = src + r * cols;
        uint8_t* out = dst + r * cols;
        for (uint64_t c = c0; c < c1; ++c) out[c] = FloatToE4m3(Bf16ToFloat(row[c]) / scale);
      }
    }
  }
  return true;
}

}  // namespace ckpt
