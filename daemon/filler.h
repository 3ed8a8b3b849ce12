// Filler: how one bucket of an update plan gets from the host store into every slot set: a
// plain memcpy on the host backend, per-GPU uploads plus (several GPUs) a grouped NCCL broadcast
// on the cuda backend. Chosen once, when the update engine is created; the engine drives it
// (fill bucket k into slot k % K, poll Filled, Drain before slots are reused after an error).
#ifndef CKPT_DAEMON_FILLER_H_
#define CKPT_DAEMON_FILLER_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/staging_slots.h"
#include "daemon/update_plan.h"

namespace ckpt::daemon {

// Fills slot `slot` of every slot set with one bucket of the plan. Fill enqueues (cuda) or copies
// (host); Filled polls whether the bucket is complete in every set.
class Filler {
 public:
  virtual ~Filler() = default;
  virtual absl::Status Fill(const Bucket& bucket, int slot, const uint8_t* arena) = 0;
  virtual absl::StatusOr<bool> Filled(int slot) = 0;
  // Waits for all enqueued work (before an error return leaves slots to be reused).
  virtual absl::Status Drain(absl::Time deadline) = 0;
};

// The host backend's: copies each run of the bucket into the one slot set with memcpy; Filled is
// true at once.
std::unique_ptr<Filler> MakeHostFiller(const SlotSet* slots);

// The cuda backend's: per GPU, a copy stream and an NCCL stream with one event pair per slot; with
// several GPUs, a communicator over them (its collectives bounded by `timeout`).
absl::StatusOr<std::unique_ptr<Filler>> MakeCudaFiller(
    const std::vector<std::unique_ptr<SlotSet>>& slots, absl::Duration timeout);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_FILLER_H_
