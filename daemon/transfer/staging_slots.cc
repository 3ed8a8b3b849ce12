#include "daemon/transfer/staging_slots.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "gpu/ipc_handle.h"

namespace ckpt::daemon {

absl::StatusOr<std::unique_ptr<SlotSet>> SlotSet::CreateHost(int count, uint64_t slot_bytes) {
  if (count < 1 || slot_bytes == 0) {
    return absl::InvalidArgumentError("SlotSet: at least one slot of at least one byte needed");
  }
  std::unique_ptr<SlotSet> set(new SlotSet);
  set->count_ = count;
  set->slot_bytes_ = slot_bytes;
  for (int i = 0; i < count; ++i) {
    auto arena = HostArena::Create(HostArena::Kind::kShared, slot_bytes);
    if (!arena.ok()) {
      return Annotate(arena.status(), absl::StrCat("staging slot ", i, " of ",
                                                   FormatBytes(slot_bytes), " in shared memory"));
    }
    // Workers only read slots: sealed, one worker cannot change what the others read.
    if (absl::Status sealed = (*arena)->SealAgainstOtherWriters(); !sealed.ok()) {
      return Annotate(sealed, absl::StrCat("staging slot ", i));
    }
    set->host_.push_back(*std::move(arena));
    set->handles_.emplace_back();
  }
  return set;
}

absl::StatusOr<std::unique_ptr<SlotSet>> SlotSet::CreateCuda(int device, int count,
                                                             uint64_t slot_bytes) {
  if (count < 1 || slot_bytes == 0) {
    return absl::InvalidArgumentError("SlotSet: at least one slot of at least one byte needed");
  }
  std::unique_ptr<SlotSet> set(new SlotSet);
  set->count_ = count;
  set->slot_bytes_ = slot_bytes;
  set->device_ = device;
  for (int i = 0; i < count; ++i) {
    const std::string what =
        absl::StrCat("staging slot ", i, " of ", FormatBytes(slot_bytes), " on GPU ", device);
    auto buffer = gpu::DeviceBuffer::Create(device, slot_bytes);
    if (!buffer.ok()) return Annotate(buffer.status(), what);
    auto handle = gpu::IpcHandle::Export(*buffer);
    if (!handle.ok()) return Annotate(handle.status(), what);
    set->handles_.push_back(handle->ToBytes());
    set->device_buffers_.push_back(*std::move(buffer));
  }
  return set;
}

uint8_t* SlotSet::data(int i) const {
  if (device_ < 0) return host_[i]->data();
  return static_cast<uint8_t*>(device_buffers_[i].data());
}

std::vector<int> SlotSet::memfds() const {
  std::vector<int> fds;
  for (const auto& arena : host_) fds.push_back(arena->memfd());
  return fds;
}

}  // namespace ckpt::daemon
