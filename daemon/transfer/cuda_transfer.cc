// The cuda backend's transfer: a SlotSet of device buffers per GPU (exported through CUDA IPC),
// per GPU a copy stream and an NCCL stream with one event pair per slot, and with several GPUs one
// NCCL communicator over them (created once, kept across updates).
#include <cuda_runtime_api.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/fp8_block.h"
#include "common/status_macros.h"
#include "daemon/transfer/transfer_backend.h"
#include "gpu/cuda_event.h"
#include "gpu/cuda_status.h"
#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"
#include "gpu/fp8_kernel.h"
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
    f->bucket_bytes_ = options.bucket_bytes;
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
      f->converted_.emplace_back();
      f->scratch_.emplace_back();
      f->flags_dev_.emplace_back();
      for (int s = 0; s < set->count(); ++s) {
        ASSIGN_OR_RETURN(gpu::CudaEvent up, gpu::CudaEvent::Create(set->device()));
        ASSIGN_OR_RETURN(gpu::CudaEvent done, gpu::CudaEvent::Create(set->device()));
        ASSIGN_OR_RETURN(gpu::CudaEvent converted, gpu::CudaEvent::Create(set->device()));
        f->uploaded_.back().push_back(std::move(up));
        f->filled_.back().push_back(std::move(done));
        f->converted_.back().push_back(std::move(converted));
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
  uint64_t gpu_bytes_per_gpu() const override {
    return slot_bytes_per_gpu_ + conversion_bytes_per_gpu_;
  }
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

  absl::Status BeginConversion(uint64_t scale_bytes, std::vector<std::string> names) override {
    conversion_names_ = std::move(names);
    if (scales_.bytes < scale_bytes) {
      ASSIGN_OR_RETURN(gpu::ScopedDevice device, gpu::ScopedDevice::Create(slots_[0]->device()));
      MappedHost grown;
      CUDA_RETURN_IF_ERROR(
          cudaHostAlloc(&grown.data, scale_bytes, cudaHostAllocMapped | cudaHostAllocPortable));
      grown.bytes = scale_bytes;
      CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&grown.device, grown.data, 0));
      scales_ = std::move(grown);
    }
    if (flags_host_.data == nullptr) {
      const size_t count = slots_.size() * static_cast<size_t>(slots_[0]->count());
      ASSIGN_OR_RETURN(gpu::ScopedDevice device, gpu::ScopedDevice::Create(slots_[0]->device()));
      CUDA_RETURN_IF_ERROR(
          cudaHostAlloc(&flags_host_.data, count * sizeof(int), cudaHostAllocPortable));
      flags_host_.bytes = count * sizeof(int);
      std::memset(flags_host_.data, 0, flags_host_.bytes);
    }
    for (size_t g = 0; g < slots_.size(); ++g) {
      if (!scratch_[g].empty()) continue;
      // A converted copy's BF16 source: at most a segment's e4m3 bytes (one bucket) times 2.
      ASSIGN_OR_RETURN(scratch_[g],
                       gpu::DeviceBuffer::Create(slots_[g]->device(), 2 * bucket_bytes_));
      ASSIGN_OR_RETURN(flags_dev_[g], gpu::DeviceBuffer::Create(
                                          slots_[g]->device(),
                                          static_cast<size_t>(slots_[g]->count()) * sizeof(int)));
      conversion_bytes_per_gpu_ = scratch_[g].size() + flags_dev_[g].size();
    }
    return absl::OkStatus();
  }

  absl::Status Fill(const Bucket& bucket, int slot, const uint8_t* arena) override {
    const size_t n = slots_.size();
    bool converts = false;
    for (const Segment& s : bucket.segments) {
      for (const Copy& c : s.copies) converts = converts || c.transform != Transform::kCopy;
    }
    if (converts && (scratch_[0].empty() || scales_.data == nullptr)) {
      return absl::InternalError("an FP8 conversion without BeginConversion (a daemon bug)");
    }
    if (flags_host_.data != nullptr) {
      // The last fill of this slot is complete (its buckets were acked): nothing writes here now.
      for (size_t g = 0; g < n; ++g) Flag(g, slot) = 0;
    }
    for (size_t g = 0; g < n; ++g) {
      ASSIGN_OR_RETURN(gpu::ScopedDevice device, gpu::ScopedDevice::Create(slots_[g]->device()));
      uint8_t* base = slots_[g]->data(slot);
      cudaStream_t stream = copy_[g].get();
      if (converts) {
        CUDA_RETURN_IF_ERROR(cudaMemsetAsync(DeviceFlag(g, slot), 0, sizeof(int), stream));
      }
      for (const Copy& c : bucket.segments[g].copies) {
        if (c.transform == Transform::kCopy) {
          CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base + c.slot_offset, arena + c.host_offset, c.bytes,
                                               cudaMemcpyHostToDevice, stream));
        } else if (c.transform == Transform::kFp8Weight) {
          RETURN_IF_ERROR(Quantize(g, slot, c, base, arena));
        }
      }
      if (converts) RETURN_IF_ERROR(converted_[g][slot].Record(copy_[g]));
    }
    for (size_t g = 0; g < n; ++g) {
      ASSIGN_OR_RETURN(gpu::ScopedDevice device, gpu::ScopedDevice::Create(slots_[g]->device()));
      cudaStream_t stream = copy_[g].get();
      bool waited = false;
      for (const Copy& c : bucket.segments[g].copies) {
        if (c.transform != Transform::kFp8Scale) continue;
        if (!waited) {
          // Scales of weights quantized on any GPU, in this bucket or an earlier one.
          for (size_t h = 0; h < n; ++h) RETURN_IF_ERROR(converted_[h][slot].StreamWait(stream));
          waited = true;
        }
        if (c.host_offset + c.bytes > scales_.bytes) {
          return absl::InternalError("an FP8 scale copy past the scale buffer (a daemon bug)");
        }
        CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slots_[g]->data(slot) + c.slot_offset,
                                             static_cast<uint8_t*>(scales_.data) + c.host_offset,
                                             c.bytes, cudaMemcpyHostToDevice, stream));
      }
      if (converts) {
        CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&Flag(g, slot), DeviceFlag(g, slot), sizeof(int),
                                             cudaMemcpyDeviceToHost, stream));
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
    if (flags_host_.data != nullptr) {
      for (size_t g = 0; g < slots_.size(); ++g) {
        const int mark = Flag(g, slot);  // the plan's tensor + 1
        if (mark != 0) return NonFiniteError(mark - 1);
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

  // FP8 conversion (BeginConversion): host memory from cudaHostAlloc, freed with cudaFreeHost.
  struct MappedHost {
    void* data = nullptr;
    void* device = nullptr;  // the address kernels write through (mapped memory)
    size_t bytes = 0;
    MappedHost() = default;
    MappedHost(MappedHost&& o) noexcept
        : data(std::exchange(o.data, nullptr)),
          device(std::exchange(o.device, nullptr)),
          bytes(std::exchange(o.bytes, 0)) {}
    MappedHost& operator=(MappedHost&& o) noexcept {
      if (this != &o) {
        if (data != nullptr) cudaFreeHost(data);
        data = std::exchange(o.data, nullptr);
        device = std::exchange(o.device, nullptr);
        bytes = std::exchange(o.bytes, 0);
      }
      return *this;
    }
    ~MappedHost() {
      if (data != nullptr) cudaFreeHost(data);
    }
  };
  int& Flag(size_t g, int slot) {
    return static_cast<int*>(
        flags_host_.data)[g * static_cast<size_t>(slots_[0]->count()) + static_cast<size_t>(slot)];
  }
  int* DeviceFlag(size_t g, int slot) { return static_cast<int*>(flags_dev_[g].data()) + slot; }
  // Quantizes copy `c` on GPU g: its BF16 rows into the scratch buffer, then the kernel into the
  // slot, its block scales into the mapped scale buffer (all on the copy stream, in order).
  absl::Status Quantize(size_t g, int slot, const Copy& c, uint8_t* base, const uint8_t* arena) {
    const uint64_t rows = c.bytes / c.cols;
    const uint64_t scale_bytes = Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(c.cols) * sizeof(float);
    if (c.cols == 0 || c.bytes % c.cols != 0 || 2 * c.bytes > scratch_[g].size() ||
        c.scale_offset + scale_bytes > scales_.bytes) {
      return absl::InternalError("an FP8 weight copy without its shape or scales (a daemon bug)");
    }
    cudaStream_t stream = copy_[g].get();
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(scratch_[g].data(), arena + c.host_offset, 2 * c.bytes,
                                         cudaMemcpyHostToDevice, stream));
    CUDA_RETURN_IF_ERROR(gpu::LaunchFp8BlockQuantize(
        static_cast<const uint16_t*>(scratch_[g].data()), rows, c.cols, base + c.slot_offset,
        reinterpret_cast<float*>(static_cast<uint8_t*>(scales_.device) + c.scale_offset),
        DeviceFlag(g, slot), c.tensor + 1, stream));
    return absl::OkStatus();
  }

  uint64_t bucket_bytes_ = 0;
  uint64_t conversion_bytes_per_gpu_ = 0;
  MappedHost scales_;
  MappedHost flags_host_;                               // [gpu][slot] ints, pinned
  std::vector<gpu::DeviceBuffer> scratch_;              // [gpu]
  std::vector<gpu::DeviceBuffer> flags_dev_;            // [gpu]: an int per slot
  std::vector<std::vector<gpu::CudaEvent>> converted_;  // [gpu][slot]
};

}  // namespace

absl::StatusOr<std::unique_ptr<TransferBackend>> CreateCudaTransfer(
    const std::vector<gpu::GpuInfo>& gpus, const TransferBackend::Options& options) {
  return CudaTransfer::Create(gpus, options);
}

}  // namespace ckpt::daemon
