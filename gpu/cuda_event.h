// CudaEvent: owns one CUDA event, with a host wait that always has a deadline.
//
//   ASSIGN_OR_RETURN(CudaEvent done, CudaEvent::Create(device));
//   RETURN_IF_ERROR(done.Record(stream));
//   RETURN_IF_ERROR(done.WaitWithDeadline(absl::Seconds(10)));  // DEADLINE_EXCEEDED if still busy
//
// Contract:
// - Owns the cudaEvent_t; destruction calls cudaEventDestroy (returns at once, even if the event is
//   still pending: CUDA releases it when it completes).
// - Move-only; a default-constructed or moved-from CudaEvent is empty and every operation on it
//   returns FAILED_PRECONDITION.
// - An event never recorded counts as complete (CUDA's semantics).
// - Waits never block inside CUDA: they poll cudaEventQuery with a backoff (yield, then sleeps of
//   10 us doubling to 1 ms), so a hung GPU or a peer that never arrives costs the waiter at most
//   its deadline, and the thread stays responsive to cancellation by deadline. The price is up to
//   ~1 ms of extra latency on long waits.
// - Thread-safety: Query and the waits may be called from several threads at once; Record must not
//   race with other calls on the same event (CUDA's rule).
// - Create() leaves the calling thread's current device unchanged.
#ifndef CKPT_GPU_CUDA_EVENT_H_
#define CKPT_GPU_CUDA_EVENT_H_

#include <cuda_runtime_api.h>

#include <chrono>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gpu/cuda_stream.h"

namespace ckpt::gpu {

class CudaEvent {
 public:
  CudaEvent() = default;  // empty
  ~CudaEvent();

  CudaEvent(CudaEvent&& other) noexcept;
  CudaEvent& operator=(CudaEvent&& other) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  // Creates an event on `device`. Timing is off by default (cudaEventDisableTiming: cheaper to
  // record and to query); turn it on only for events passed to Elapsed(). No cudaEventBlockingSync:
  // we poll.
  static absl::StatusOr<CudaEvent> Create(int device, bool enable_timing = false);

  // cudaEventRecord on `stream`, which must belong to the event's device.
  absl::Status Record(cudaStream_t stream);
  absl::Status Record(const CudaStream& stream) { return Record(stream.get()); }

  // Makes `stream` wait on the GPU for this event (cudaStreamWaitEvent): orders work across streams
  // and devices without blocking the host.
  absl::Status StreamWait(cudaStream_t stream) const;

  // true when the work before the last Record has completed; false while pending; an error status
  // when that work failed.
  absl::StatusOr<bool> Query() const;

  // Polls until complete (OK), failed (that error), or until `timeout` / `deadline` passes
  // (DEADLINE_EXCEEDED). A zero or negative timeout checks once.
  absl::Status WaitWithDeadline(absl::Duration timeout) const;
  absl::Status WaitWithDeadline(std::chrono::nanoseconds timeout) const {
    return WaitWithDeadline(absl::FromChrono(timeout));
  }
  absl::Status WaitUntil(absl::Time deadline) const;

  // Time between two completed timing-enabled events (cudaEventElapsedTime, ~0.5 us resolution).
  static absl::StatusOr<absl::Duration> Elapsed(const CudaEvent& start, const CudaEvent& end);

  bool empty() const { return event_ == nullptr; }
  cudaEvent_t get() const { return event_; }
  int device() const { return device_; }

 private:
  CudaEvent(cudaEvent_t event, int device) : event_(event), device_(device) {}
  void Reset();

  cudaEvent_t event_ = nullptr;
  int device_ = -1;
};

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_CUDA_EVENT_H_
