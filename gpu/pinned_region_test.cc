// H2D and D2H copies through pinned, registered host memory, ordered by events and awaited with
// deadlines; bit-exact on every visible GPU.
#include "gpu/pinned_region.h"

#include <cuda_runtime_api.h>
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <memory>

#include "gpu/cuda_event.h"
#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"
#include "gpu/gpu_test_util.h"

namespace ckpt::gpu {
namespace {

struct FreeDeleter {
  void operator()(void* p) const { free(p); }
};

bool IsPinned(const void* p) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

TEST_CASE("Pinned H2D and D2H round trip is bit-exact on every GPU") {
  const int count = testing::VisibleDeviceCount();
  REQUIRE(count >= 1);
  constexpr size_t kBytes = size_t{512} << 20;

  // Source: owning region (mmap + populate + register).
  absl::StatusOr<PinnedRegion> source = PinnedRegion::Create(kBytes);
  REQUIRE(source.ok());
  CHECK(source->owns_memory());
  CHECK(source->size() == kBytes);
  CHECK(IsPinned(source->data()));
  // Destination: memory the test owns, registered (the store / memfd case).
  std::unique_ptr<void, FreeDeleter> owned(aligned_alloc(4096, kBytes));
  REQUIRE(owned != nullptr);
  std::memset(owned.get(), 0, kBytes);
  absl::StatusOr<PinnedRegion> sink = PinnedRegion::Register(owned.get(), kBytes);
  REQUIRE(sink.ok());
  CHECK_FALSE(sink->owns_memory());
  CHECK(IsPinned(sink->data()));

  for (int device = 0; device < count; ++device) {
    INFO("device " << device);
    const uint64_t seed = 1000 + device;
    testing::FillPattern(source->data(), kBytes, seed);
    std::memset(sink->data(), 0, kBytes);
    absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Create(device, kBytes);
    absl::StatusOr<CudaStream> stream = CudaStream::Create(device);
    absl::StatusOr<CudaEvent> start = CudaEvent::Create(device, /*enable_timing=*/true);
    absl::StatusOr<CudaEvent> uploaded = CudaEvent::Create(device, /*enable_timing=*/true);
    absl::StatusOr<CudaEvent> downloaded = CudaEvent::Create(device, /*enable_timing=*/true);
    REQUIRE((buffer.ok() && stream.ok() && start.ok() && uploaded.ok() && downloaded.ok()));

    REQUIRE(start->Record(*stream).ok());
    REQUIRE(cudaMemcpyAsync(buffer->data(), source->data(), kBytes, cudaMemcpyHostToDevice,
                            stream->get()) == cudaSuccess);
    REQUIRE(uploaded->Record(*stream).ok());
    REQUIRE(cudaMemcpyAsync(sink->data(), buffer->data(), kBytes, cudaMemcpyDeviceToHost,
                            stream->get()) == cudaSuccess);
    REQUIRE(downloaded->Record(*stream).ok());
    REQUIRE(uploaded->WaitWithDeadline(absl::Seconds(30)).ok());
    REQUIRE(downloaded->WaitWithDeadline(absl::Seconds(30)).ok());

    CHECK(testing::FirstMismatch(sink->data(), kBytes, seed) == -1);
    absl::StatusOr<absl::Duration> h2d = CudaEvent::Elapsed(*start, *uploaded);
    absl::StatusOr<absl::Duration> d2h = CudaEvent::Elapsed(*uploaded, *downloaded);
    REQUIRE((h2d.ok() && d2h.ok()));
    WARN("device " << device << ": pinned H2D 512 MiB "
                   << kBytes / absl::ToDoubleSeconds(*h2d) / 1e9 << " GB/s, D2H "
                   << kBytes / absl::ToDoubleSeconds(*d2h) / 1e9 << " GB/s");
  }
}

TEST_CASE("Unregistering on destruction: the memory is pageable again") {
  std::unique_ptr<void, FreeDeleter> owned(aligned_alloc(4096, 1 << 20));
  {
    absl::StatusOr<PinnedRegion> pin = PinnedRegion::Register(owned.get(), 1 << 20);
    REQUIRE(pin.ok());
    CHECK(IsPinned(owned.get()));
    PinnedRegion moved = std::move(*pin);
    CHECK(pin->empty());
    CHECK(IsPinned(owned.get()));
  }
  CHECK_FALSE(IsPinned(owned.get()));
  // Registering again works (nothing was left registered).
  absl::StatusOr<PinnedRegion> again = PinnedRegion::Register(owned.get(), 1 << 20);
  CHECK(again.ok());
}

TEST_CASE("Registering a range twice fails with a status and leaves CUDA usable") {
  std::unique_ptr<void, FreeDeleter> owned(aligned_alloc(4096, 1 << 20));
  absl::StatusOr<PinnedRegion> first = PinnedRegion::Register(owned.get(), 1 << 20);
  REQUIRE(first.ok());
  absl::StatusOr<PinnedRegion> second = PinnedRegion::Register(owned.get(), 1 << 20);
  REQUIRE_FALSE(second.ok());
  INFO(second.status().ToString());
  CHECK(second.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(DeviceBuffer::Create(0, 1 << 20).ok());
}

}  // namespace
}  // namespace ckpt::gpu
