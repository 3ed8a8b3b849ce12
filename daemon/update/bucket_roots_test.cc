#include "daemon/update/bucket_roots.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <map>
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

// A copy of the rule cluster_update.cc's BucketRoots applies today (every bucket from the same
// uploaders): buckets in order, each to the uploader with the fewest bytes so far, ties to the
// first listed.
std::vector<int> TodaysBucketRoots(const UpdatePlan& plan, const std::vector<int>& uploaders) {
  std::vector<uint64_t> bytes(uploaders.size(), 0);
  std::vector<int> roots;
  for (const Bucket& b : plan.buckets) {
    size_t best = 0;
    for (size_t u = 1; u < uploaders.size(); ++u) {
      if (bytes[u] < bytes[best]) best = u;
    }
    bytes[best] += b.used_bytes;
    roots.push_back(uploaders[best]);
  }
  return roots;
}

std::map<int, uint64_t> BytesPerRank(const UpdatePlan& plan, const std::vector<int>& roots) {
  std::map<int, uint64_t> out;
  for (size_t k = 0; k < roots.size(); ++k) out[roots[k]] += plan.buckets[k].used_bytes;
  return out;
}

// Buckets of exactly `bucket` bytes each (one tensor per bucket), `n` of them.
UpdatePlan EqualBuckets(int n, uint64_t bucket) {
  auto plan = PlanUpdate(Tensors(std::vector<uint64_t>(n, bucket)), bucket, 1);
  REQUIRE(plan.ok());
  REQUIRE(plan->buckets.size() == static_cast<size_t>(n));
  return *plan;
}

TEST_CASE("the same ranks for every bucket give exactly today's BucketRoots") {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 300; ++round) {
    std::vector<uint64_t> sizes(1 + rng() % 60);
    for (auto& s : sizes) s = 1 + rng() % (3 << 20);
    auto plan = PlanUpdate(Tensors(sizes), (1 << 20) + (rng() % 64) * 256, 1);
    REQUIRE(plan.ok());
    // Ascending ranks, not necessarily contiguous (members that do not hold the version skipped).
    std::vector<int> ranks;
    for (int r = 0; r < 12; ++r) {
      if (rng() % 2 == 0) ranks.push_back(r);
    }
    if (ranks.empty()) ranks.push_back(static_cast<int>(rng() % 5));
    std::vector<std::vector<int>> eligible(plan->buckets.size(), ranks);
    auto roots = AssignBucketRoots(*plan, eligible);
    REQUIRE(roots.ok());
    INFO("round " << round << ", " << plan->buckets.size() << " buckets, " << ranks.size()
                  << " ranks");
    REQUIRE(*roots == TodaysBucketRoots(*plan, ranks));
  }
}

TEST_CASE("a small case by hand: fewer eligible ranks first, then fewest bytes, ties lowest") {
  // Buckets of 4096, 2560, 2560, 3072 bytes (one tensor each: no two fit one 4 KiB bucket).
  auto plan = PlanUpdate(Tensors({4096, 2560, 2560, 3072}), 4096, 1);
  REQUIRE(plan.ok());
  REQUIRE(plan->buckets.size() == 4);
  // Bucket 2 only on rank 1: first, to 1 (2560). Then in bucket order among {0, 1}: bucket 0
  // (4096) to 0 (0 < 2560); bucket 1 to 1 (2560 < 4096; now 5120); bucket 3 to 0 (4096 < 5120).
  auto roots = AssignBucketRoots(*plan, {{0, 1}, {0, 1}, {1}, {0, 1}});
  REQUIRE(roots.ok());
  CHECK(*roots == std::vector<int>{0, 1, 1, 0});
  // Ties go to the lowest rank: two equal buckets on {3, 5}: 3 then 5.
  auto two = EqualBuckets(2, 4096);
  roots = AssignBucketRoots(two, {{3, 5}, {3, 5}});
  REQUIRE(roots.ok());
  CHECK(*roots == std::vector<int>{3, 5});
}

