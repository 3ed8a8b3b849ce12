#include "gpu/cuda_event.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"
#include "gpu/gpu_test_util.h"

namespace ckpt::gpu {
namespace {

// A host function that holds its stream until released: lets the tests keep work pending for as
// long as they like without a kernel.
void CUDART_CB HoldUntilReleased(void* flag) {
  auto* released = static_cast<std::atomic<bool>*>(flag);
  while (!released->load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
}

TEST_CASE("An event never recorded is complete") {
  absl::StatusOr<CudaEvent> event = CudaEvent::Create(0);
  REQUIRE(event.ok());
  absl::StatusOr<bool> done = event->Query();
  REQUIRE(done.ok());
  CHECK(*done);
  CHECK(event->WaitWithDeadline(absl::ZeroDuration()).ok());
}

TEST_CASE("WaitWithDeadline times out on pending work, then succeeds once it completes") {
  absl::StatusOr<CudaStream> stream = CudaStream::Create(0);
  REQUIRE(stream.ok());
  absl::StatusOr<CudaEvent> event = CudaEvent::Create(0);
  REQUIRE(event.ok());
  std::atomic<bool> released{false};
  REQUIRE(cudaLaunchHostFunc(stream->get(), HoldUntilReleased, &released) == cudaSuccess);
  REQUIRE(event->Record(*stream).ok());

  const absl::Time start = absl::Now();
  absl::Status timed_out = event->WaitWithDeadline(absl::Milliseconds(50));
  const absl::Duration waited = absl::Now() - start;
  INFO(timed_out.ToString() << " after " << absl::FormatDuration(waited));
  CHECK(timed_out.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(waited >= absl::Milliseconds(50));
  CHECK(waited < absl::Seconds(2));
  absl::StatusOr<bool> done = event->Query();
  REQUIRE(done.ok());
  CHECK_FALSE(*done);
  absl::StatusOr<bool> stream_done = stream->Query();
  REQUIRE(stream_done.ok());
  CHECK_FALSE(*stream_done);
  CHECK(cudaGetLastError() == cudaSuccess);  // "not ready" did not leak as an error

  // The std::chrono overload too.
  CHECK(event->WaitWithDeadline(std::chrono::milliseconds(5)).code() ==
        absl::StatusCode::kDeadlineExceeded);

  released = true;
  CHECK(event->WaitWithDeadline(absl::Seconds(10)).ok());
  CHECK(*event->Query());
}

TEST_CASE("StreamWait orders a second stream after the first without blocking the host") {
  absl::StatusOr<CudaStream> first = CudaStream::Create(0);
  absl::StatusOr<CudaStream> second = CudaStream::Create(0);
  absl::StatusOr<CudaEvent> first_done = CudaEvent::Create(0);
  absl::StatusOr<CudaEvent> second_done = CudaEvent::Create(0);
  REQUIRE((first.ok() && second.ok() && first_done.ok() && second_done.ok()));
  std::atomic<bool> released{false};
  REQUIRE(cudaLaunchHostFunc(first->get(), HoldUntilReleased, &released) == cudaSuccess);
  REQUIRE(first_done->Record(*first).ok());
  REQUIRE(first_done->StreamWait(second->get()).ok());
  REQUIRE(second_done->Record(*second).ok());
  CHECK(second_done->WaitWithDeadline(absl::Milliseconds(20)).code() ==
        absl::StatusCode::kDeadlineExceeded);
  released = true;
  CHECK(second_done->WaitWithDeadline(absl::Seconds(10)).ok());
  CHECK(first_done->WaitWithDeadline(absl::Seconds(10)).ok());
}

TEST_CASE("Timing events measure device work") {
  absl::StatusOr<CudaStream> stream = CudaStream::Create(0);
  absl::StatusOr<CudaEvent> start = CudaEvent::Create(0, /*enable_timing=*/true);
  absl::StatusOr<CudaEvent> end = CudaEvent::Create(0, /*enable_timing=*/true);
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Create(0, 256 << 20);
  REQUIRE((stream.ok() && start.ok() && end.ok() && buffer.ok()));
  REQUIRE(start->Record(*stream).ok());
  REQUIRE(cudaMemsetAsync(buffer->data(), 0x5a, buffer->size(), stream->get()) == cudaSuccess);
  REQUIRE(end->Record(*stream).ok());
  REQUIRE(end->WaitWithDeadline(absl::Seconds(10)).ok());
  absl::StatusOr<absl::Duration> elapsed = CudaEvent::Elapsed(*start, *end);
  REQUIRE(elapsed.ok());
  CHECK(*elapsed > absl::ZeroDuration());
  WARN("memset 256 MiB: " << absl::FormatDuration(*elapsed) << " ("
                          << (256.0 * (1 << 20)) / absl::ToDoubleSeconds(*elapsed) / 1e9
                          << " GB/s)");
  // Elapsed between events without timing is an error, reported as a status.
  absl::StatusOr<CudaEvent> untimed = CudaEvent::Create(0);
  REQUIRE(untimed.ok());
  REQUIRE(untimed->Record(*stream).ok());
  REQUIRE(untimed->WaitWithDeadline(absl::Seconds(10)).ok());
  CHECK_FALSE(CudaEvent::Elapsed(*start, *untimed).ok());
  CHECK(cudaGetLastError() == cudaSuccess);
}

}  // namespace
}  // namespace ckpt::gpu
