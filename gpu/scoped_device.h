// ScopedDevice: makes a CUDA device current on the calling thread and restores the previous one.
//
//   ASSIGN_OR_RETURN(ScopedDevice scope, ScopedDevice::Create(2));
//   ... runtime calls here act on device 2 ...
//   // scope's destruction makes the previously current device current again.
//
// Contract:
// - The current device is per host thread: create, use and destroy a ScopedDevice on one thread.
//   Not thread-safe (an object must not be shared between threads).
// - Move-only. A default-constructed or moved-from ScopedDevice is empty: it restores nothing.
// - Create() on failure leaves the current device unchanged and returns the CUDA error.
// - Destruction restores the previous device; a failure to restore is ignored (the destructor
//   cannot report it, and cudaSetDevice only fails for an invalid ordinal, which we read from CUDA
//   itself). When the new device equals the current one, nothing is set or restored.
#ifndef CKPT_GPU_SCOPED_DEVICE_H_
#define CKPT_GPU_SCOPED_DEVICE_H_

#include "absl/status/statusor.h"

namespace ckpt::gpu {

class ScopedDevice {
 public:
  ScopedDevice() = default;  // empty
  ~ScopedDevice();

  ScopedDevice(ScopedDevice&& other) noexcept;
  ScopedDevice& operator=(ScopedDevice&& other) noexcept;
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

  // Makes `device` current (cudaSetDevice) after reading the current one (cudaGetDevice).
  // INVALID_ARGUMENT for a negative ordinal or one CUDA rejects; FAILED_PRECONDITION without a
  // driver or device.
  static absl::StatusOr<ScopedDevice> Create(int device);

  bool empty() const { return device_ < 0; }
  // The device made current; -1 when empty.
  int device() const { return device_; }
  // The device that will be restored; -1 when empty.
  int previous() const { return previous_; }

 private:
  ScopedDevice(int device, int previous) : device_(device), previous_(previous) {}
  void Restore();

  int device_ = -1;
  int previous_ = -1;
};

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_SCOPED_DEVICE_H_
