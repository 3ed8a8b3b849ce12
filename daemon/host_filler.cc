#include <cstring>
#include <memory>

#include "daemon/filler.h"

namespace ckpt::daemon {
namespace {

class HostFiller final : public Filler {
 public:
  explicit HostFiller(const SlotSet* slots) : slots_(slots) {}
  absl::Status Fill(const Bucket& bucket, int slot, const uint8_t* arena) override {
    uint8_t* base = slots_->data(slot);
    for (const Segment& segment : bucket.segments) {
      for (const Copy& c : segment.copies) {
        std::memcpy(base + c.slot_offset, arena + c.host_offset, c.bytes);
      }
    }
    return absl::OkStatus();
  }
  absl::StatusOr<bool> Filled(int) override { return true; }
  absl::Status Drain(absl::Time) override { return absl::OkStatus(); }

 private:
  const SlotSet* slots_;
};

}  // namespace

std::unique_ptr<Filler> MakeHostFiller(const SlotSet* slots) {
  return std::make_unique<HostFiller>(slots);
}

}  // namespace ckpt::daemon
