#include "daemon/update/update_plan.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

namespace ckpt::daemon {
namespace {

std::vector<PlanTensor> Tensors(const std::vector<uint64_t>& sizes) {
  std::vector<PlanTensor> out;
  uint64_t host = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    out.push_back({"t" + std::to_string(i), host, sizes[i]});
    host += (sizes[i] + 255) / 256 * 256;
  }
  return out;
}

// Checks the invariants every plan must hold: every tensor placed in order, whole when it fits a
// bucket, else in pieces that cover it exactly, in order, each starting its bucket, all but the
// last a multiple of its split unit; placements aligned, inside their bucket, without overlap;
// segments cover [0, used) in order; copies cover exactly the tensor bytes of their segment and
// map host bytes to the right slot bytes.
void CheckInvariants(const std::vector<PlanTensor>& tensors, const UpdatePlan& plan) {
  std::vector<uint64_t> covered(tensors.size(), 0);  // bytes placed so far, per tensor
  std::vector<int> pieces(tensors.size(), 0);
  int last_tensor = -1;
  uint64_t copied = 0;
  for (const Bucket& b : plan.buckets) {
    REQUIRE(b.used_bytes <= plan.bucket_bytes);
    REQUIRE(b.used_bytes % kSlotAlignment == 0);
    uint64_t prev_end = 0;
    for (const TensorPlacement& p : b.tensors) {
      const PlanTensor& t = tensors[p.tensor];
      REQUIRE(p.tensor >= last_tensor);  // manifest order
      last_tensor = p.tensor;
      REQUIRE(p.tensor_offset == covered[p.tensor]);
      covered[p.tensor] += p.bytes;
      REQUIRE(covered[p.tensor] <= t.bytes);
      ++pieces[p.tensor];
      if ((t.bytes + 255) / 256 * 256 <= plan.bucket_bytes) {
        REQUIRE(p.bytes == t.bytes);  // fits: never split
      } else {
        REQUIRE(p.slot_offset == 0);
        const uint64_t unit = std::max<uint64_t>(1, t.split_unit);
        if (covered[p.tensor] < t.bytes) REQUIRE(p.bytes % unit == 0);
      }
      REQUIRE(p.slot_offset % kSlotAlignment == 0);
      REQUIRE(p.slot_offset >= prev_end);
      prev_end = p.slot_offset + p.bytes;
      REQUIRE(prev_end <= b.used_bytes);
    }
    REQUIRE(static_cast<int>(b.segments.size()) == plan.uploaders);
    uint64_t pos = 0, seg_min = UINT64_MAX, seg_max = 0;
    for (int u = 0; u < plan.uploaders; ++u) {
      const Segment& s = b.segments[u];
      REQUIRE(s.uploader == u);
      REQUIRE(s.slot_offset == pos);
      pos += s.bytes;
      seg_min = std::min(seg_min, s.bytes);
      seg_max = std::max(seg_max, s.bytes);
      for (const Copy& c : s.copies) {
        REQUIRE(c.slot_offset >= s.slot_offset);
        REQUIRE(c.slot_offset + c.bytes <= s.slot_offset + s.bytes);
        // The copy is covered, without a gap, by consecutive placements, each at matching
        // offsets: tensor bytes only, host bytes to the right slot bytes.
        uint64_t at = c.slot_offset;
        while (at < c.slot_offset + c.bytes) {
          bool matched = false;
          for (const TensorPlacement& p : b.tensors) {
            if (at >= p.slot_offset && at < p.slot_offset + p.bytes) {
              REQUIRE(c.host_offset + (at - c.slot_offset) ==
                      tensors[p.tensor].host_offset + p.tensor_offset + (at - p.slot_offset));
              at = std::min(c.slot_offset + c.bytes, p.slot_offset + p.bytes);
              matched = true;
              break;
            }
          }
          REQUIRE(matched);
        }
        copied += c.bytes;
      }
    }
    REQUIRE(pos == b.used_bytes);
    // Balanced: segments differ by at most one alignment unit.
    REQUIRE(seg_max - seg_min <= kSlotAlignment);
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    REQUIRE(covered[i] == tensors[i].bytes);
    REQUIRE(pieces[i] >= 1);
  }
  REQUIRE(copied == plan.total_tensor_bytes);
}

TEST_CASE("tensors back to back in the host store and the slot become one copy") {
  // Four 512-byte tensors laid out contiguously on the host: one copy per segment.
  std::vector<PlanTensor> tensors = {
      {"a", 0, 512, 0}, {"b", 512, 512, 0}, {"c", 1024, 512, 0}, {"d", 1536, 512, 0}};
  auto plan = PlanUpdate(tensors, 4096, 1);
  REQUIRE(plan.ok());
  REQUIRE(plan->buckets.size() == 1);
  REQUIRE(plan->buckets[0].segments[0].copies.size() == 1);
  CHECK(plan->buckets[0].segments[0].copies[0].bytes == 2048);
  CheckInvariants(tensors, *plan);
  // A gap on the host (c elsewhere) or in the slot (b of 300 bytes: d after padding) cuts the run.
  tensors[2].host_offset = 8192;
  tensors[1].bytes = 300;
  plan = PlanUpdate(tensors, 4096, 1);
  REQUIRE(plan.ok());
  const auto& copies = plan->buckets[0].segments[0].copies;
  REQUIRE(copies.size() == 3);  // [a b], [c], [d]: b ends at 812, c starts at 1024 in the slot
  CHECK(copies[0].bytes == 812);
  CheckInvariants(tensors, *plan);
  // Two uploaders: each segment is its own run.
  plan = PlanUpdate(Tensors({512, 512, 512, 512}), 4096, 2);
  REQUIRE(plan.ok());
  CheckInvariants(Tensors({512, 512, 512, 512}), *plan);
}

TEST_CASE("tensors are packed in order into aligned buckets") {
  auto tensors = Tensors({1000, 3000, 500, 4096});
  auto plan = PlanUpdate(tensors, 4096, 1);
  REQUIRE(plan.ok());
  REQUIRE(plan->buckets.size() == 3);
  // t0 at 0, t1 at 1024 (ends at 4024: the bucket is full once aligned), then t2 and t3 alone.
  CHECK(plan->buckets[0].tensors.size() == 2);
  CHECK(plan->buckets[0].tensors[1].slot_offset == 1024);
  CHECK(plan->buckets[1].tensors[0].tensor == 2);
  CHECK(plan->buckets[2].tensors[0].tensor == 3);
  CheckInvariants(tensors, *plan);
}

TEST_CASE("every uploader copies the same bytes per bucket") {
  auto tensors = Tensors({1 << 20, 3 << 20, 5000, 7 << 20, 1 << 10});
  for (int g : {1, 2, 3, 4, 8}) {
    INFO(g << " uploaders");
    auto plan = PlanUpdate(tensors, 8 << 20, g);
    REQUIRE(plan.ok());
    CheckInvariants(tensors, *plan);
    uint64_t lo = *std::min_element(plan->upload_bytes.begin(), plan->upload_bytes.end());
    uint64_t hi = *std::max_element(plan->upload_bytes.begin(), plan->upload_bytes.end());
    // Segments differ by at most one alignment unit per bucket, and copies skip the alignment
    // padding between tensors.
    uint64_t padding = 0;
    for (const auto& t : tensors) padding += (t.bytes + 255) / 256 * 256 - t.bytes;
    CHECK(hi - lo <= kSlotAlignment * plan->buckets.size() + padding);
  }
}

TEST_CASE("random tensor lists keep the invariants and the plan is deterministic") {
  std::mt19937_64 rng(42);
  for (int round = 0; round < 200; ++round) {
    std::vector<uint64_t> sizes(1 + rng() % 40);
    for (auto& s : sizes) s = rng() % 3 == 0 ? rng() % 300 : rng() % (1 << 20);
    auto tensors = Tensors(sizes);
    int g = 1 + static_cast<int>(rng() % 8);
    uint64_t bucket = (1 << 20) + (rng() % 16) * 256;
    auto a = PlanUpdate(tensors, bucket, g);
    auto b = PlanUpdate(tensors, bucket, g);
    REQUIRE(a.ok());
    CheckInvariants(tensors, *a);
    REQUIRE(a->buckets.size() == b->buckets.size());
    for (size_t i = 0; i < a->buckets.size(); ++i) {
      REQUIRE(a->buckets[i].used_bytes == b->buckets[i].used_bytes);
      REQUIRE(a->buckets[i].tensors.size() == b->buckets[i].tensors.size());
    }
  }
}

TEST_CASE("a tensor larger than a bucket is split into pieces at multiples of 128 rows") {
  // t1: 1000 rows of 40 bytes (40000 bytes) through buckets of 16 KiB: 128 rows are 5120 bytes,
  // so pieces of 3 x 5120 = 15360 bytes (384 rows): 15360, 15360, 9280.
  auto tensors = Tensors({100, 40000, 300});
  tensors[1].split_unit = SplitUnit({1000, 10}, 4, 40000, 16384);
  CHECK(tensors[1].split_unit == 5120);
  for (int g : {1, 2, 3}) {
    INFO(g << " uploaders");
    auto plan = PlanUpdate(tensors, 16384, g);
    REQUIRE(plan.ok());
    CheckInvariants(tensors, *plan);
    REQUIRE(plan->buckets.size() == 4);
    CHECK(plan->buckets[0].tensors.size() == 1);  // t0 alone: t1 starts a bucket of its own
    CHECK(plan->buckets[1].tensors[0].bytes == 15360);
    CHECK(plan->buckets[2].tensors[0].bytes == 15360);
    CHECK(plan->buckets[2].tensors[0].tensor_offset == 15360);
    REQUIRE(plan->buckets[3].tensors.size() == 2);  // the last piece, then t2 after it
    CHECK(plan->buckets[3].tensors[0].bytes == 9280);
    CHECK(plan->buckets[3].tensors[0].tensor_offset == 30720);
    CHECK(plan->buckets[3].tensors[1].tensor == 2);
    CHECK(plan->buckets[3].tensors[1].slot_offset == 9472);
    CHECK(plan->total_tensor_bytes == 40400);
  }
}

TEST_CASE("split units: 128 rows, else one row, else one element") {
  // 163840 x 7168 bf16 (Kimi-K2's embedding) in 2 GiB buckets: 128 rows of 14336 bytes.
  CHECK(SplitUnit({163840, 7168}, 2, 163840ull * 7168 * 2, 2ull << 30) == 128 * 14336);
  // 3-D: rows are shape[0] slices.
  CHECK(SplitUnit({64, 128, 128}, 2, 64ull * 128 * 128 * 2, 1 << 20) == 32768);
  CHECK(SplitUnit({64, 128, 128}, 2, 64ull * 128 * 128 * 2, 16 << 20) == 128 * 32768);
  // 128 rows do not fit, one row does.
  CHECK(SplitUnit({1000, 1000}, 4, 4000000, 256000) == 4000);
  // Not even one row fits: elements.
  CHECK(SplitUnit({2, 100000}, 4, 800000, 256000) == 4);
  CHECK(SplitUnit({100000}, 2, 200000, 4096) == 2);
  CHECK(SplitUnit({}, 8, 8, 4096) == 8);
  CHECK(SplitUnit({0, 4}, 4, 0, 4096) == 4);
  // A tensor of rows that do not fit one bucket goes through element by element.
  std::vector<PlanTensor> wide = Tensors({800000});
  wide[0].split_unit = SplitUnit({2, 100000}, 4, 800000, 256000);
  auto plan = PlanUpdate(wide, 256000, 2);
  REQUIRE(plan.ok());
  CheckInvariants(wide, *plan);
  CHECK(plan->buckets.size() == 4);
  // A split unit larger than a bucket is a caller's bug: refused.
  wide[0].split_unit = 300000;
  CHECK(PlanUpdate(wide, 256000, 1).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("random tensor lists with tensors larger than a bucket keep the invariants") {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<uint64_t> sizes(1 + rng() % 20);
    for (auto& s : sizes) s = rng() % 4 == 0 ? rng() % (5 << 20) : rng() % (1 << 20);
    auto tensors = Tensors(sizes);
    const uint64_t bucket = (1 << 20) + (rng() % 16) * 256;
    for (auto& t : tensors) {
      const int64_t rows = 1 + static_cast<int64_t>(rng() % 4096);
      if (t.bytes % rows == 0) t.split_unit = SplitUnit({rows, 1}, 1, t.bytes, bucket);
    }
    const int g = 1 + static_cast<int>(rng() % 8);
    auto plan = PlanUpdate(tensors, bucket, g);
    REQUIRE(plan.ok());
    CheckInvariants(tensors, *plan);
  }
}

TEST_CASE("tensors of different groups (parts) never share a bucket") {
  std::mt19937_64 rng(11);
  for (int round = 0; round < 200; ++round) {
    std::vector<uint64_t> sizes(1 + rng() % 30);
    for (auto& s : sizes) s = rng() % 5 == 0 ? rng() % (3 << 20) : rng() % (200 << 10);
    auto tensors = Tensors(sizes);
    uint32_t group = 0;
    for (auto& t : tensors) {
      if (rng() % 4 == 0) ++group;
      t.group = group;
    }
    const uint64_t bucket = (1 << 20) + (rng() % 16) * 256;
    auto plan = PlanUpdate(tensors, bucket, 1 + static_cast<int>(rng() % 4));
    REQUIRE(plan.ok());
    CheckInvariants(tensors, *plan);
    for (const Bucket& b : plan->buckets) {
      for (const TensorPlacement& p : b.tensors) {
        CHECK(tensors[p.tensor].group == tensors[b.tensors.front().tensor].group);
      }
    }
  }
  // Without groups, the same tensors pack across the boundary.
  auto tensors = Tensors({1000, 1000});
  auto one = PlanUpdate(tensors, 4096, 1);
  REQUIRE(one.ok());
  CHECK(one->buckets.size() == 1);
  tensors[1].group = 1;
  auto two = PlanUpdate(tensors, 4096, 1);
  REQUIRE(two.ok());
  CHECK(two->buckets.size() == 2);
}

TEST_CASE("bad settings are refused") {
  CHECK(PlanUpdate(Tensors({1}), 1000, 1).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(PlanUpdate(Tensors({1}), 4096, 0).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("empty tensors and tiny buckets") {
  auto tensors = Tensors({0, 0, 10, 0});
  auto plan = PlanUpdate(tensors, 256, 4);
  REQUIRE(plan.ok());
  CheckInvariants(tensors, *plan);
  REQUIRE(plan->buckets.size() == 1);
  // One alignment unit for four uploaders: one segment carries it, the others are empty.
  CHECK(plan->buckets[0].segments[0].bytes == 256);
  CHECK(plan->buckets[0].segments[3].bytes == 0);
  auto none = PlanUpdate({}, 4096, 2);
  REQUIRE(none.ok());
  CHECK(none->buckets.empty());
}

}  // namespace
}  // namespace ckpt::daemon
