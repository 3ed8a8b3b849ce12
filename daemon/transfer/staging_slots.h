// SlotSet: the staging slots of one GPU, or of the host on the host backend.
//
// An update moves a version through these slots bucket by bucket: the daemon fills a slot, the
// workers of that GPU read it in place and ack, and the slot is filled again. They are created once
// at start-up and shared with each worker once, when it attaches:
// - cuda: one device allocation per slot (cudaMalloc), its cudaIpcMemHandle_t exported once;
// - host: one memfd per slot (a HostArena of kind kShared), sent with SCM_RIGHTS.
//
// Thread-safety: immutable after creation; the slot memory is written by the update pipeline and
// read by workers, ordered by the protocol (BucketReady after the fill, the next fill after acks).
#ifndef CKPT_DAEMON_TRANSFER_STAGING_SLOTS_H_
#define CKPT_DAEMON_TRANSFER_STAGING_SLOTS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/store/host_arena.h"
#include "gpu/device_buffer.h"

namespace ckpt::daemon {

class SlotSet {
 public:
  // `count` slots of `slot_bytes` (> 0) each. Errors name the slot, the size and the device.
  static absl::StatusOr<std::unique_ptr<SlotSet>> CreateHost(int count, uint64_t slot_bytes);
  static absl::StatusOr<std::unique_ptr<SlotSet>> CreateCuda(int device, int count,
                                                             uint64_t slot_bytes);

  int count() const { return count_; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  // CUDA device ordinal; -1 for host slots.
  int device() const { return device_; }
  // Host address (host) or device address (cuda) of slot i.
  uint8_t* data(int i) const;
  // host: the memfd of each slot (owned here); empty for cuda.
  std::vector<int> memfds() const;
  // cuda: the raw cudaIpcMemHandle_t bytes of slot i; empty for host.
  const std::string& ipc_handle(int i) const { return handles_[i]; }

 private:
  SlotSet() = default;

  int count_ = 0;
  uint64_t slot_bytes_ = 0;
  int device_ = -1;
  std::vector<std::unique_ptr<HostArena>> host_;
  std::vector<gpu::DeviceBuffer> device_buffers_;
  std::vector<std::string> handles_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_TRANSFER_STAGING_SLOTS_H_
