#include "gpu/device_buffer.h"

#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <utility>
#include <vector>

#include "gpu/cuda_event.h"
#include "gpu/cuda_stream.h"
#include "gpu/gpu_test_util.h"

namespace ckpt::gpu {
namespace {

TEST_CASE("DeviceBuffer allocates on every visible device and holds data") {
  const int count = testing::VisibleDeviceCount();
  REQUIRE(count >= 1);
  for (int device = 0; device < count; ++device) {
    INFO("device " << device);
    constexpr size_t kBytes = (4 << 20) + 3;  // odd size on purpose
    absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Create(device, kBytes);
    REQUIRE(buffer.ok());
    CHECK(buffer->device() == device);
    CHECK(buffer->size() == kBytes);
    CHECK(reinterpret_cast<uintptr_t>(buffer->data()) % 256 == 0);
    cudaPointerAttributes attributes{};
    REQUIRE(cudaPointerGetAttributes(&attributes, buffer->data()) == cudaSuccess);
    CHECK(attributes.type == cudaMemoryTypeDevice);
    CHECK(attributes.device == device);

    absl::StatusOr<CudaStream> stream = CudaStream::Create(device);
    absl::StatusOr<CudaEvent> done = CudaEvent::Create(device);
    REQUIRE((stream.ok() && done.ok()));
    std::vector<unsigned char> in(kBytes), out(kBytes, 0);
    testing::FillPattern(in.data(), kBytes, 11 + device);
    REQUIRE(testing::CopyAndWait(buffer->data(), in.data(), kBytes, *stream, *done).ok());
    REQUIRE(testing::CopyAndWait(out.data(), buffer->data(), kBytes, *stream, *done).ok());
    CHECK(testing::FirstMismatch(out.data(), kBytes, 11 + device) == -1);
  }
}

TEST_CASE("An absurd allocation fails with RESOURCE_EXHAUSTED and the next one works") {
  absl::StatusOr<DeviceBuffer> huge = DeviceBuffer::Create(0, size_t{1} << 50);  // 1 PiB
  REQUIRE_FALSE(huge.ok());
  INFO(huge.status().ToString());
  CHECK(huge.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(huge.status().message()).find("cudaMalloc") != std::string::npos);
  CHECK(cudaGetLastError() == cudaSuccess);  // cleared
  absl::StatusOr<DeviceBuffer> small = DeviceBuffer::Create(0, 1 << 20);
  CHECK(small.ok());
}

TEST_CASE("An invalid device fails with INVALID_ARGUMENT") {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Create(testing::VisibleDeviceCount(), 1024);
  REQUIRE_FALSE(buffer.ok());
  CHECK(buffer.status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Moving a DeviceBuffer transfers ownership; destruction frees the memory") {
  size_t free_before = 0, free_after = 0, total = 0;
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  constexpr size_t kBytes = size_t{2} << 30;  // 2 GiB: well above allocator noise
  {
    absl::StatusOr<DeviceBuffer> a = DeviceBuffer::Create(0, kBytes);
    REQUIRE(a.ok());
    void* data = a->data();
    DeviceBuffer b = std::move(*a);
    CHECK(a->empty());
    CHECK(b.data() == data);
    REQUIRE(cudaMemGetInfo(&free_before, &total) == cudaSuccess);
    b = DeviceBuffer();  // frees
    REQUIRE(cudaMemGetInfo(&free_after, &total) == cudaSuccess);
  }
  CHECK(free_after >= free_before + kBytes - (64 << 20));
}

}  // namespace
}  // namespace ckpt::gpu
