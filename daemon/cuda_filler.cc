#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "daemon/filler.h"
#include "daemon/gpu/cuda_event.h"
#include "daemon/gpu/cuda_status.h"
#include "daemon/gpu/cuda_stream.h"
#include "daemon/gpu/nccl_comm.h"
#include "daemon/gpu/scoped_device.h"

namespace ckpt::daemon {
namespace {

// Per GPU g: uploads of its segment on copy_[g], then (several GPUs) a grouped in-place broadcast
// per segment on nccl_[g] after every GPU's upload event.
class CudaFiller final : public Filler {
 public:
  static absl::StatusOr<std::unique_ptr<CudaFiller>> Create(
      const std::vector<std::unique_ptr<SlotSet>>& slots, absl::Duration timeout) {
    std::unique_ptr<CudaFiller> f(new CudaFiller);
    f->timeout_ = timeout;
    std::vector<int> devices;
    for (const auto& set : slots) {
      f->slots_.push_back(set.get());
      devices.push_back(set->device());
      ASSIGN_OR_RETURN(gpu::CudaStream copy, gpu::CudaStream::Create(set->device()));
      ASSIGN_OR_RETURN(gpu::CudaStream nccl, gpu::CudaStream::Create(set->device()));
      f->copy_.push_back(std::move(copy));
      f->nccl_.push_back(std::move(nccl));
      f->uploaded_.emplace_back();
      f->filled_.emplace_back();
      for (int s = 0; s < set->count(); ++s) {
        ASSIGN_OR_RETURN(gpu::CudaEvent up, gpu::CudaEvent::Create(set->device()));
        ASSIGN_OR_RETURN(gpu::CudaEvent done, gpu::CudaEvent::Create(set->device()));
        f->uploaded_.back().push_back(std::move(up));
        f->filled_.back().push_back(std::move(done));
      }
    }
    if (devices.size() > 1) {
      auto comms = gpu::NcclComm::CreateLocal(devices, timeout);
      if (!comms.ok()) {
        return Annotate(comms.status(), absl::StrCat("NCCL communicator over the ", devices.size(),
                                                     " GPUs of this node"));
      }
      f->comms_ = *std::move(comms);
    }
    return f;
  }

  absl::Status Fill(const Bucket& bucket, int slot, const uint8_t* arena) override {
    const size_t n = slots_.size();
    for (size_t g = 0; g < n; ++g) {
      ASSIGN_OR_RETURN(gpu::ScopedDevice device, gpu::ScopedDevice::Create(slots_[g]->device()));
      uint8_t* base = slots_[g]->data(slot);
      for (const Copy& c : bucket.segments[g].copies) {
        CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base + c.slot_offset, arena + c.host_offset, c.bytes,
                                             cudaMemcpyHostToDevice, copy_[g].get()));
      }
      RETURN_IF_ERROR(uploaded_[g][slot].Record(copy_[g]));
    }
    if (n == 1) return filled_[0][slot].Record(copy_[0]);
    std::vector<void*> bases;
    std::vector<cudaStream_t> streams;
    for (size_t g = 0; g < n; ++g) {
      ASSIGN_OR_RETURN(gpu::ScopedDevice device, gpu::ScopedDevice::Create(slots_[g]->device()));
      for (size_t h = 0; h < n; ++h) RETURN_IF_ERROR(uploaded_[h][slot].StreamWait(nccl_[g].get()));
      bases.push_back(slots_[g]->data(slot));
      streams.push_back(nccl_[g].get());
    }
    std::vector<gpu::NcclComm::InPlaceOp> ops;
    for (const Segment& s : bucket.segments) ops.push_back({s.uploader, s.slot_offset, s.bytes});
    RETURN_IF_ERROR(gpu::NcclComm::GroupBroadcastInPlace(absl::MakeSpan(comms_), bases, streams,
                                                         ops, timeout_));
    for (size_t g = 0; g < n; ++g) RETURN_IF_ERROR(filled_[g][slot].Record(nccl_[g]));
    return absl::OkStatus();
  }

  absl::StatusOr<bool> Filled(int slot) override {
    for (size_t g = 0; g < slots_.size(); ++g) {
      ASSIGN_OR_RETURN(bool done, filled_[g][slot].Query());
      if (!done) {
        for (auto& comm : comms_) RETURN_IF_ERROR(comm.CheckAsyncError());
        return false;
      }
    }
    return true;
  }

  absl::Status Drain(absl::Time deadline) override {
    for (size_t g = 0; g < slots_.size(); ++g) {
      for (auto& e : filled_[g]) RETURN_IF_ERROR(e.WaitUntil(deadline));
      for (auto& e : uploaded_[g]) RETURN_IF_ERROR(e.WaitUntil(deadline));
    }
    return absl::OkStatus();
  }

 private:
  CudaFiller() = default;
  absl::Duration timeout_;
  std::vector<const SlotSet*> slots_;
  std::vector<gpu::CudaStream> copy_;
  std::vector<gpu::CudaStream> nccl_;
  std::vector<std::vector<gpu::CudaEvent>> uploaded_;  // [gpu][slot]
  std::vector<std::vector<gpu::CudaEvent>> filled_;    // [gpu][slot]
  std::vector<gpu::NcclComm> comms_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Filler>> MakeCudaFiller(
    const std::vector<std::unique_ptr<SlotSet>>& slots, absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<CudaFiller> filler, CudaFiller::Create(slots, timeout));
  return std::unique_ptr<Filler>(std::move(filler));
}

}  // namespace ckpt::daemon
