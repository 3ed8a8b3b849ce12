#include "gpu/gpu_test_util.h"

#include <cstring>

#include "common/status_macros.h"
#include "gpu/cuda_status.h"

namespace ckpt::gpu::testing {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t Word(uint64_t seed, size_t index) { return Mix(seed * 0x100000001b3ULL ^ index); }

}  // namespace

void FillPattern(void* data, size_t bytes, uint64_t seed) {
  auto* out = static_cast<unsigned char*>(data);
  const size_t words = bytes / 8;
  for (size_t i = 0; i < words; ++i) {
    const uint64_t w = Word(seed, i);
    std::memcpy(out + 8 * i, &w, 8);
  }
  const uint64_t tail = Word(seed, words);
  std::memcpy(out + 8 * words, &tail, bytes % 8);
}

int64_t FirstMismatch(const void* data, size_t bytes, uint64_t seed) {
  const auto* in = static_cast<const unsigned char*>(data);
  const size_t words = bytes / 8;
  for (size_t i = 0; i <= words; ++i) {
    const uint64_t w = Word(seed, i);
    const size_t n = i < words ? 8 : bytes % 8;
    if (n != 0 && std::memcmp(in + 8 * i, &w, n) != 0) {
      for (size_t k = 0; k < n; ++k) {
        if (in[8 * i + k] != reinterpret_cast<const unsigned char*>(&w)[k]) {
          return static_cast<int64_t>(8 * i + k);
        }
      }
    }
  }
  return -1;
}

absl::Status CopyAndWait(void* dst, const void* src, size_t bytes, const CudaStream& stream,
                         CudaEvent& done, absl::Duration timeout) {
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream.get()));
  RETURN_IF_ERROR(done.Record(stream));
  return done.WaitWithDeadline(timeout);
}

int VisibleDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace ckpt::gpu::testing
