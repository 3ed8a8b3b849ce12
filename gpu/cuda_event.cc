#include "gpu/cuda_event.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/cuda_status.h"
#include "gpu/scoped_device.h"

namespace ckpt::gpu {
namespace {

absl::Status EmptyError(const char* what) {
  return absl::FailedPreconditionError(absl::StrCat("CudaEvent::", what, " on an empty event"));
}

}  // namespace

absl::StatusOr<CudaEvent> CudaEvent::Create(int device, bool enable_timing) {
  ASSIGN_OR_RETURN(ScopedDevice scope, ScopedDevice::Create(device));
  cudaEvent_t event = nullptr;
  CUDA_RETURN_IF_ERROR(
      cudaEventCreateWithFlags(&event, enable_timing ? cudaEventDefault : cudaEventDisableTiming));
  return CudaEvent(event, device);
}

CudaEvent::~CudaEvent() { Reset(); }

CudaEvent::CudaEvent(CudaEvent&& other) noexcept
    : event_(std::exchange(other.event_, nullptr)), device_(std::exchange(other.device_, -1)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  if (this != &other) {
    Reset();
    event_ = std::exchange(other.event_, nullptr);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

void CudaEvent::Reset() {
  if (event_ != nullptr && cudaEventDestroy(event_) != cudaSuccess) (void)cudaGetLastError();
  event_ = nullptr;
  device_ = -1;
}

absl::Status CudaEvent::Record(cudaStream_t stream) {
  if (event_ == nullptr) return EmptyError("Record");
  CUDA_RETURN_IF_ERROR(cudaEventRecord(event_, stream));
  return absl::OkStatus();
}

absl::Status CudaEvent::StreamWait(cudaStream_t stream) const {
  if (event_ == nullptr) return EmptyError("StreamWait");
  CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, event_, cudaEventWaitDefault));
  return absl::OkStatus();
}

absl::StatusOr<bool> CudaEvent::Query() const {
  if (event_ == nullptr) return EmptyError("Query");
  const cudaError_t error = cudaEventQuery(event_);
  if (error == cudaSuccess) return true;
  if (error == cudaErrorNotReady) {
    // cudaErrorNotReady is a normal answer, but the runtime still stores it as the thread's last
    // error; drop it so it does not surface from an unrelated call.
    (void)cudaGetLastError();
    return false;
  }
  return CudaStatus(error, "cudaEventQuery(event_)", __FILE__, __LINE__);
}

absl::Status CudaEvent::WaitWithDeadline(absl::Duration timeout) const {
  return WaitUntil(absl::Now() + timeout);
}

absl::Status CudaEvent::WaitUntil(absl::Time deadline) const {
  if (event_ == nullptr) return EmptyError("WaitUntil");
  // Short waits (a few microseconds: small copies, a kernel finishing) are caught by the yields;
  // long ones (large copies, collectives) settle at 1 ms sleeps, which costs a negligible share of
  // the waiting thread's CPU and at most 1 ms of latency.
  constexpr int kYields = 64;
  constexpr absl::Duration kFirstSleep = absl::Microseconds(10);
  constexpr absl::Duration kMaxSleep = absl::Milliseconds(1);
  const absl::Time start = absl::Now();
  absl::Duration sleep = kFirstSleep;
  for (int attempt = 0;; ++attempt) {
    ASSIGN_OR_RETURN(bool done, Query());
    if (done) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("CudaEvent on device ", device_, " not complete after ",
                       absl::FormatDuration(now - start), " (deadline passed)"));
    }
    if (attempt < kYields) {
      std::this_thread::yield();
      continue;
    }
    absl::SleepFor(std::min(sleep, deadline - now));
    sleep = std::min(sleep * 2, kMaxSleep);
  }
}

absl::StatusOr<absl::Duration> CudaEvent::Elapsed(const CudaEvent& start, const CudaEvent& end) {
  if (start.event_ == nullptr || end.event_ == nullptr) return EmptyError("Elapsed");
  float ms = 0;
  CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start.event_, end.event_));
  return absl::Microseconds(static_cast<double>(ms) * 1000.0);
}

}  // namespace ckpt::gpu
