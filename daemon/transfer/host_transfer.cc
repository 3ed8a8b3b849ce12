// The host backend's transfer: slots are sealed memfds (SlotSet::CreateHost) that every worker
// maps read-only; a fill copies each run of the bucket with memcpy (or quantizes it to FP8 on the
// CPU, common/fp8_block.h) and is complete at once.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/fp8_block.h"
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

  absl::Status BeginConversion(uint64_t scale_bytes, std::vector<std::string> names) override {
    if (scales_.size() * sizeof(float) < scale_bytes) {
      scales_.resize((scale_bytes + sizeof(float) - 1) / sizeof(float));
    }
    conversion_names_ = std::move(names);
    return absl::OkStatus();
  }

  absl::Status Fill(const Bucket& bucket, int slot, const uint8_t* arena) override {
    uint8_t* base = slots_[0]->data(slot);
    for (const Segment& segment : bucket.segments) {
      for (const Copy& c : segment.copies) {
        switch (c.transform) {
          case Transform::kCopy:
            std::memcpy(base + c.slot_offset, arena + c.host_offset, c.bytes);
            break;
          case Transform::kFp8Weight:
            RETURN_IF_ERROR(Quantize(c, base, arena));
            break;
          case Transform::kFp8Scale:
            if (c.host_offset + c.bytes > scales_.size() * sizeof(float)) {
              return absl::InternalError("an FP8 scale copy past the scale buffer (a daemon bug)");
            }
            std::memcpy(base + c.slot_offset,
                        reinterpret_cast<const uint8_t*>(scales_.data()) + c.host_offset, c.bytes);
            break;
        }
      }
    }
    return absl::OkStatus();
  }
  absl::StatusOr<bool> Filled(int) override { return true; }
  absl::Status Drain(absl::Time) override { return absl::OkStatus(); }

 private:
  HostTransfer() = default;

  absl::Status Quantize(const Copy& c, uint8_t* base, const uint8_t* arena) {
    const uint64_t rows = c.bytes / c.cols;
    const uint64_t scale_bytes = Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(c.cols) * sizeof(float);
    if (c.cols == 0 || c.bytes % c.cols != 0 || c.host_offset % 2 != 0 ||
        c.scale_offset + scale_bytes > scales_.size() * sizeof(float)) {
      return absl::InternalError("an FP8 weight copy without its shape or scales (a daemon bug)");
    }
    const auto* src = reinterpret_cast<const uint16_t*>(arena + c.host_offset);
    float* scales = scales_.data() + c.scale_offset / sizeof(float);
    if (!QuantizeBf16BlocksE4m3(src, rows, c.cols, base + c.slot_offset, scales)) {
      return NonFiniteError(c.tensor);
    }
    return absl::OkStatus();
  }

  std::vector<float> scales_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TransferBackend>> CreateHostTransfer(
    const TransferBackend::Options& options) {
  return HostTransfer::Create(options);
}

}  // namespace ckpt::daemon
