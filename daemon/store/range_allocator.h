// RangeAllocator: first-fit allocation of aligned byte ranges inside [0, capacity), with coalescing
// of freed neighbours. The capacity may grow (Grow: memory made ready after start-up); a range is
// never handed out beyond the capacity in force when it is allocated. Bookkeeping only (no memory
// is touched). Not thread-safe: the owner locks.
#ifndef CKPT_DAEMON_STORE_RANGE_ALLOCATOR_H_
#define CKPT_DAEMON_STORE_RANGE_ALLOCATOR_H_

#include <cstdint>
#include <map>
#include <optional>

#include "absl/status/statusor.h"

namespace ckpt::daemon {

class RangeAllocator {
 public:
  // `alignment` must be a power of two; sizes are rounded up to it.
  explicit RangeAllocator(uint64_t capacity, uint64_t alignment = 256);

  // The offset of a new range of `size` bytes (rounded up to the alignment; 0 allocates one
  // alignment unit so that every range has a distinct offset). RESOURCE_EXHAUSTED when no free
  // range is large enough, including any size whose rounded value exceeds the capacity (sizes
  // near 2^64 never wrap to a small range).
  absl::StatusOr<uint64_t> Allocate(uint64_t size);
  // Returns a range from Allocate (same size as asked). Freeing what was not allocated is a bug:
  // checked, it returns INTERNAL and changes nothing.
  absl::Status Free(uint64_t offset, uint64_t size);
  // Raises the capacity to `new_capacity` (rounded down to the alignment): [capacity, new) becomes
  // free, merged with a free range that ends at the old capacity. INVALID_ARGUMENT (nothing
  // changes) when it would shrink; the same capacity is a no-op.
  absl::Status Grow(uint64_t new_capacity);

  uint64_t capacity() const { return capacity_; }
  uint64_t free_bytes() const { return free_bytes_; }
  uint64_t largest_free() const;
  // `size` rounded up as Allocate charges it, or nullopt when that does not fit in 64 bits (such a
  // size can never be allocated).
  std::optional<uint64_t> Rounded(uint64_t size) const;

 private:
  uint64_t capacity_;
  uint64_t alignment_;
  uint64_t free_bytes_;
  // offset -> size of each free range; ranges never touch (neighbours are merged).
  std::map<uint64_t, uint64_t> free_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_STORE_RANGE_ALLOCATOR_H_
