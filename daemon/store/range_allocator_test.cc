#include "daemon/store/range_allocator.h"

#include <catch2/catch.hpp>
#include <random>
#include <vector>

namespace ckpt::daemon {
namespace {

TEST_CASE("allocations are aligned, disjoint and coalesce when freed") {
  RangeAllocator a(4096, 256);
  auto x = a.Allocate(1);
  auto y = a.Allocate(300);
  auto z = a.Allocate(0);
  REQUIRE(x.ok());
  REQUIRE(y.ok());
  REQUIRE(z.ok());
  CHECK(*x == 0);
  CHECK(*y == 256);
  CHECK(*z == 768);
  CHECK(a.free_bytes() == 4096 - 256 - 512 - 256);
  REQUIRE(a.Free(*y, 300).ok());
  REQUIRE(a.Free(*x, 1).ok());
  // Free now: [0, 768) (x and y merged) and [1024, 4096).
  CHECK(a.free_bytes() == 768 + 3072);
  CHECK(a.largest_free() == 3072);
  auto w = a.Allocate(768);
  REQUIRE(w.ok());
  CHECK(*w == 0);  // first fit reuses the merged hole
  REQUIRE(a.Free(*w, 768).ok());
  REQUIRE(a.Free(*z, 0).ok());
  CHECK(a.free_bytes() == 4096);
  CHECK(a.largest_free() == 4096);
}

TEST_CASE("exhaustion and bad frees are reported") {
  RangeAllocator a(1024, 256);
  REQUIRE(a.Allocate(1024).ok());
  auto r = a.Allocate(1);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(a.Free(0, 1024).ok());
  CHECK(a.Free(0, 256).code() == absl::StatusCode::kInternal);   // double free
  CHECK(a.Free(3, 1).code() == absl::StatusCode::kInternal);     // misaligned
  CHECK(a.Free(1024, 1).code() == absl::StatusCode::kInternal);  // out of range
  CHECK(a.free_bytes() == 1024);
}

TEST_CASE("random allocate/free keeps the books balanced") {
  RangeAllocator a(1 << 20, 256);
  std::mt19937_64 rng(7);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int i = 0; i < 5000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      uint64_t size = rng() % 20000;
      auto r = a.Allocate(size);
      if (r.ok()) {
        for (auto& [o, s] : live) {
          bool disjoint = *r + *a.Rounded(size) <= o || o + *a.Rounded(s) <= *r;
          REQUIRE(disjoint);
        }
        live.push_back({*r, size});
      }
    } else {
      size_t k = rng() % live.size();
      REQUIRE(a.Free(live[k].first, live[k].second).ok());
      live.erase(live.begin() + k);
    }
  }
  uint64_t used = 0;
  for (auto& [o, s] : live) used += *a.Rounded(s);
  CHECK(a.free_bytes() == a.capacity() - used);
  for (auto& [o, s] : live) REQUIRE(a.Free(o, s).ok());
  CHECK(a.largest_free() == a.capacity());
}

TEST_CASE("sizes near 2^64 are refused, never rounded to a small range") {
  // The security review's BeginVersion: F16 [2^63-1] = 2^64-2 bytes, which (size + 255) wrapped
  // to 0 bytes charged; and I8 [2^32-1, 2^32+1] = 2^64-1 bytes.
  RangeAllocator a(1 << 20, 256);
  for (uint64_t size :
       {UINT64_MAX, UINT64_MAX - 1, UINT64_MAX - 254, uint64_t{1} << 63, uint64_t{(1 << 20) + 1}}) {
    INFO("size " << size);
    auto r = a.Allocate(size);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
    CHECK(a.free_bytes() == 1 << 20);
  }
  CHECK_FALSE(a.Rounded(UINT64_MAX - 1).has_value());
  // Freeing such a size is refused too (it can never have been allocated).
  CHECK(a.Free(0, UINT64_MAX - 1).code() == absl::StatusCode::kInternal);
  CHECK(a.Free(uint64_t{1} << 63, 256).code() == absl::StatusCode::kInternal);
  // The whole capacity is still one allocation.
  auto whole = a.Allocate(1 << 20);
  REQUIRE(whole.ok());
  CHECK(*whole == 0);
}

TEST_CASE("a growing capacity: nothing is handed out beyond it, the new space merges at the end") {
  RangeAllocator a(0, 256);
  CHECK(a.capacity() == 0);
  CHECK(a.Allocate(1).status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(a.Grow(1000).ok());  // rounded down to the alignment
  CHECK(a.capacity() == 768);
  CHECK(a.free_bytes() == 768);
  auto x = a.Allocate(512);
  REQUIRE(x.ok());
  CHECK(*x == 0);
  CHECK_FALSE(a.Allocate(512).ok());  // 256 free: the rest is not ready yet
  REQUIRE(a.Grow(1024).ok());
  // The free tail [512, 768) and the new [768, 1024) are one range now.
  CHECK(a.largest_free() == 512);
  auto y = a.Allocate(512);
  REQUIRE(y.ok());
  CHECK(*y == 512);
  CHECK(a.free_bytes() == 0);
  // A grow after a fully used tail adds a separate range.
  REQUIRE(a.Grow(2048).ok());
  CHECK(a.free_bytes() == 1024);
  REQUIRE(a.Free(*y, 512).ok());
  CHECK(a.largest_free() == 1536);  // freed [512, 1024) merged with [1024, 2048)
  // Shrinking is refused and changes nothing; the same capacity is a no-op.
  CHECK(a.Grow(1024).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(a.Grow(2048).ok());
  CHECK(a.capacity() == 2048);
  CHECK(a.free_bytes() == 1536);
  REQUIRE(a.Free(*x, 512).ok());
  CHECK(a.largest_free() == 2048);
}

TEST_CASE("random allocations while the capacity grows stay below the capacity of their time") {
  RangeAllocator a(4096, 256);
  std::mt19937_64 rng(11);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int i = 0; i < 3000; ++i) {
    const uint64_t r = rng() % 10;
    if (r == 0 && a.capacity() < (1 << 22)) {
      REQUIRE(a.Grow(a.capacity() + rng() % 65536).ok());
    } else if (r < 7 || live.empty()) {
      const uint64_t size = rng() % 20000;
      auto got = a.Allocate(size);
      if (got.ok()) {
        REQUIRE(*got + *a.Rounded(size) <= a.capacity());
        live.push_back({*got, size});
      }
    } else {
      const size_t k = rng() % live.size();
      REQUIRE(a.Free(live[k].first, live[k].second).ok());
      live.erase(live.begin() + k);
    }
  }
  for (auto& [o, s] : live) REQUIRE(a.Free(o, s).ok());
  CHECK(a.free_bytes() == a.capacity());
  CHECK(a.largest_free() == a.capacity());
}

}  // namespace
}  // namespace ckpt::daemon
