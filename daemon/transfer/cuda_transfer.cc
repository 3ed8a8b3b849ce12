// The cuda backend's transfer: a SlotSet of device buffers per GPU (exported through CUDA IPC),
// per GPU a copy stream and an NCCL stream with one event pair per slot, and with several GPUs one
// NCCL communicator over them (created once, kept across updates).
#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "daemon/transfer/transfer_backend.h"
#include "gpu/cuda_event.h"
#include "gpu/cuda_status.h"
#include "gpu/cuda_stream.h"
#include "gpu/nccl_comm.h"
#include "gpu/scoped_device.h"

namespace ckpt::daemon {
namespace {

// Per GPU g: uploads of its segment on copy_[g], then (several GPUs) a grouped in-place broadcast
// per segment on nccl_[g] after every GPU's upload event.
class CudaTransfer final : public TransferBackend {
 public:
  static absl::StatusOr<std::unique_ptr<TransferBackend>> Create(
      const std::vector<gpu::GpuInfo>& gpus, const Options& options) {
    if (gpus.empty()) return absl::FailedPreconditionError("cuda backend without GPUs");
    std::unique_ptr<CudaTransfer> f(new CudaTransfer);
    f->gpus_ = gpus;
    f->slot_bytes_per_gpu_ = static_cast<uint64_t>(options.slots_per_gpu) * options.bucket_bytes;
    const absl::Duration timeout = options.gpu_timeout;
    f->timeout_ = timeout;
    std::vector<int> devices;
    for (const gpu::GpuInfo& g : gpus) {
      ASSIGN_OR_RETURN(auto created,
                       SlotSet::CreateCuda(g.index, options.slots_per_gpu, options.bucket_bytes));
      f->slots_.push_back(std::move(created));
      const SlotSet* set = f->slots_.back().get();
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
    return std::unique_ptr<TransferBackend>(std::move(f));
  }

  BackendKind kind() const override { return BackendKind::kCuda; }
  uint64_t gpu_bytes_per_gpu() const override { return slot_bytes_per_gpu_; }
  std::vector<int> GrantFds(int) const override { return {}; }

  absl::StatusOr<int> SlotSetForGpu(const std::string& uuid) const override {
    std::vector<std::string> known;
    for (size_t i = 0; i < gpus_.size(); ++i) {
      if (gpus_[i].uuid == uuid) return static_cast<int>(i);
      known.push_back(gpus_[i].uuid);
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "this daemon does not drive GPU '", uuid, "'; its GPUs are ", absl::StrJoin(known, ", "),
        " (check the daemon's CUDA_VISIBLE_DEVICES and the worker's GPU)"));
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
  CudaTransfer() = default;
  std::vector<gpu::GpuInfo> gpus_;
  uint64_t slot_bytes_per_gpu_ = 0;
  absl::Duration timeout_;
  std::vector<gpu::CudaStream> copy_;
  std::vector<gpu::CudaStream> nccl_;
  std::vector<std::vector<gpu::CudaEvent>> uploaded_;  // [gpu][slot]
  std::vector<std::vector<gpu::CudaEvent>> filled_;    // [gpu][slot]
  std::vector<gpu::NcclComm> comms_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TransferBackend>> CreateCudaTransfer(
    const std::vector<gpu::GpuInfo>& gpus, const TransferBackend::Options& options) {
  return CudaTransfer::Create(gpus, options);
}

}  // namespace ckpt::daemon
