#include "client/device_staging.h"

#include <atomic>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/cuda_driver.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace ckpt::client {

absl::StatusOr<std::unique_ptr<PinnedBlock>> PinnedBlock::Create(const CudaDriver* cuda, int device,
                                                                 uint64_t bytes) {
  ASSIGN_OR_RETURN(void* p, cuda->AllocHost(device, static_cast<size_t>(bytes)));
  return std::unique_ptr<PinnedBlock>(
      new PinnedBlock(cuda, device, static_cast<uint8_t*>(p), bytes));
}

PinnedBlock::~PinnedBlock() { cuda_->FreeHost(device_, data_); }

StagingPool::StagingPool() = default;
StagingPool::~StagingPool() = default;

absl::StatusOr<std::unique_ptr<PinnedBlock>> StagingPool::Take(int device, uint64_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    if (spare_ != nullptr && spare_->size() >= bytes) return std::move(spare_);
    spare_.reset();  // too small: freed before the larger one is made
  }
  ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  return PinnedBlock::Create(cuda, device, bytes);
}

void StagingPool::Give(std::unique_ptr<PinnedBlock> block) {
  absl::MutexLock lock(&mu_);
  if (spare_ == nullptr || spare_->size() < block->size()) spare_ = std::move(block);
}

void StagingPool::Release() {
  std::unique_ptr<PinnedBlock> freed;
  absl::MutexLock lock(&mu_);
  freed = std::move(spare_);
}

absl::StatusOr<StagedTensors> StageDeviceTensors(const std::vector<TensorView>& tensors,
                                                 StagingPool& pool) {
  StagedTensors staged;
  staged.tensors = tensors;
  std::map<int, std::vector<size_t>> by_device;
  std::vector<uint64_t> offset(tensors.size(), 0);
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].device < 0 || tensors[i].bytes == 0) continue;
    by_device[tensors[i].device].push_back(i);
    offset[i] = total;
    total += (tensors[i].bytes + 255) / 256 * 256;  // each tensor fits in memory: no overflow
  }
  if (by_device.empty()) return staged;
  ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  ASSIGN_OR_RETURN(staged.block, pool.Take(by_device.begin()->first, total));
  uint8_t* base = staged.block->data();
  std::vector<std::pair<int, const std::vector<size_t>*>> devices;
  for (const auto& [device, list] : by_device) devices.push_back({device, &list});
  std::atomic<size_t> next{0};
  FirstFailure failure;
  auto work = [&] {
    for (size_t d = next.fetch_add(1); d < devices.size() && !failure.stopped();
         d = next.fetch_add(1)) {
      for (size_t i : *devices[d].second) {
        const TensorView& t = tensors[i];
        absl::Status s = cuda->CopyToHost(t.device, base + offset[i],
                                          reinterpret_cast<uint64_t>(t.data), t.bytes);
        if (!s.ok()) {
          failure.Record(Annotate(s, absl::StrCat("tensor '", t.name, "'")));
          return;
        }
      }
    }
  };
  RunOnThreads(static_cast<int>(devices.size()), work);
  if (absl::Status s = failure.status(); !s.ok()) {
    pool.Give(std::move(staged.block));
    return s;
  }
  for (const auto& [device, list] : by_device) {
    for (size_t i : list) {
      staged.tensors[i].data = base + offset[i];
      staged.tensors[i].device = -1;
    }
  }
  return staged;
}

}  // namespace ckpt::client
