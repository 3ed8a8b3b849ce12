// A planner-level model of a cluster update (issue 13): how long the plan of a version takes to
// reach every GPU of every member, from the plan itself (PlanUpdate's buckets and segments), the
// bucket roots (AssignBucketRoots) and a topology of links, without a GPU or a daemon.
//
// What it models (docs/benchmarks.md, "Model of scale (issue 13)", says the same with figures):
//   - N members of G GPUs each; the plan has G uploaders, so every bucket is cut into G segments
//     and its root member's GPU g uploads segment g over its own PCIe link (h2d_gbps per GPU).
//   - Broadcast of a bucket: every GPU of every member ends with the whole bucket. Within a member
//     each GPU receives the bucket less its own segment over NVLink (intra_gbps per GPU and
//     direction). Across members the bucket travels once per member: ring (each member but the
//     last from the root forwards it) or binary tree (each inner member sends it twice), at
//     inter_gbps per member and direction (the member's NICs together), rail-aligned: GPU g's
//     NIC carries segment g. With nic_via_pcie, the bytes a GPU receives from its NIC enter it
//     through the same PCIe link as its uploads (GPU and NIC behind one PCIe switch, as on
//     HGX-class H800 / H20 nodes), so a GPU's PCIe link carries 1/G of every bucket, uploaded or
//     received.
//   - The pipeline: K slots per GPU; bucket k uses slot k % K on every GPU of every member. Its
//     upload starts once bucket k - K was released everywhere and the root member's copy streams
//     are done with its previous upload; its broadcast starts once its upload ended and the
//     previous broadcast ended (collectives run one after another on one communicator); then
//     every member's workers load it (bucket_latency_s: BucketReady, the worker's copy, the ack)
//     and its slot is released. Uploads of later buckets overlap broadcasts of earlier ones.
//   - Per bucket costs: a broadcast pays collective_latency_s to start, and the time for its first
//     chunk (chunk_bytes) to reach the far end: (G - 1) NVLink hops and, across members, N - 1
//     (ring) or ceil(log2 N) (tree) NIC hops of hop_latency_s plus a chunk at a rail's rate.
//   - Link sharing is modelled as exclusive use: where an upload and a reception need one PCIe
//     link, one waits for the other (the total busy time is what matters when that link bounds).
//     No congestion, no stragglers, no NCCL protocol overhead beyond the latencies above.
//
// All functions are pure. Rates are in GB/s (10^9 bytes per second).
#ifndef CKPT_DAEMON_UPDATE_CLUSTER_MODEL_H_
#define CKPT_DAEMON_UPDATE_CLUSTER_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/update/update_plan.h"

namespace ckpt::daemon {

enum class CrossMemberBroadcast { kRing, kTree };

struct ClusterTopology {
  int members = 1;
  int gpus_per_member = 1;
  double h2d_gbps = 50;   // pinned host -> device, per GPU, with every GPU of the member copying
  double intra_gbps = 0;  // NVLink, per GPU and direction; needed when gpus_per_member > 1
  // Per member and direction, all its NICs together; needed when members > 1.
  double inter_gbps = 0;
  bool nic_via_pcie = true;  // a GPU's NIC traffic enters it through its own PCIe link
  CrossMemberBroadcast broadcast = CrossMemberBroadcast::kRing;
  int slots = 2;  // K slots per GPU
  // Per bucket: workers told, their copy out of the slot, the acks; about 2 ms measured on one
  // H100 with 2 GiB buckets (docs/benchmarks.md, 2026-11-23: worker loads 0.073 s / 34 buckets).
  double bucket_latency_s = 2e-3;
  double collective_latency_s = 20e-6;  // to start one (grouped) broadcast
  double hop_latency_s = 5e-6;          // per NIC hop between members
  uint64_t chunk_bytes = 512 << 10;     // a broadcast's pipelining unit (0: no fill time)
};

// One resource's total busy time for the plan: no schedule of this plan and these roots can end
// before it.
struct ResourceBound {
  std::string resource;  // "H2D per GPU (member 3)", "NIC ingress (member 0)", ...
  double seconds = 0;
};

struct BucketTiming {
  int root = 0;
  double upload_start = 0, upload_end = 0;
  double broadcast_start = 0, broadcast_end = 0;
  double released = 0;
};

struct ClusterModelResult {
  uint64_t bucket_bytes_total = 0;  // sum of used_bytes (tensor bytes plus alignment padding)
  uint64_t tensor_bytes = 0;
  std::vector<uint64_t> member_upload_bytes;  // tensor bytes each member's GPUs copy from its host
  std::vector<ResourceBound> bounds;          // the largest per kind, in a fixed order
  double lower_bound_s = 0;                   // the largest of `bounds`
  std::string bound_by;                       // its resource
  double predicted_s = 0;                     // when the last bucket is released everywhere
  // Which link set each broadcast's duration (the longest of its terms).
  int broadcasts_by_nvlink = 0, broadcasts_by_nic = 0, broadcasts_by_pcie = 0;
  std::vector<BucketTiming> buckets;
};

// Models `plan` (PlanUpdate with uploaders == topology.gpus_per_member) with bucket k coming from
// member roots[k] (0 <= root < members). INVALID_ARGUMENT for a topology that cannot carry the
// plan (a rate <= 0 that is needed, fewer than 1 member, GPU or slot) or roots that do not fit.
absl::StatusOr<ClusterModelResult> ModelClusterUpdate(const UpdatePlan& plan,
                                                      const std::vector<int>& roots,
                                                      const ClusterTopology& topology);

// Per tensor, the members that hold it -> per bucket, the members that hold every tensor of it
// (ascending), as AssignBucketRoots takes them. INVALID_ARGUMENT when holders does not have one
// entry per tensor of the plan.
absl::StatusOr<std::vector<std::vector<int>>> EligibleMembers(
    const UpdatePlan& plan, const std::vector<std::vector<int>>& holders);

// Holders for a version cut into `members` parts of about equal bytes, part m held by member m
// alone (a trainer that pushed each part to one member). Parts are cut only where a bucket starts
// with the first bytes of a tensor, so every bucket lies within one part; `tensor_count` is the
// planner's input size. Members may end with nothing when there are fewer such cuts than members.
std::vector<std::vector<int>> PartsHolders(const UpdatePlan& plan, int tensor_count, int members);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_CLUSTER_MODEL_H_
