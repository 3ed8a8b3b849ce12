#include "daemon/transfer/transfer_backend.h"

#include "absl/strings/str_cat.h"
#include "common/message_text.h"

namespace ckpt::daemon {

absl::StatusOr<std::unique_ptr<TransferBackend>> TransferBackend::Create(
    BackendKind kind, const std::vector<gpu::GpuInfo>& gpus, const Options& options) {
  if (options.slots_per_gpu < 1 || options.bucket_bytes == 0 ||
      options.bucket_bytes % kSlotAlignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staging slots: need slots_per_gpu >= 1 and bucket_bytes a positive multiple of ",
        kSlotAlignment, " (got ", options.slots_per_gpu, ", ", options.bucket_bytes, ")"));
  }
  switch (kind) {
    case BackendKind::kHost:
      return CreateHostTransfer(options);
    case BackendKind::kCuda:
      return CreateCudaTransfer(gpus, options);
    case BackendKind::kAuto:
      break;
  }
  return absl::InvalidArgumentError("transfer backend: resolve backend 'auto' before creating it");
}

absl::Status TransferBackend::NonFiniteError(int tensor) const {
  const std::string name = tensor >= 0 && static_cast<size_t>(tensor) < conversion_names_.size()
                               ? conversion_names_[static_cast<size_t>(tensor)]
                               : absl::StrCat("#", tensor);
  return absl::FailedPreconditionError(
      absl::StrCat("tensor ", QuoteForMessage(name, 128),
                   " holds a NaN or infinity: it cannot be converted to FP8 (fp8_weights)"));
}

void TransferBackend::DescribeGrant(int set, v1::SlotGrant* grant) const {
  const SlotSet& s = slots(set);
  grant->set_backend(std::string(BackendName(kind())));
  grant->set_gpu_index(set);
  for (int i = 0; i < s.count(); ++i) {
    v1::SlotGrant::Slot* slot = grant->add_slots();
    slot->set_index(i);
    slot->set_byte_size(s.slot_bytes());
    slot->set_ipc_handle(s.ipc_handle(i));
  }
}

}  // namespace ckpt::daemon
