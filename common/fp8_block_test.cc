#include "common/fp8_block.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace ckpt {
namespace {

uint16_t ToBf16(float f) {  // truncating: the tests pick values that are exact in bfloat16
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<uint16_t>(bits >> 16);
}

TEST_CASE("e4m3 encodes exact values, rounds to nearest even and saturates") {
  CHECK(FloatToE4m3(0.0f) == 0x00);
  CHECK(FloatToE4m3(-0.0f) == 0x80);
  CHECK(FloatToE4m3(1.0f) == 0x38);
  CHECK(FloatToE4m3(-2.0f) == 0xc0);
  CHECK(FloatToE4m3(448.0f) == 0x7e);
  CHECK(FloatToE4m3(-448.0f) == 0xfe);
  CHECK(FloatToE4m3(1000.0f) == 0x7e);
  CHECK(FloatToE4m3(INFINITY) == 0x7e);
  CHECK(FloatToE4m3(-INFINITY) == 0xfe);
  CHECK(FloatToE4m3(NAN) == 0x7f);
  CHECK(FloatToE4m3(std::ldexp(1.0f, -9)) == 0x01);    // smallest subnormal
  CHECK(FloatToE4m3(std::ldexp(7.0f, -9)) == 0x07);    // largest subnormal
  CHECK(FloatToE4m3(std::ldexp(1.0f, -6)) == 0x08);    // smallest normal
  CHECK(FloatToE4m3(std::ldexp(1.0f, -10)) == 0x00);   // half the smallest subnormal: tie to 0
  CHECK(FloatToE4m3(std::ldexp(3.0f, -10)) == 0x02);   // 1.5 steps: tie to even (2)
  CHECK(FloatToE4m3(std::ldexp(15.0f, -10)) == 0x08);  // 7.5 steps: tie to even (8, a normal)
  // Between 1 and 1.125 (steps of 1/8): 1.0625 ties to 1.0 (even), 1.1875 to 1.25.
  CHECK(FloatToE4m3(1.0625f) == 0x38);
  CHECK(FloatToE4m3(1.1875f) == 0x3a);
  CHECK(FloatToE4m3(1.0626f) == 0x39);
  // 15.5 steps of 2^-3 at exponent 0: rounds up into the next exponent (2.0).
  CHECK(FloatToE4m3(1.96875f) == 0x40);
  // 432 ties between 416 and 448 (steps of 32): to the even mantissa (448 = 0x7e, mantissa 6);
  // 400 ties between 384 (0x7c) and 416 (0x7d): to 384.
  CHECK(FloatToE4m3(432.0f) == 0x7e);
  CHECK(FloatToE4m3(400.0f) == 0x7c);
  CHECK(FloatToE4m3(424.0f) == 0x7d);  // nearer to 416
}

TEST_CASE("every e4m3 value round-trips") {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN
    const float f = E4m3ToFloat(static_cast<uint8_t>(b));
    INFO("bits " << b << " value " << f);
    CHECK(FloatToE4m3(f) == b);
  }
}

TEST_CASE("blocks: scale is amax / 448, zeros get 1, edges of odd shapes are their own blocks") {
  const uint64_t rows = 130, cols = 129;  // 2 x 2 blocks, the last ones 2 rows / 1 column
  std::vector<uint16_t> w(rows * cols, ToBf16(0.0f));
  w[0] = ToBf16(-3.5f);  // block (0, 0): amax 3.5
  w[5 * cols + 7] = ToBf16(1.0f);
  w[128] = ToBf16(2.0f);  // block (0, 1): its one column
  // block (1, 0) stays zero; block (1, 1):
  w[129 * cols + 128] = ToBf16(-0.5f);
  std::vector<uint8_t> q(rows * cols, 0xaa);
  std::vector<float> s(4, -1.0f);
  REQUIRE(QuantizeBf16BlocksE4m3(w.data(), rows, cols, q.data(), s.data()));
  CHECK(s[0] == 3.5f / 448.0f);
  CHECK(s[1] == 2.0f / 448.0f);
  CHECK(s[2] == 1.0f);
  CHECK(s[3] == 0.5f / 448.0f);
  CHECK(q[0] == FloatToE4m3(-3.5f / (3.5f / 448.0f)));
  CHECK(q[0] == 0xfe);  // the block's amax maps to -448
  CHECK(q[5 * cols + 7] == FloatToE4m3(1.0f / (3.5f / 448.0f)));
  CHECK(q[128] == 0x7e);
  CHECK(q[129 * cols + 128] == 0xfe);
  CHECK(q[129 * cols] == 0x00);
}

TEST_CASE("a NaN or infinity refuses the conversion") {
  std::vector<uint16_t> w(4 * 4, ToBf16(1.0f));
  std::vector<uint8_t> q(16);
  std::vector<float> s(1);
  w[5] = 0x7fc0;  // NaN
  CHECK_FALSE(QuantizeBf16BlocksE4m3(w.data(), 4, 4, q.data(), s.data()));
  w[5] = 0xff80;  // -inf
  CHECK_FALSE(QuantizeBf16BlocksE4m3(w.data(), 4, 4, q.data(), s.data()));
  w[5] = 0x7f7f;  // the largest finite bfloat16
  CHECK(QuantizeBf16BlocksE4m3(w.data(), 4, 4, q.data(), s.data()));
}

TEST_CASE("dequantized values are within half a step of the original") {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  const uint64_t rows = 200, cols = 300;
  std::vector<uint16_t> w(rows * cols);
  for (auto& v : w) v = ToBf16(dist(rng));
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> s(Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(cols));
  REQUIRE(QuantizeBf16BlocksE4m3(w.data(), rows, cols, q.data(), s.data()));
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t c = 0; c < cols; ++c) {
      const float scale = s[(r / 128) * Fp8ScaleBlocks(cols) + c / 128];
      const float x = Bf16ToFloat(w[r * cols + c]) / scale;
      const float back = E4m3ToFloat(q[r * cols + c]);
      // e4m3 has 3 mantissa bits: a relative error of at most 1/16, or half a subnormal step.
      REQUIRE(std::fabs(back - x) <= std::max(std::fabs(x) / 16.0f, std::ldexp(1.0f, -10)));
    }
  }
}

}  // namespace
}  // namespace ckpt
