// Checked arithmetic for every size, offset, count and id that comes from the wire or a file.
//
// Each helper returns std::nullopt instead of wrapping. Callers turn a nullopt into an error that
// names the value (usually INVALID_ARGUMENT or RESOURCE_EXHAUSTED); nothing silently wraps to a
// small number. Header-only; no allocation.
#ifndef CKPT_COMMON_CHECKED_MATH_H_
#define CKPT_COMMON_CHECKED_MATH_H_

#include <cstdint>
#include <optional>

namespace ckpt {

// a + b, or nullopt when it does not fit in 64 bits.
inline std::optional<uint64_t> CheckedAdd(uint64_t a, uint64_t b) {
  uint64_t out;
  if (__builtin_add_overflow(a, b, &out)) return std::nullopt;
  return out;
}

// a * b, or nullopt when it does not fit in 64 bits.
inline std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t out;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

// `value` rounded up to a multiple of `alignment` (a power of two, > 0), or nullopt when the
// rounded value does not fit in 64 bits.
inline std::optional<uint64_t> CheckedRoundUp(uint64_t value, uint64_t alignment) {
  std::optional<uint64_t> bumped = CheckedAdd(value, alignment - 1);
  if (!bumped) return std::nullopt;
  return *bumped & ~(alignment - 1);
}

// True when [offset, offset + size) lies inside [0, limit): no overflow, no byte past the end.
inline bool RangeWithin(uint64_t offset, uint64_t size, uint64_t limit) {
  return offset <= limit && size <= limit - offset;
}

// Sums values into a total that refuses to wrap: Add returns false (and keeps the old total) when
// the sum would not fit in 64 bits.
class CheckedSum {
 public:
  bool Add(uint64_t v) {
    std::optional<uint64_t> next = CheckedAdd(total_, v);
    if (!next) return false;
    total_ = *next;
    return true;
  }
  uint64_t total() const { return total_; }

 private:
  uint64_t total_ = 0;
};

}  // namespace ckpt

#endif  // CKPT_COMMON_CHECKED_MATH_H_
