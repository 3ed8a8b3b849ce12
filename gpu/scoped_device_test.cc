#include "gpu/scoped_device.h"

#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <utility>

namespace ckpt::gpu {
namespace {

int Current() {
  int device = -1;
  REQUIRE(cudaGetDevice(&device) == cudaSuccess);
  return device;
}

int Count() {
  int count = 0;
  REQUIRE(cudaGetDeviceCount(&count) == cudaSuccess);
  REQUIRE(count >= 1);
  return count;
}

TEST_CASE("ScopedDevice sets the device and restores the previous one") {
  const int last = Count() - 1;
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  {
    absl::StatusOr<ScopedDevice> scope = ScopedDevice::Create(last);
    REQUIRE(scope.ok());
    CHECK(scope->device() == last);
    CHECK(scope->previous() == 0);
    CHECK(Current() == last);
    {
      absl::StatusOr<ScopedDevice> inner = ScopedDevice::Create(0);
      REQUIRE(inner.ok());
      CHECK(Current() == 0);
    }
    CHECK(Current() == last);
  }
  CHECK(Current() == 0);
  // The same, starting from the last device.
  REQUIRE(cudaSetDevice(last) == cudaSuccess);
  {
    absl::StatusOr<ScopedDevice> scope = ScopedDevice::Create(0);
    REQUIRE(scope.ok());
    CHECK(Current() == 0);
  }
  CHECK(Current() == last);
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
}

TEST_CASE("A moved ScopedDevice restores once, from its new owner") {
  const int last = Count() - 1;
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  ScopedDevice outer;
  {
    absl::StatusOr<ScopedDevice> scope = ScopedDevice::Create(last);
    REQUIRE(scope.ok());
    outer = std::move(*scope);
    CHECK(scope->empty());
  }
  CHECK(Current() == last);  // the moved-from owner restored nothing
  outer = ScopedDevice();    // move-assigning an empty owner restores
  CHECK(Current() == 0);
}

TEST_CASE("ScopedDevice::Create with a bad ordinal fails and leaves the device unchanged") {
  const int count = Count();
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  absl::StatusOr<ScopedDevice> scope = ScopedDevice::Create(count);
  REQUIRE_FALSE(scope.ok());
  INFO(scope.status().ToString());
  CHECK(scope.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(Current() == 0);
  CHECK(cudaGetLastError() == cudaSuccess);
}

}  // namespace
}  // namespace ckpt::gpu
