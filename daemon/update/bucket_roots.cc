#include "daemon/update/bucket_roots.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace ckpt::daemon {

absl::StatusOr<std::vector<int>> AssignBucketRoots(const UpdatePlan& plan,
                                                   const std::vector<std::vector<int>>& eligible) {
  const size_t n = plan.buckets.size();
  if (eligible.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("eligible ranks given for ", eligible.size(),
                                                   " buckets, but the plan has ", n));
  }
  for (size_t k = 0; k < n; ++k) {
    const std::vector<int>& ranks = eligible[k];
    if (ranks.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bucket ", k, " has no eligible rank: no member holds all of its tensors"));
    }
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] < 0 || (i > 0 && ranks[i] <= ranks[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "bucket ", k, ": eligible ranks must be non-negative and strictly ascending"));
      }
    }
  }
  // Fewest eligible ranks first; stable, so bucket order among equals. With the same ranks for
  // every bucket this is plain bucket order, which is today's rule (cluster_update.cc BucketRoots).
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return eligible[a].size() < eligible[b].size(); });
  std::map<int, uint64_t> assigned;  // bytes so far, per rank that has been eligible
  std::vector<int> roots(n, -1);
  for (size_t k : order) {
    int best = -1;
    uint64_t best_bytes = 0;
    // Ascending ranks: a strict < keeps the lowest rank among ties.
    for (int r : eligible[k]) {
      const uint64_t bytes = assigned[r];
      if (best < 0 || bytes < best_bytes) {
        best = r;
        best_bytes = bytes;
      }
    }
    assigned[best] += plan.buckets[k].used_bytes;
    roots[k] = best;
  }
  return roots;
}

}  // namespace ckpt::daemon
