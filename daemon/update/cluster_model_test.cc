#include "daemon/update/cluster_model.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "daemon/update/bucket_roots.h"

namespace ckpt::daemon {
namespace {

constexpr uint64_t kGB = 1000000000;  // a multiple of 256: one tensor fills a bucket exactly

std::vector<PlanTensor> Tensors(const std::vector<uint64_t>& sizes) {
  std::vector<PlanTensor> out;
  uint64_t host = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    out.push_back({"t" + std::to_string(i), host, sizes[i]});
    host += (sizes[i] + 255) / 256 * 256;
  }
  return out;
}

// `n` buckets of 1 GB (one tensor each) cut for `gpus` uploaders.
UpdatePlan GigabyteBuckets(int n, int gpus) {
  auto plan = PlanUpdate(Tensors(std::vector<uint64_t>(n, kGB)), kGB, gpus);
  REQUIRE(plan.ok());
  REQUIRE(plan->buckets.size() == static_cast<size_t>(n));
  return *plan;
}

// No latencies or pipeline fill, so that times are bytes / rates.
ClusterTopology Bare(int members, int gpus) {
  ClusterTopology t;
  t.members = members;
  t.gpus_per_member = gpus;
  t.bucket_latency_s = 0;
  t.collective_latency_s = 0;
  t.hop_latency_s = 0;
  t.chunk_bytes = 0;
  t.nic_via_pcie = false;
  return t;
}

double Bound(const ClusterModelResult& r, const std::string& prefix) {
  for (const auto& b : r.bounds) {
    if (b.resource.rfind(prefix, 0) == 0) return b.seconds;
  }
  FAIL("no bound " << prefix);
  return -1;
}

TEST_CASE("one GPU: uploads back to back, no broadcast, bound by H2D") {
  auto plan = GigabyteBuckets(4, 1);
  auto t = Bare(1, 1);
  t.h2d_gbps = 50;
  auto r = ModelClusterUpdate(plan, {0, 0, 0, 0}, t);
  REQUIRE(r.ok());
  // 4 x 1 GB at 50 GB/s: 0.02 s each; the slots never hold an upload back.
  CHECK(r->predicted_s == Approx(0.08));
  CHECK(r->lower_bound_s == Approx(0.08));
  CHECK(r->bound_by.rfind("aggregate H2D", 0) == 0);
  CHECK(r->buckets[2].upload_start == Approx(0.04));
  CHECK(r->buckets[3].broadcast_end == Approx(0.08));
  CHECK(r->bucket_bytes_total == 4 * kGB);
  CHECK(r->member_upload_bytes == std::vector<uint64_t>{4 * kGB});
}

TEST_CASE("two GPUs of one member: halves uploaded, NVLink spreads the rest, overlapped") {
  auto plan = GigabyteBuckets(2, 2);
  auto t = Bare(1, 2);
  t.h2d_gbps = 50;
  t.intra_gbps = 100;
  auto r = ModelClusterUpdate(plan, {0, 0}, t);
  REQUIRE(r.ok());
  // Upload 0.5 GB per GPU: 0.01 s; broadcast: each GPU receives the other 0.5 GB at 100 GB/s:
  // 0.005 s. U0 [0, .01], X0 [.01, .015], U1 [.01, .02], X1 [.02, .025].
  CHECK(r->buckets[0].broadcast_start == Approx(0.01));
  CHECK(r->buckets[0].broadcast_end == Approx(0.015));
  CHECK(r->buckets[1].upload_start == Approx(0.01));
  CHECK(r->predicted_s == Approx(0.025));
  CHECK(Bound(*r, "H2D per GPU") == Approx(0.02));
  CHECK(Bound(*r, "NVLink ingress per GPU") == Approx(0.01));
  CHECK(Bound(*r, "broadcasts") == Approx(0.01));
  CHECK(r->lower_bound_s == Approx(0.02));
  CHECK(r->broadcasts_by_nvlink == 2);
  CHECK(r->broadcasts_by_nic + r->broadcasts_by_pcie == 0);
}

TEST_CASE("one slot: the next upload waits for the workers to release the bucket") {
  auto plan = GigabyteBuckets(2, 2);
  auto t = Bare(1, 2);
  t.h2d_gbps = 50;
  t.intra_gbps = 100;
  t.slots = 1;
  t.bucket_latency_s = 0.001;
  auto r = ModelClusterUpdate(plan, {0, 0}, t);
  REQUIRE(r.ok());
  // Released at .015 + .001; U1 [.016, .026], X1 [.026, .031], released .032.
  CHECK(r->buckets[0].released == Approx(0.016));
  CHECK(r->buckets[1].upload_start == Approx(0.016));
  CHECK(r->predicted_s == Approx(0.032));
  CHECK(Bound(*r, "per-bucket latency") == Approx(0.002));
  // Two slots: the upload of bucket 1 no longer waits.
  t.slots = 2;
  r = ModelClusterUpdate(plan, {0, 0}, t);
  REQUIRE(r.ok());
  CHECK(r->predicted_s == Approx(0.026));
}

TEST_CASE("two members, whole on both: broadcasts run one after another") {
  auto plan = GigabyteBuckets(2, 1);
  auto t = Bare(2, 1);
  t.h2d_gbps = 50;
  t.inter_gbps = 25;
  std::vector<std::vector<int>> eligible(2, {0, 1});
  auto roots = AssignBucketRoots(plan, eligible);
  REQUIRE(roots.ok());
  REQUIRE(*roots == std::vector<int>{0, 1});
  auto r = ModelClusterUpdate(plan, *roots, t);
  REQUIRE(r.ok());
  // Both upload at once (0.02 s); each broadcast moves 1 GB at 25 GB/s (0.04 s), in order:
  // X0 [.02, .06], X1 [.06, .10].
  CHECK(r->buckets[1].upload_start == Approx(0.0));
  CHECK(r->buckets[1].broadcast_start == Approx(0.06));
  CHECK(r->predicted_s == Approx(0.10));
  CHECK(Bound(*r, "NIC ingress") == Approx(0.04));
  CHECK(Bound(*r, "NIC egress") == Approx(0.04));  // ring of 2: the root sends, the other not
  CHECK(Bound(*r, "broadcasts") == Approx(0.08));
  CHECK(r->lower_bound_s == Approx(0.08));
  CHECK(r->bound_by.rfind("broadcasts", 0) == 0);
  CHECK(r->member_upload_bytes == std::vector<uint64_t>{kGB, kGB});
}

TEST_CASE("NIC receptions share the GPU's PCIe link with its uploads") {
  auto plan = GigabyteBuckets(2, 1);
  auto t = Bare(2, 1);
  t.h2d_gbps = 50;
  t.inter_gbps = 100;
  auto r = ModelClusterUpdate(plan, {0, 1}, t);
  REQUIRE(r.ok());
  // Not shared: X = 1 GB / 100 = 0.01 s. U0, U1 [0, .02]; X0 [.02, .03]; X1 [.03, .04].
  CHECK(r->predicted_s == Approx(0.04));
  t.nic_via_pcie = true;
  r = ModelClusterUpdate(plan, {0, 1}, t);
  REQUIRE(r.ok());
  // Shared: a reception takes the receiver's PCIe for 0.02 s, so X = 0.02 s. U1 fits before X0's
  // reception on member 1: U0, U1 [0, .02]; X0 [.02, .04] (member 1 receives); X1 [.04, .06].
  CHECK(r->buckets[1].upload_start == Approx(0.0));
  CHECK(r->buckets[0].broadcast_end == Approx(0.04));
  CHECK(r->predicted_s == Approx(0.06));
  // Each GPU's PCIe carries 1 GB uploaded and 1 GB received.
  CHECK(Bound(*r, "PCIe per GPU") == Approx(0.04));
  CHECK(Bound(*r, "broadcasts") == Approx(0.04));
  CHECK(r->broadcasts_by_pcie == 2);
}

TEST_CASE("an upload waits for the PCIe link when a reception holds it") {
  // Member 0 uploads buckets 0 and 2, member 1 bucket 1, one GPU each, two slots.
  auto plan = GigabyteBuckets(3, 1);
  auto t = Bare(2, 1);
  t.h2d_gbps = 50;
  t.inter_gbps = 100;
  t.nic_via_pcie = true;
  auto r = ModelClusterUpdate(plan, {0, 1, 0}, t);
  REQUIRE(r.ok());
  // U0 [0,.02] m0, U1 [0,.02] m1, X0 [.02,.04] (m1's PCIe), X1 [.04,.06] (m0's PCIe).
  // Bucket 2 (slot 0) may start at .04 (bucket 0 released), but m0's PCIe receives X1 until .06:
  // U2 [.06,.08], X2 [.08,.10].
  CHECK(r->buckets[2].upload_start == Approx(0.06));
  CHECK(r->predicted_s == Approx(0.10));
}

TEST_CASE("ring and tree across members: bytes, hops and the first chunk") {
  auto plan = GigabyteBuckets(1, 1);
  auto t = Bare(4, 1);
  t.h2d_gbps = 50;
  t.inter_gbps = 10;
  t.chunk_bytes = 1000000;
  t.hop_latency_s = 1e-5;
  t.collective_latency_s = 2e-5;
  auto r = ModelClusterUpdate(plan, {0}, t);
  REQUIRE(r.ok());
  // Ring: 1 GB / 10 GB/s + 3 hops x (1 MB / 10 GB/s + 10 us) + 20 us.
  const double ring = 2e-5 + 0.1 + 3 * (1e-4 + 1e-5);
  CHECK(r->buckets[0].broadcast_end - r->buckets[0].broadcast_start == Approx(ring));
  CHECK(r->predicted_s == Approx(0.02 + ring));
  CHECK(Bound(*r, "NIC egress") == Approx(0.1));  // every member but the last forwards 1 GB
  t.broadcast = CrossMemberBroadcast::kTree;
  r = ModelClusterUpdate(plan, {0}, t);
  REQUIRE(r.ok());
  // Tree of 4: depth 2, the root sends twice: 2 x 0.1 s + 2 x (2 x 1e-4 + 1e-5) + 20 us.
  const double tree = 2e-5 + 0.2 + 2 * (2e-4 + 1e-5);
  CHECK(r->buckets[0].broadcast_end - r->buckets[0].broadcast_start == Approx(tree));
  CHECK(Bound(*r, "NIC egress") == Approx(0.2));
}

TEST_CASE("several members of several GPUs: every bound by hand") {
  // 4 buckets of 1 GB, 2 members of 2 GPUs, bucket k from member k % 2.
  auto plan = GigabyteBuckets(4, 2);
  auto t = Bare(2, 2);
  t.h2d_gbps = 40;
  t.intra_gbps = 200;
  t.inter_gbps = 50;
  t.nic_via_pcie = true;
  auto r = ModelClusterUpdate(plan, {0, 1, 0, 1}, t);
  REQUIRE(r.ok());
  // Per GPU: uploads 2 x 0.5 GB, receptions 2 x 0.5 GB through PCIe: 2 GB / 40 = 0.05 s;
  // H2D alone 1 GB / 40 = 0.025 s; aggregate: 4 GB / (4 x 40) = 0.025 s.
  CHECK(Bound(*r, "aggregate H2D of the 4 uploading GPUs") == Approx(0.025));
  CHECK(Bound(*r, "H2D per GPU") == Approx(0.025));
  CHECK(Bound(*r, "PCIe per GPU") == Approx(0.05));
  // NVLink: 4 x 0.5 GB / 200 = 0.01 s; NIC: 2 GB / 50 = 0.04 s each way.
  CHECK(Bound(*r, "NVLink ingress per GPU") == Approx(0.01));
  CHECK(Bound(*r, "NIC ingress") == Approx(0.04));
  // A broadcast: max(NVLink .0025, NIC .02, reception .0125) = 0.02 s; four of them: 0.08 s.
  CHECK(Bound(*r, "broadcasts") == Approx(0.08));
  CHECK(r->lower_bound_s == Approx(0.08));
  CHECK(r->broadcasts_by_nic == 4);
  // Schedule: U0 m0 [0,.0125], U1 m1 [0,.0125]; X0 [.0125,.0325] (m1 receives [.0125,.025]);
  // X1 [.0325,.0525] (m0 receives [.0325,.045]). U2 (slot 0, free at .0325) waits for m0's
  // reception: [.045,.0575]; X2 [.0575,.0775] (m1 receives [.0575,.07]). U3 (slot 1, free at
  // .0525) does not fit on m1 before that reception: [.07,.0825]; X3 [.0825,.1025].
  CHECK(r->buckets[2].upload_start == Approx(0.045));
  CHECK(r->buckets[3].upload_start == Approx(0.07));
  CHECK(r->predicted_s == Approx(0.1025));
}

TEST_CASE("eligible members and parts") {
  // Tensors of 3, 3, 2, 6 (split in 4 + 2), 1 KiB through 4 KiB buckets:
  // b0 = [t0], b1 = [t1], b2 = [t2], b3 = [t3 piece 0], b4 = [t3 piece 1, t4].
  auto tensors = Tensors({3072, 3072, 2048, 6144, 1024});
  auto plan = PlanUpdate(tensors, 4096, 1);
  REQUIRE(plan.ok());
  REQUIRE(plan->buckets.size() == 5);
  auto e = EligibleMembers(*plan, {{0, 1}, {1}, {2, 0}, {0, 2}, {2}});
  REQUIRE(e.ok());
  CHECK((*e)[0] == std::vector<int>{0, 1});
  CHECK((*e)[2] == std::vector<int>{0, 2});  // sorted
  CHECK((*e)[3] == std::vector<int>{0, 2});
  CHECK((*e)[4] == std::vector<int>{2});  // t3 on {0, 2} and t4 on {2}
  CHECK(!EligibleMembers(*plan, {{0}, {0}}).ok());

  // Parts: 15 KiB of buckets (3, 3, 2, 4, 3 KiB used); b4 starts with a piece, so it cannot
  // start a part. Two parts: of the cuts before b2 (6 KiB) and b3 (8 KiB), b3 is nearer 7.5 KiB.
  auto h = PartsHolders(*plan, 5, 2);
  CHECK(h == std::vector<std::vector<int>>{{0}, {0}, {0}, {1}, {1}});
  e = EligibleMembers(*plan, h);
  REQUIRE(e.ok());
  for (const auto& ranks : *e) CHECK(ranks.size() == 1);  // every bucket within one part
  // More members than cuts: the last ones hold nothing.
  h = PartsHolders(*plan, 5, 8);
  CHECK(h == std::vector<std::vector<int>>{{0}, {1}, {2}, {3}, {3}});
  // Equal parts of equal buckets: N members upload 1/N each.
  auto equal = GigabyteBuckets(12, 2);
  for (int n : {1, 2, 3, 4}) {
    auto parts = PartsHolders(equal, 12, n);
    auto eligible = EligibleMembers(equal, parts);
    REQUIRE(eligible.ok());
    auto roots = AssignBucketRoots(equal, *eligible);
    REQUIRE(roots.ok());
    auto t = Bare(n, 2);
    t.intra_gbps = 100;
    t.inter_gbps = 50;
    auto r = ModelClusterUpdate(equal, *roots, t);
    REQUIRE(r.ok());
    for (uint64_t bytes : r->member_upload_bytes) CHECK(bytes == 12 * kGB / n);
  }
}

TEST_CASE("refused: topologies that cannot carry the plan") {
  auto plan = GigabyteBuckets(2, 2);
  auto t = Bare(1, 2);
  t.intra_gbps = 100;
  CHECK(ModelClusterUpdate(plan, {0, 0}, t).ok());
  CHECK(!ModelClusterUpdate(plan, {0}, t).ok());     // roots for 1 of 2 buckets
  CHECK(!ModelClusterUpdate(plan, {0, 1}, t).ok());  // member 1 of 1
  auto bad = t;
  bad.gpus_per_member = 4;  // the plan has 2 uploaders
  CHECK(!ModelClusterUpdate(plan, {0, 0}, bad).ok());
  bad = t;
  bad.intra_gbps = 0;
  CHECK(!ModelClusterUpdate(plan, {0, 0}, bad).ok());
  bad = t;
  bad.members = 2;  // no inter_gbps
  CHECK(!ModelClusterUpdate(plan, {0, 1}, bad).ok());
  bad = t;
  bad.slots = 0;
  CHECK(!ModelClusterUpdate(plan, {0, 0}, bad).ok());
  bad = t;
  bad.h2d_gbps = 0;
  CHECK(!ModelClusterUpdate(plan, {0, 0}, bad).ok());
}

}  // namespace
}  // namespace ckpt::daemon