TEST_CASE("parts held by one member each: N members holding 1/N each upload 1/N") {
  for (int n : {1, 2, 3, 4, 8}) {
    INFO(n << " members");
    const int per = 5;
    auto plan = EqualBuckets(n * per, 1 << 20);
    std::vector<std::vector<int>> eligible;
    for (int k = 0; k < n * per; ++k) eligible.push_back({k / per});  // member m holds part m
    auto roots = AssignBucketRoots(plan, eligible);
    REQUIRE(roots.ok());
    for (int k = 0; k < n * per; ++k) CHECK((*roots)[k] == k / per);
    auto bytes = BytesPerRank(plan, *roots);
    REQUIRE(bytes.size() == static_cast<size_t>(n));
    for (const auto& [rank, b] : bytes) CHECK(b == static_cast<uint64_t>(per) << 20);
  }
}

TEST_CASE("one member holding all and another half: balanced") {
  // 40 buckets of 1 MiB; member 0 holds all, member 1 the first half.
  const int n = 40;
  auto plan = EqualBuckets(n, 1 << 20);
  std::vector<std::vector<int>> eligible;
  for (int k = 0; k < n; ++k)
    eligible.push_back(k < n / 2 ? std::vector<int>{0, 1} : std::vector<int>{0});
  auto roots = AssignBucketRoots(plan, eligible);
  REQUIRE(roots.ok());
  auto bytes = BytesPerRank(plan, *roots);
  CHECK(bytes[0] == static_cast<uint64_t>(n / 2) << 20);
  CHECK(bytes[1] == static_cast<uint64_t>(n / 2) << 20);
  // Every bucket comes from a member that holds it.
  for (int k = 0; k < n; ++k) {
    CHECK(std::find(eligible[k].begin(), eligible[k].end(), (*roots)[k]) != eligible[k].end());
  }
  // Today's order (buckets in order, no look-ahead) would leave member 0 with three quarters.
  std::map<int, uint64_t> naive;
  for (int k = 0; k < n; ++k) {
    int best = eligible[k][0];
    for (int r : eligible[k]) {
      if (naive[r] < naive[best]) best = r;
    }
    naive[best] += 1 << 20;
  }
  CHECK(naive[0] == static_cast<uint64_t>(3 * n / 4) << 20);

  // Uneven buckets: the larger member still ends within one bucket of the other.
  std::mt19937_64 rng(11);
  std::vector<uint64_t> sizes(80);
  for (auto& s : sizes) s = 1 + rng() % (1 << 20);
  auto uneven = PlanUpdate(Tensors(sizes), 1 << 20, 1);
  REQUIRE(uneven.ok());
  const size_t m = uneven->buckets.size();
  eligible.clear();
  uint64_t total = 0, largest = 0;
  for (size_t k = 0; k < m; ++k) {
    eligible.push_back(k < m / 2 ? std::vector<int>{0, 1} : std::vector<int>{0});
    total += uneven->buckets[k].used_bytes;
    largest = std::max(largest, uneven->buckets[k].used_bytes);
  }
  roots = AssignBucketRoots(*uneven, eligible);
  REQUIRE(roots.ok());
  bytes = BytesPerRank(*uneven, *roots);
  const uint64_t hi = std::max(bytes[0], bytes[1]), lo = std::min(bytes[0], bytes[1]);
  CHECK(hi + lo == total);
  // Member 1 can only take the first half; within it the rule evens out up to one bucket.
  uint64_t first_half = 0;
  for (size_t k = 0; k < m / 2; ++k) first_half += uneven->buckets[k].used_bytes;
  if (first_half * 2 >= total) CHECK(hi - lo <= largest);
}

TEST_CASE("refused: no eligible rank, a count that differs from the plan, bad ranks") {
  auto plan = EqualBuckets(3, 4096);
  auto r = AssignBucketRoots(plan, {{0}, {}, {0}});
  REQUIRE(!r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(r.status().message()).find("bucket 1") != std::string::npos);
  r = AssignBucketRoots(plan, {{0}, {0}});
  REQUIRE(!r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  r = AssignBucketRoots(plan, {{0}, {1, 0}, {0}});
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  r = AssignBucketRoots(plan, {{0}, {-1}, {0}});
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  r = AssignBucketRoots(plan, {{0}, {2, 2}, {0}});
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  // An empty plan needs no roots.
  UpdatePlan empty;
  auto none = AssignBucketRoots(empty, {});
  REQUIRE(none.ok());
  CHECK(none->empty());
}

}  // namespace
}  // namespace ckpt::daemon
