#include "daemon/update_plan.h"

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

// Checks the invariants every plan must hold: every tensor placed once, whole, aligned, inside its
// bucket, without overlap; segments cover [0, used) in order; copies cover exactly the tensor bytes
// of their segment and map host bytes to the right slot bytes.
void CheckInvariants(const std::vector<PlanTensor>& tensors, const UpdatePlan& plan) {
  std::vector<int> seen(tensors.size(), 0);
  uint64_t copied = 0;
  for (const Bucket& b : plan.buckets) {
    REQUIRE(b.used_bytes <= plan.bucket_bytes);
    REQUIRE(b.used_bytes % kSlotAlignment == 0);
    uint64_t prev_end = 0;
    for (const TensorPlacement& p : b.tensors) {
      ++seen[p.tensor];
      REQUIRE(p.slot_offset % kSlotAlignment == 0);
      REQUIRE(p.slot_offset >= prev_end);
      REQUIRE(p.bytes == tensors[p.tensor].bytes);
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
        // The copy maps into exactly one tensor, at matching offsets.
        bool matched = false;
        for (const TensorPlacement& p : b.tensors) {
          if (c.slot_offset >= p.slot_offset &&
              c.slot_offset + c.bytes <= p.slot_offset + p.bytes) {
            REQUIRE(c.host_offset ==
                    tensors[p.tensor].host_offset + (c.slot_offset - p.slot_offset));
            matched = true;
          }
        }
        REQUIRE(matched);
        copied += c.bytes;
      }
    }
    REQUIRE(pos == b.used_bytes);
    // Balanced: segments differ by at most one alignment unit.
    REQUIRE(seg_max - seg_min <= kSlotAlignment);
  }
  for (int n : seen) REQUIRE(n == 1);
  REQUIRE(copied == plan.total_tensor_bytes);
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

TEST_CASE("a tensor larger than a bucket and bad settings are refused") {
  auto big = PlanUpdate(Tensors({100, 5000}), 4096, 2);
  REQUIRE_FALSE(big.ok());
  CHECK(big.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(big.status().message()).find("tensor 't1' has 5000 bytes") !=
        std::string::npos);
  CHECK(std::string(big.status().message()).find("at least 5120") != std::string::npos);
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
