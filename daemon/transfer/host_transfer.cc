// The host backend's transfer: slots are sealed memfds (SlotSet::CreateHost) that every worker
// maps read-only; a fill copies each run of the bucket with memcpy and is complete at once.
#include <cstring>
#include <memory>

#include "common/status_macros.h"
#include "daemon/transfer/transfer_backend.h"

namespace ckpt::daemon {
namespace {

class HostTransfer final : public TransferBackend {
 public:
  static absl::StatusOr<std::unique_ptr<TransferBackend>> Create(const Options& options) {
    std::unique_ptr<HostTransfer> t(new HostTransfer);
    ASSIGN_OR_RETURN(auto set, SlotSet::CreateHost(options.slots_per_gpu, options.bucket_bytes));
    t->slots_.push_back(std::move(set));
    return std::unique_ptr<TransferBackend>(std::move(t));
  }

  BackendKind kind() const override { return BackendKind::kHost; }
  uint64_t gpu_bytes_per_gpu() const override { return 0; }
  absl::StatusOr<int> SlotSetForGpu(const std::string&) const override { return 0; }
  std::vector<int> GrantFds(int set) const override { return slots(set).memfds(); }

  absl::Status Fill(const Bucket& bucket, int slot, const uint8_t* arena) override {
    uint8_t* base = slots_[0]->data(slot);
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
  HostTransfer() = default;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TransferBackend>> CreateHostTransfer(
    const TransferBackend::Options& options) {
  return HostTransfer::Create(options);
}

}  // namespace ckpt::daemon
