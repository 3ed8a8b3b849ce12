// cluster_model: the planner-level model of a cluster update (issue 13; daemon/update/
// cluster_model.h). No GPU, no daemon: it plans a tensor list with the real PlanUpdate (one
// segment per GPU of a member), picks each bucket's root member with the real AssignBucketRoots,
// and prints the total bytes, each resource's busy time (the schedule's lower bound is the
// largest) and the predicted time of the pipelined schedule, with what bounds it.
//
// Tensor lists: --model (built in: qwen2.5-32b, the update_bench list; glm-4.5-air;
// qwen3-235b-a22b; kimi-k2; deepseek-v3.1; see tests/bench/model_tensors.h) or --tensors FILE
// (a JSON array of {name, shape, dtype[, holders]}). Who holds what: --holding all (every member
// holds the whole version), one (member 0 alone), parts (member m alone holds the m-th of N parts
// of about equal bytes), json (the file's "holders").
//
// Rates are GB/s (10^9 bytes/s): --h2d-gbps per GPU (every GPU of a member copying at once),
// --intra-gbps NVLink per GPU and direction, --inter-gbps per MEMBER and direction (all its NICs
// together; --inter-gbps-per-gpu instead gives one NIC per GPU and multiplies).
//
//   cluster_model --model kimi-k2 --members 16 --gpus-per-member 16 ...
//   bazel run //tests/bench:cluster_model -- --model glm-4.5-air --gpus-per-member 8 \
//       --h2d-gbps 50 --intra-gbps 200
#include "daemon/update/cluster_model.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "daemon/update/bucket_roots.h"
#include "daemon/update/update_plan.h"
#include "tests/bench/model_tensors.h"

