#include "common/checked_math.h"

#include <catch2/catch.hpp>
#include <limits>

namespace ckpt {
namespace {

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

TEST_CASE("CheckedAdd and CheckedMul refuse to wrap at the 64-bit boundary") {
  CHECK(*CheckedAdd(1, 2) == 3);
  CHECK(*CheckedAdd(kMax - 1, 1) == kMax);
  CHECK_FALSE(CheckedAdd(kMax, 1).has_value());
  CHECK_FALSE(CheckedAdd(kMax - 254, 255).has_value());
  CHECK(*CheckedMul(uint64_t{1} << 32, (uint64_t{1} << 32) - 1) == kMax - ((uint64_t{1} << 32) - 1));
  CHECK_FALSE(CheckedMul(uint64_t{1} << 32, uint64_t{1} << 32).has_value());
  // The I8 [2^32-1, 2^32+1] tensor of the security review: 2^64 - 1 bytes, still representable.
  CHECK(*CheckedMul((uint64_t{1} << 32) - 1, (uint64_t{1} << 32) + 1) == kMax);
  CHECK(*CheckedMul(0, kMax) == 0);
}

TEST_CASE("CheckedRoundUp rounds to the alignment and refuses sizes near 2^64") {
  CHECK(*CheckedRoundUp(0, 256) == 0);
  CHECK(*CheckedRoundUp(1, 256) == 256);
  CHECK(*CheckedRoundUp(256, 256) == 256);
  CHECK(*CheckedRoundUp(257, 256) == 512);
  CHECK(*CheckedRoundUp(kMax - 255, 256) == kMax - 255);
  // (2^64 - 2 + 255) wrapped to 253 and then to 0 in the old allocator.
  CHECK_FALSE(CheckedRoundUp(kMax - 1, 256).has_value());
  CHECK_FALSE(CheckedRoundUp(kMax, 256).has_value());
  CHECK_FALSE(CheckedRoundUp(kMax - 254, 256).has_value());
}

TEST_CASE("RangeWithin checks offset and size without overflow") {
  CHECK(RangeWithin(0, 0, 0));
  CHECK(RangeWithin(0, 10, 10));
  CHECK(RangeWithin(10, 0, 10));
  CHECK_FALSE(RangeWithin(11, 0, 10));
  CHECK_FALSE(RangeWithin(1, 10, 10));
  CHECK_FALSE(RangeWithin(kMax, 2, 10));
  CHECK_FALSE(RangeWithin(2, kMax, 10));
  CHECK(RangeWithin(kMax - 1, 1, kMax));
}

TEST_CASE("CheckedSum keeps its total when an addition would wrap") {
  CheckedSum sum;
  CHECK(sum.Add(kMax - 5));
  CHECK(sum.Add(5));
  CHECK(sum.total() == kMax);
  CHECK_FALSE(sum.Add(1));
  CHECK(sum.total() == kMax);
}

}  // namespace
}  // namespace ckpt
