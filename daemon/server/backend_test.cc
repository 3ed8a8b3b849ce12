#include "daemon/server/backend.h"

#include <catch2/catch.hpp>
#include <string>

namespace ckpt::daemon {
namespace {

gpu::GpuProbe NoGpu() {
  gpu::GpuProbe p;
  p.no_gpu_reason = "cudaGetDeviceCount: no CUDA-capable device is detected";
  return p;
}

gpu::GpuProbe OneGpu() {
  gpu::GpuProbe p;
  p.gpus.push_back(
      {0, "NVIDIA H200", "GPU-00000000-0000-0000-0000-000000000000", 1ull << 37, "0000:1b:00.0"});
  return p;
}

TEST_CASE("auto picks cuda only when a GPU is visible") {
  CHECK(*ResolveBackend(BackendKind::kAuto, OneGpu()) == BackendKind::kCuda);
  CHECK(*ResolveBackend(BackendKind::kAuto, NoGpu()) == BackendKind::kHost);
}

TEST_CASE("host is always possible") {
  CHECK(*ResolveBackend(BackendKind::kHost, OneGpu()) == BackendKind::kHost);
  CHECK(*ResolveBackend(BackendKind::kHost, NoGpu()) == BackendKind::kHost);
}

TEST_CASE("cuda without a GPU fails with the probe's reason") {
  CHECK(*ResolveBackend(BackendKind::kCuda, OneGpu()) == BackendKind::kCuda);
  auto r = ResolveBackend(BackendKind::kCuda, NoGpu());
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(r.status().message()).find("no CUDA-capable device") != std::string::npos);
}

}  // namespace
}  // namespace ckpt::daemon
