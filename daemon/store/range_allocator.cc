#include "daemon/store/range_allocator.h"

#include "absl/strings/str_cat.h"
#include "common/checked_math.h"

namespace ckpt::daemon {

RangeAllocator::RangeAllocator(uint64_t capacity, uint64_t alignment)
    : capacity_(capacity / alignment * alignment), alignment_(alignment), free_bytes_(capacity_) {
  if (capacity_ > 0) free_[0] = capacity_;
}

std::optional<uint64_t> RangeAllocator::Rounded(uint64_t size) const {
  if (size == 0) return alignment_;
  return CheckedRoundUp(size, alignment_);
}

absl::StatusOr<uint64_t> RangeAllocator::Allocate(uint64_t size) {
  const std::optional<uint64_t> rounded = Rounded(size);
  if (!rounded || *rounded > capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a range of ", size, " bytes is larger than the whole arena (", capacity_, " bytes)"));
  }
  const uint64_t need = *rounded;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    uint64_t offset = it->first;
    uint64_t rest = it->second - need;
    free_.erase(it);
    if (rest > 0) free_[offset + need] = rest;
    free_bytes_ -= need;
    return offset;
  }
  return absl::ResourceExhaustedError(absl::StrCat("no free range of ", need, " bytes (free ",
                                                   free_bytes_, ", largest ", largest_free(), ")"));
}

absl::Status RangeAllocator::Free(uint64_t offset, uint64_t size) {
  const std::optional<uint64_t> rounded = Rounded(size);
  const uint64_t len = rounded.value_or(0);
  if (!rounded || offset % alignment_ != 0 || !RangeWithin(offset, len, capacity_)) {
    return absl::InternalError(
        absl::StrCat("freeing a range that was never allocated: ", offset, "+", len));
  }
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && next->first < offset + len) {
    return absl::InternalError(absl::StrCat("double free of range ", offset, "+", len));
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second > offset) {
      return absl::InternalError(absl::StrCat("double free of range ", offset, "+", len));
    }
  }
  uint64_t start = offset;
  uint64_t end = offset + len;
  if (next != free_.end() && next->first == end) {
    end += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      free_.erase(prev);
    }
  }
  free_[start] = end - start;
  free_bytes_ += len;
  return absl::OkStatus();
}

absl::Status RangeAllocator::Grow(uint64_t new_capacity) {
  const uint64_t capacity = new_capacity / alignment_ * alignment_;
  if (capacity < capacity_) {
    return absl::InvalidArgumentError(absl::StrCat("the arena's capacity cannot shrink (from ",
                                                   capacity_, " to ", capacity, " bytes)"));
  }
  if (capacity == capacity_) return absl::OkStatus();
  uint64_t start = capacity_;
  if (!free_.empty()) {
    auto last = std::prev(free_.end());
    if (last->first + last->second == capacity_) {
      start = last->first;
      free_.erase(last);
    }
  }
  free_[start] = capacity - start;
  free_bytes_ += capacity - capacity_;
  capacity_ = capacity;
  return absl::OkStatus();
}

uint64_t RangeAllocator::largest_free() const {
  uint64_t best = 0;
  for (const auto& [offset, size] : free_) best = std::max(best, size);
  return best;
}

}  // namespace ckpt::daemon
