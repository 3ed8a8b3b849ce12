// The cuda FP8 conversion bit for bit against the CPU's (common/fp8_block.h), on shapes that are
// not multiples of 128, with zero blocks, subnormals and large values; a NaN is reported.
#include "gpu/fp8_kernel.h"

#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/fp8_block.h"
#include "gpu/cuda_event.h"
#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"
#include "gpu/gpu_test_util.h"

namespace ckpt::gpu {
namespace {

std::vector<uint16_t> RandomBf16(uint64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::uniform_int_distribution<int> kind(0, 99);
  std::vector<uint16_t> out(n);
  for (uint64_t i = 0; i < n; ++i) {
    float f = dist(rng);
    const int k = kind(rng);
    if (k < 5)
      f *= 1e-38f;  // bfloat16 subnormals
    else if (k < 10)
      f *= 1e30f;  // large
    else if (k < 15)
      f = 0.0f;
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
  return out;
}

struct Result {
  std::vector<uint8_t> q;
  std::vector<float> scales;
  int nonfinite = 0;
};

Result OnGpu(const std::vector<uint16_t>& w, uint64_t rows, uint64_t cols) {
  const uint64_t n = rows * cols;
  const uint64_t scale_count = Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(cols);
  auto src = DeviceBuffer::Create(0, n * 2 + 1);
  auto dst = DeviceBuffer::Create(0, n + 1);
  auto scales = DeviceBuffer::Create(0, scale_count * 4 + 4);
  auto flag = DeviceBuffer::Create(0, sizeof(int));
  auto stream = CudaStream::Create(0);
  auto done = CudaEvent::Create(0);
  REQUIRE((src.ok() && dst.ok() && scales.ok() && flag.ok() && stream.ok() && done.ok()));
  REQUIRE(cudaMemset(flag->data(), 0, sizeof(int)) == cudaSuccess);
  REQUIRE(testing::CopyAndWait(src->data(), w.data(), n * 2, *stream, *done).ok());
  REQUIRE(LaunchFp8BlockQuantize(
              static_cast<const uint16_t*>(src->data()), rows, cols,
              static_cast<uint8_t*>(dst->data()), static_cast<float*>(scales->data()),
              static_cast<int*>(flag->data()), 42, stream->get()) == cudaSuccess);
  Result r;
  r.q.resize(n);
  r.scales.resize(scale_count);
  REQUIRE(testing::CopyAndWait(r.q.data(), dst->data(), n, *stream, *done).ok());
  REQUIRE(
      testing::CopyAndWait(r.scales.data(), scales->data(), scale_count * 4, *stream, *done).ok());
  REQUIRE(testing::CopyAndWait(&r.nonfinite, flag->data(), sizeof(int), *stream, *done).ok());
  return r;
}

TEST_CASE("the GPU's FP8 blocks equal the CPU's bit for bit") {
  REQUIRE(testing::VisibleDeviceCount() >= 1);
  const std::vector<std::pair<uint64_t, uint64_t>> shapes = {
      {1, 1}, {3, 5}, {128, 128}, {129, 127}, {300, 257}, {256, 1024}, {1000, 130}, {127, 4097}};
  uint32_t seed = 1;
  for (const auto& [rows, cols] : shapes) {
    INFO(rows << " x " << cols);
    std::vector<uint16_t> w = RandomBf16(rows * cols, seed++);
    // A block of zeros where there is room for one.
    if (rows >= 256 && cols >= 256) {
      for (uint64_t r = 128; r < 256; ++r) std::fill_n(&w[r * cols + 128], 128, uint16_t{0});
    }
    std::vector<uint8_t> q(rows * cols);
    std::vector<float> s(Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(cols));
    REQUIRE(QuantizeBf16BlocksE4m3(w.data(), rows, cols, q.data(), s.data()));
    const Result g = OnGpu(w, rows, cols);
    CHECK(g.nonfinite == 0);
    uint64_t differing = 0;
    for (uint64_t i = 0; i < q.size(); ++i) differing += q[i] != g.q[i] ? 1 : 0;
    CHECK(differing == 0);
    CHECK(std::memcmp(s.data(), g.scales.data(), s.size() * 4) == 0);
    if (rows >= 256 && cols >= 256) CHECK(g.scales[Fp8ScaleBlocks(cols) + 1] == 1.0f);
  }
}

TEST_CASE("a NaN or infinity on the GPU sets the mark") {
  REQUIRE(testing::VisibleDeviceCount() >= 1);
  std::vector<uint16_t> w = RandomBf16(200 * 300, 99);
  w[150 * 300 + 299] = 0x7f80;  // +inf, in the last block
  CHECK(OnGpu(w, 200, 300).nonfinite == 42);
  w[150 * 300 + 299] = 0x7fc1;  // NaN
  CHECK(OnGpu(w, 200, 300).nonfinite == 42);
}

}  // namespace
}  // namespace ckpt::gpu
