// The cuda backend's arena (HostArena::Kind::kPinned) made ready the way the daemon does it at
// start-up: mapped, populated piece by piece (Populate::kLater), used while still pageable, then
// registered whole with one cudaHostRegister. Copies whose host range spans a piece boundary must
// work before and after Pin (a range spanning two separate registrations would fail: the reason
// for one registration). Needs a GPU (tag gpu); prints the timings.
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/time/clock.h"
#include "daemon/store/host_arena.h"
#include "gpu/cuda_event.h"
#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"

namespace ckpt::daemon {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kCopy = uint64_t{256} << 20;

bool IsRegistered(const void* p) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

// Copies kCopy bytes from `src` to the device and back into `back`, each direction awaited with a
// deadline; returns the H2D rate in GB/s (0 on failure, with the error in `error`).
double RoundTrip(const uint8_t* src, uint8_t* back, gpu::DeviceBuffer& device,
                 gpu::CudaStream& stream, std::string* error) {
  auto done = gpu::CudaEvent::Create(0);
  if (!done.ok()) {
    *error = std::string(done.status().message());
    return 0;
  }
  const absl::Time start = absl::Now();
  cudaError_t e = cudaMemcpyAsync(device.data(), src, kCopy, cudaMemcpyHostToDevice, stream.get());
  absl::Status waited = e == cudaSuccess ? done->Record(stream) : absl::OkStatus();
  if (waited.ok() && e == cudaSuccess) waited = done->WaitWithDeadline(absl::Seconds(30));
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (e != cudaSuccess || !waited.ok()) {
    *error = e != cudaSuccess ? cudaGetErrorString(e) : std::string(waited.message());
    (void)cudaGetLastError();
    return 0;
  }
  e = cudaMemcpy(back, device.data(), kCopy, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) {
    *error = cudaGetErrorString(e);
    return 0;
  }
  return static_cast<double>(kCopy) / seconds / 1e9;
}

TEST_CASE("a pinned arena populated piece by piece: usable before Pin, pinned whole after") {
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  REQUIRE(devices >= 1);
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  const uint64_t size = 3 * kGiB + 12345;
  auto arena =
      HostArena::Create(HostArena::Kind::kPinned, size, {}, 8, HostArena::Populate::kLater);
  REQUIRE(arena.ok());
  HostArena& a = **arena;
  CHECK(a.ready_bytes() == 0);
  CHECK_FALSE(a.pinned());
  while (!a.populated()) {
    const absl::Time start = absl::Now();
    REQUIRE(a.PopulateNext(kGiB).ok());
    std::printf("populated up to %.2f GiB (%.3f s for the piece)\n",
                static_cast<double>(a.ready_bytes()) / kGiB,
                absl::ToDoubleSeconds(absl::Now() - start));
  }
  CHECK(a.ready_bytes() == size);
  CHECK(a.PopulateNext(kGiB).ok());

  auto device = gpu::DeviceBuffer::Create(0, kCopy);
  REQUIRE(device.ok());
  auto stream = gpu::CudaStream::Create(0);
  REQUIRE(stream.ok());
  std::string back(kCopy, '\0');
  uint8_t* across = a.data() + kGiB - kCopy / 2;  // spans the first piece boundary
  for (uint64_t i = 0; i < kCopy; ++i) across[i] = static_cast<uint8_t>(i * 131 + 7);

  // Before Pin: pageable memory, slower, but correct.
  CHECK_FALSE(IsRegistered(across));
  std::string error;
  const double pageable =
      RoundTrip(across, reinterpret_cast<uint8_t*>(back.data()), *device, *stream, &error);
  INFO(error);
  REQUIRE(pageable > 0);
  CHECK(std::memcmp(back.data(), across, kCopy) == 0);

  const absl::Time pin_start = absl::Now();
  REQUIRE(a.Pin().ok());
  std::printf("pinned %.2f GiB with one cudaHostRegister in %.3f s\n",
              static_cast<double>(size) / kGiB, absl::ToDoubleSeconds(absl::Now() - pin_start));
  CHECK(a.pinned());
  CHECK(a.Pin().ok());  // once pinned, a no-op
  CHECK(IsRegistered(a.data()));
  CHECK(IsRegistered(across));
  CHECK(IsRegistered(a.data() + size - 1));

  std::memset(back.data(), 0, kCopy);
  const double pinned =
      RoundTrip(across, reinterpret_cast<uint8_t*>(back.data()), *device, *stream, &error);
  INFO(error);
  REQUIRE(pinned > 0);
  CHECK(std::memcmp(back.data(), across, kCopy) == 0);
  std::printf("H2D of %llu MiB across a piece boundary: %.1f GB/s pageable, %.1f GB/s pinned\n",
              static_cast<unsigned long long>(kCopy >> 20), pageable, pinned);
}

TEST_CASE("Populate::kNow pins at Create, as before") {
  auto arena = HostArena::Create(HostArena::Kind::kPinned, 64 << 20, {}, 4);
  REQUIRE(arena.ok());
  CHECK((*arena)->populated());
  CHECK((*arena)->pinned());
  CHECK(IsRegistered((*arena)->data() + (32 << 20)));
}

}  // namespace
}  // namespace ckpt::daemon
