#include "gpu/cuda_status.h"

#include <catch2/catch.hpp>
#include <string>

#include "absl/status/statusor.h"

namespace ckpt::gpu {
namespace {

absl::Status FailsWith(cudaError_t error) {
  CUDA_RETURN_IF_ERROR(error);
  return absl::OkStatus();
}

absl::StatusOr<int> ValueOrError(cudaError_t error) {
  CUDA_RETURN_IF_ERROR(error);
  return 7;
}

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

TEST_CASE("CudaStatus maps error classes to canonical codes") {
  CHECK(CudaStatus(cudaSuccess, "x", "f.cc", 1).ok());
  CHECK(CudaStatus(cudaErrorNoDevice, "x", "f.cc", 1).code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(CudaStatus(cudaErrorInsufficientDriver, "x", "f.cc", 1).code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(CudaStatus(cudaErrorMemoryAllocation, "x", "f.cc", 1).code() ==
        absl::StatusCode::kResourceExhausted);
  CHECK(CudaStatus(cudaErrorInvalidValue, "x", "f.cc", 1).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(CudaStatus(cudaErrorInvalidDevice, "x", "f.cc", 1).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(CudaStatus(cudaErrorIllegalAddress, "x", "f.cc", 1).code() == absl::StatusCode::kInternal);
  CHECK(IsStickyError(cudaErrorIllegalAddress));
  CHECK(IsStickyError(cudaErrorLaunchFailure));
  CHECK_FALSE(IsStickyError(cudaSuccess));
  CHECK_FALSE(IsStickyError(cudaErrorNotReady));
  CHECK_FALSE(IsStickyError(cudaErrorInvalidValue));
  CHECK(CudaStatus(cudaErrorLaunchFailure, "x", "f.cc", 1).code() == absl::StatusCode::kInternal);
}

TEST_CASE("CUDA_RETURN_IF_ERROR names the call, the place and the error") {
  const absl::Status s = FailsWith(cudaErrorMemoryAllocation);
  REQUIRE(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(s, "CUDA_RETURN_IF_ERROR") == false);
  CHECK(Contains(s, "error at "));  // the stringified argument, then the place
  CHECK(Contains(s, "gpu/cuda_status_test.cc:"));
  CHECK(Contains(s, "cudaErrorMemoryAllocation"));
  CHECK(Contains(s, "out of memory"));

  CHECK(FailsWith(cudaSuccess).ok());
  absl::StatusOr<int> v = ValueOrError(cudaSuccess);
  REQUIRE(v.ok());
  CHECK(*v == 7);
  CHECK(ValueOrError(cudaErrorInvalidValue).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("A real runtime call gives OK on a GPU machine or FAILED_PRECONDITION without one") {
  auto count_devices = []() -> absl::StatusOr<int> {
    int count = 0;
    CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
    return count;
  };
  absl::StatusOr<int> count = count_devices();
  if (count.ok()) {
    CHECK(*count >= 1);
  } else {
    INFO(count.status().ToString());
    CHECK(count.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(Contains(count.status(), "cudaGetDeviceCount(&count)"));
  }
}

TEST_CASE("CudaErrorText works without a driver") {
  CHECK(CudaErrorText(cudaErrorInvalidValue).rfind("cudaErrorInvalidValue: ", 0) == 0);
}

}  // namespace
}  // namespace ckpt::gpu
