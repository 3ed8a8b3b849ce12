// Which member uploads each bucket of a cluster update (the bucket's root: its uploader copies it
// from its host store, then one broadcast from it fills every member's slot).
//
// Members may hold different parts of a version (a trainer pushed each part to one member, or a
// member kept a host copy of part of it), so each bucket names the ranks that hold all of its
// tensors. The assignment balances bytes over those ranks: a bucket that only few ranks hold is
// placed first, while the others still have room to even out what it costs its root.
#ifndef CKPT_DAEMON_UPDATE_BUCKET_ROOTS_H_
#define CKPT_DAEMON_UPDATE_BUCKET_ROOTS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "daemon/update/update_plan.h"

namespace ckpt::daemon {

// eligible[k]: the ranks (ascending, non-empty) that hold every tensor of bucket k of `plan` and
// may upload it. Returns the rank each bucket comes from: buckets with fewer eligible ranks are
// assigned first (in bucket order among equals), each to its eligible rank that has been assigned
// the fewest bytes (Bucket::used_bytes) so far, ties to the lowest rank. A pure function: the same
// on every member. INVALID_ARGUMENT when eligible.size() differs from the plan's bucket count or a
// bucket has no eligible rank (also for a negative rank, or ranks not strictly ascending).
absl::StatusOr<std::vector<int>> AssignBucketRoots(const UpdatePlan& plan,
                                                   const std::vector<std::vector<int>>& eligible);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_BUCKET_ROOTS_H_