namespace {

using ckpt::bench::ModelTensor;
using ckpt::daemon::ClusterTopology;

int Fail(const std::string& what) {
  std::fprintf(stderr, "cluster_model: %s\n", what.c_str());
  return 1;
}

std::string Gb(uint64_t bytes) { return absl::StrFormat("%.2f GB", bytes / 1e9); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ckpt-engine cluster update model (no GPU)");
  std::string model = "qwen2.5-32b", tensors_file, holding = "all", broadcast = "ring";
  int layers = 64;
  ClusterTopology t;
  double inter_per_gpu = 0;
  uint64_t bucket_mib = 2048, chunk_kib = t.chunk_bytes >> 10;
  double bucket_latency_us = t.bucket_latency_s * 1e6;
  double collective_latency_us = t.collective_latency_s * 1e6;
  double hop_latency_us = t.hop_latency_s * 1e6;
  bool timeline = false, no_embeddings = false;
  app.add_option("--model", model,
                 "built-in tensor list (qwen2.5-32b, glm-4.5-air, "
                 "qwen3-235b-a22b, kimi-k2, deepseek-v3.1)");
  app.add_option("--layers", layers, "decoder layers of qwen2.5-32b (64: the model)");
  app.add_flag("--no-embeddings", no_embeddings,
               "qwen2.5-32b without embedding, final norm and lm_head (update_bench's small one)");
  app.add_option("--tensors", tensors_file, "JSON tensor list instead of --model");
  app.add_option("--holding", holding, "all | one | parts | json (who holds the version)");
  app.add_option("--members", t.members, "members (nodes, one daemon each)");
  app.add_option("--gpus-per-member", t.gpus_per_member, "GPUs per member (uploaders of a bucket)");
  app.add_option("--h2d-gbps", t.h2d_gbps, "pinned host->device GB/s per GPU, all GPUs at once");
  app.add_option("--intra-gbps", t.intra_gbps, "NVLink GB/s per GPU and direction");
  app.add_option("--inter-gbps", t.inter_gbps,
                 "network GB/s per member and direction (all its NICs together)");
  app.add_option("--inter-gbps-per-gpu", inter_per_gpu,
                 "network GB/s per GPU (one NIC each); sets --inter-gbps to G times it");
  app.add_flag("--nic-via-pcie,!--no-nic-via-pcie", t.nic_via_pcie,
               "NIC bytes enter a GPU through its PCIe link, shared with its uploads (default on)");
  app.add_option("--broadcast", broadcast, "ring | tree, across members");
  app.add_option("--bucket-mib", bucket_mib, "bucket_bytes in MiB");
  app.add_option("--slots", t.slots, "slots per GPU (K)");
  app.add_option("--bucket-latency-us", bucket_latency_us,
                 "per bucket: workers told, load, ack, slot released");
  app.add_option("--collective-latency-us", collective_latency_us, "to start one broadcast");
  app.add_option("--hop-latency-us", hop_latency_us, "per network hop between members");
  app.add_option("--chunk-kib", chunk_kib, "a broadcast's pipelining unit (0: no fill time)");
  app.add_flag("--timeline", timeline, "print every bucket's times");
  CLI11_PARSE(app, argc, argv);

  if (inter_per_gpu > 0) t.inter_gbps = inter_per_gpu * t.gpus_per_member;
  if (broadcast == "ring") {
    t.broadcast = ckpt::daemon::CrossMemberBroadcast::kRing;
  } else if (broadcast == "tree") {
    t.broadcast = ckpt::daemon::CrossMemberBroadcast::kTree;
  } else {
    return Fail("--broadcast must be ring or tree");
  }
  t.bucket_latency_s = bucket_latency_us * 1e-6;
  t.collective_latency_s = collective_latency_us * 1e-6;
  t.hop_latency_s = hop_latency_us * 1e-6;
  t.chunk_bytes = chunk_kib << 10;
  const uint64_t bucket_bytes = bucket_mib << 20;

  std::vector<ModelTensor> tensors;
  std::string source;
  if (!tensors_file.empty()) {
    std::ifstream in(tensors_file);
    if (!in) return Fail("cannot read " + tensors_file);
    std::stringstream text;
    text << in.rdbuf();
    auto r = ckpt::bench::TensorsFromJson(text.str());
    if (!r.ok()) return Fail(tensors_file + ": " + std::string(r.status().message()));
    tensors = *std::move(r);
    source = tensors_file;
  } else if (model == "qwen2.5-32b") {
    tensors = ckpt::bench::Qwen25_32B(layers, !no_embeddings);
    source = absl::StrFormat("qwen2.5-32b (%d layers%s)", layers,
                             no_embeddings ? ", no embeddings" : "");
  } else {
    auto r = ckpt::bench::BuiltinModel(model);
    if (!r.ok()) return Fail(std::string(r.status().message()));
    tensors = *std::move(r);
    source = model;
  }
  auto plan_tensors = ckpt::bench::ToPlanTensors(tensors, bucket_bytes);
  if (!plan_tensors.ok()) return Fail(std::string(plan_tensors.status().message()));
  auto plan = ckpt::daemon::PlanUpdate(*plan_tensors, bucket_bytes, t.gpus_per_member);
  if (!plan.ok()) return Fail(std::string(plan.status().message()));

  std::vector<std::vector<int>> holders;
  const int n = std::max(1, t.members);
  if (holding == "all") {
    std::vector<int> everyone;
    for (int m = 0; m < n; ++m) everyone.push_back(m);
    holders.assign(tensors.size(), everyone);
  } else if (holding == "one") {
    holders.assign(tensors.size(), {0});
  } else if (holding == "parts") {
    holders = ckpt::daemon::PartsHolders(*plan, static_cast<int>(tensors.size()), n);
  } else if (holding == "json") {
    for (const ModelTensor& x : tensors) {
      for (int m : x.holders) {
        if (m >= n) return Fail(absl::StrFormat("'%s' held by member %d of %d", x.name, m, n));
      }
      holders.push_back(x.holders);
    }
  } else {
    return Fail("--holding must be all, one, parts or json");
  }
  auto eligible = ckpt::daemon::EligibleMembers(*plan, holders);
  if (!eligible.ok()) return Fail(std::string(eligible.status().message()));
  auto roots = ckpt::daemon::AssignBucketRoots(*plan, *eligible);
  if (!roots.ok()) return Fail(std::string(roots.status().message()));
  auto r = ckpt::daemon::ModelClusterUpdate(*plan, *roots, t);
  if (!r.ok()) return Fail(std::string(r.status().message()));

  uint64_t up_min = UINT64_MAX, up_max = 0;
  for (uint64_t b : r->member_upload_bytes) {
    up_min = std::min(up_min, b);
    up_max = std::max(up_max, b);
  }
  std::printf("tensors:   %s: %zu tensors, %s of tensors (%.1f GiB), %s through buckets\n",
              source.c_str(), tensors.size(), Gb(r->tensor_bytes).c_str(),
              r->tensor_bytes / double(1ull << 30), Gb(r->bucket_bytes_total).c_str());
  std::printf(
      "plan:      %zu buckets of up to %llu MiB, %d segments each (one per GPU of the "
      "root member); holding '%s': members upload %s to %s\n",
      plan->buckets.size(), static_cast<unsigned long long>(bucket_mib), t.gpus_per_member,
      holding.c_str(), Gb(up_min).c_str(), Gb(up_max).c_str());
  std::printf(
      "topology:  %d members x %d GPUs; H2D %.1f GB/s per GPU; NVLink %.1f GB/s per GPU; "
      "network %.1f GB/s per member (%s, NIC via PCIe: %s); %d slots; latencies: bucket "
      "%.0f us, collective %.0f us, hop %.0f us, chunk %llu KiB\n",
      t.members, t.gpus_per_member, t.h2d_gbps, t.intra_gbps, t.inter_gbps, broadcast.c_str(),
      t.nic_via_pcie ? "yes" : "no", t.slots, bucket_latency_us, collective_latency_us,
      hop_latency_us, static_cast<unsigned long long>(chunk_kib));
  std::printf("resources (busy time each; the largest is the schedule's lower bound):\n");
  for (const auto& b : r->bounds) {
    std::printf("  %-62s %8.3f s%s\n", b.resource.c_str(), b.seconds,
                b.resource == r->bound_by ? "  <- bound" : "");
  }
  if (timeline) {
    std::printf("bucket  root  upload            broadcast          released\n");
    for (size_t k = 0; k < r->buckets.size(); ++k) {
      const auto& b = r->buckets[k];
      std::printf("%6zu  %4d  %7.4f-%7.4f  %7.4f-%7.4f  %8.4f\n", k, b.root, b.upload_start,
                  b.upload_end, b.broadcast_start, b.broadcast_end, b.released);
    }
  }
  const int bcasts = r->broadcasts_by_nvlink + r->broadcasts_by_nic + r->broadcasts_by_pcie;
  if (bcasts > 0) {
    std::printf(
        "broadcasts: %d, their time set by NVLink in %d, the NICs in %d, PCIe receptions "
        "in %d\n",
        bcasts, r->broadcasts_by_nvlink, r->broadcasts_by_nic, r->broadcasts_by_pcie);
  }
  std::printf("lower bound: %.3f s (%s)\n", r->lower_bound_s, r->bound_by.c_str());
  std::printf("predicted:   %.3f s = %.2f x the lower bound; %.1f GB/s of tensors to every GPU\n",
              r->predicted_s, r->lower_bound_s > 0 ? r->predicted_s / r->lower_bound_s : 0.0,
              r->predicted_s > 0 ? r->tensor_bytes / r->predicted_s / 1e9 : 0.0);
  return 0;
}
