#include "daemon/update/cluster_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ckpt::daemon {
namespace {

constexpr double kGB = 1e9;

// Busy intervals of one link, sorted and disjoint. Used as exclusive: a new use goes into the
// first gap that fits it.
class Timeline {
 public:
  // The earliest start >= t of a free window of d seconds.
  double EarliestFit(double t, double d) const {
    for (const auto& [start, end] : busy_) {
      if (end <= t) continue;
      if (start >= t + d) break;  // the gap before this interval fits
      t = std::max(t, end);
    }
    return t;
  }
  void Reserve(double start, double d) {
    if (d <= 0) return;
    auto it = std::lower_bound(busy_.begin(), busy_.end(), std::make_pair(start, start));
    busy_.insert(it, {start, start + d});
  }

 private:
  std::vector<std::pair<double, double>> busy_;
};

int CeilLog2(int n) {
  int d = 0;
  while ((1 << d) < n) ++d;
  return d;
}

// Members in the order a broadcast from `root` visits them: root, root + 1, ... (mod n).
int Position(int member, int root, int n) { return (member - root + n) % n; }

// Bytes a member sends per byte of a bucket broadcast from `root`.
int SendsPerByte(CrossMemberBroadcast kind, int member, int root, int n) {
  const int p = Position(member, root, n);
  if (kind == CrossMemberBroadcast::kRing) return p == n - 1 ? 0 : 1;
  int children = 0;
  if (2 * p + 1 < n) ++children;
  if (2 * p + 2 < n) ++children;
  return children;
}

}  // namespace

absl::StatusOr<ClusterModelResult> ModelClusterUpdate(const UpdatePlan& plan,
                                                      const std::vector<int>& roots,
                                                      const ClusterTopology& t) {
  const int n = t.members, g = t.gpus_per_member;
  if (n < 1 || g < 1) return absl::InvalidArgumentError("members and GPUs per member must be >= 1");
  if (t.slots < 1) return absl::InvalidArgumentError("slots must be >= 1");
  if (plan.uploaders != g) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the plan has ", plan.uploaders, " uploaders, the topology ", g, " GPUs per member"));
  }
  if (!(t.h2d_gbps > 0)) return absl::InvalidArgumentError("h2d_gbps must be > 0");
  if (g > 1 && !(t.intra_gbps > 0)) {
    return absl::InvalidArgumentError("intra_gbps must be > 0 with several GPUs per member");
  }
  if (n > 1 && !(t.inter_gbps > 0)) {
    return absl::InvalidArgumentError("inter_gbps must be > 0 with several members");
  }
  if (t.bucket_latency_s < 0 || t.collective_latency_s < 0 || t.hop_latency_s < 0) {
    return absl::InvalidArgumentError("latencies must be >= 0");
  }
  const size_t nb = plan.buckets.size();
  if (roots.size() != nb) {
    return absl::InvalidArgumentError(
        absl::StrCat(roots.size(), " roots for a plan of ", nb, " buckets"));
  }
  for (size_t k = 0; k < nb; ++k) {
    if (roots[k] < 0 || roots[k] >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("bucket ", k, ": root ", roots[k], " is not a member (", n, " members)"));
    }
    if (static_cast<int>(plan.buckets[k].segments.size()) != g) {
      return absl::InvalidArgumentError(
          absl::StrCat("bucket ", k, " does not have ", g, " segments"));
    }
  }

  const double h2d = t.h2d_gbps * kGB, intra = t.intra_gbps * kGB, inter = t.inter_gbps * kGB;
  const bool receptions_use_pcie = t.nic_via_pcie && n > 1;
  ClusterModelResult out;
  out.tensor_bytes = plan.total_tensor_bytes;
  out.member_upload_bytes.assign(n, 0);
  out.buckets.resize(nb);

  // Busy bytes per resource, for the bounds.
  std::vector<std::vector<uint64_t>> up_bytes(n, std::vector<uint64_t>(g, 0));  // [member][gpu]
  std::vector<std::vector<uint64_t>> pcie_bytes(n, std::vector<uint64_t>(g, 0));
  std::vector<uint64_t> nvlink_bytes(g, 0);  // the same on every member
  std::vector<uint64_t> nic_in(n, 0), nic_out(n, 0);
  double broadcasts_s = 0;

  std::vector<Timeline> pcie(n);  // per member: its GPUs' PCIe links (they move in step)
  std::vector<double> copy_free(n, 0);
  double broadcast_free = 0, consume_free = 0;
  std::vector<double> released(nb, 0);

  for (size_t k = 0; k < nb; ++k) {
    const Bucket& b = plan.buckets[k];
    const int r = roots[k];
    const uint64_t s = b.used_bytes;
    out.bucket_bytes_total += s;
    uint64_t seg_max = 0, seg_min = std::numeric_limits<uint64_t>::max(), copy_max = 0;
    for (int u = 0; u < g; ++u) {
      const Segment& seg = b.segments[u];
      uint64_t copied = 0;
      for (const Copy& c : seg.copies) copied += c.bytes;
      seg_max = std::max(seg_max, seg.bytes);
      seg_min = std::min(seg_min, seg.bytes);
      copy_max = std::max(copy_max, copied);
      up_bytes[r][u] += copied;
      out.member_upload_bytes[r] += copied;
      pcie_bytes[r][u] += copied;
      for (int m = 0; m < n; ++m) {
        if (m != r && receptions_use_pcie) pcie_bytes[m][u] += seg.bytes;
      }
      nvlink_bytes[u] += s - seg.bytes;
    }
    for (int m = 0; m < n && n > 1; ++m) {
      if (m != r) nic_in[m] += s;
      nic_out[m] += s * static_cast<uint64_t>(SendsPerByte(t.broadcast, m, r, n));
    }

    // Durations.
    const double upload = static_cast<double>(copy_max) / h2d;
    const double chunk = static_cast<double>(std::min<uint64_t>(t.chunk_bytes, seg_max));
    const double recv_pcie = receptions_use_pcie ? static_cast<double>(seg_max) / h2d : 0;
    double broadcast = 0;
    if (n > 1 || g > 1) {
      double nvlink_t = 0, nic_t = 0;
      if (g > 1) nvlink_t = static_cast<double>(s - seg_min) / intra + (g - 1) * chunk / intra;
      if (n > 1) {
        const double rail = inter / g;
        if (t.broadcast == CrossMemberBroadcast::kRing) {
          nic_t = static_cast<double>(s) / inter + (n - 1) * (chunk / rail + t.hop_latency_s);
        } else {
          nic_t = 2.0 * static_cast<double>(s) / inter +
                  CeilLog2(n) * (2 * chunk / rail + t.hop_latency_s);
        }
      }
      const double longest = std::max({nvlink_t, nic_t, recv_pcie});
      if (longest == nvlink_t) {
        ++out.broadcasts_by_nvlink;
      } else if (longest == nic_t) {
        ++out.broadcasts_by_nic;
      } else {
        ++out.broadcasts_by_pcie;
      }
      broadcast = t.collective_latency_s + longest;
    }
    broadcasts_s += broadcast;

    // Schedule.
    const double slot_free = k >= static_cast<size_t>(t.slots) ? released[k - t.slots] : 0;
    double up_start = pcie[r].EarliestFit(std::max(slot_free, copy_free[r]), upload);
    pcie[r].Reserve(up_start, upload);
    copy_free[r] = up_start + upload;
    double x_start = std::max(copy_free[r], broadcast_free);
    if (receptions_use_pcie && recv_pcie > 0) {
      // The first time every receiving member's PCIe links are free for the reception.
      for (bool moved = true; moved;) {
        moved = false;
        for (int m = 0; m < n; ++m) {
          if (m == r) continue;
          const double fit = pcie[m].EarliestFit(x_start, recv_pcie);
          if (fit > x_start) {
            x_start = fit;
            moved = true;
          }
        }
      }
      for (int m = 0; m < n; ++m) {
        if (m != r) pcie[m].Reserve(x_start, recv_pcie);
      }
    }
    broadcast_free = x_start + broadcast;
    consume_free = std::max(broadcast_free, consume_free) + t.bucket_latency_s;
    released[k] = consume_free;
    out.buckets[k] = {r, up_start, up_start + upload, x_start, broadcast_free, consume_free};
  }
  out.predicted_s = nb == 0 ? 0 : released[nb - 1];

  // Bounds: the busiest instance of each resource.
  auto add = [&](std::string name, double seconds) {
    out.bounds.push_back({std::move(name), seconds});
  };
  int uploading = 0;
  for (uint64_t v : out.member_upload_bytes) uploading += v > 0 ? 1 : 0;
  uint64_t copied_total = 0;
  for (const auto& per : up_bytes) {
    for (uint64_t v : per) copied_total += v;
  }
  if (uploading > 0) {
    add(absl::StrCat("aggregate H2D of the ", uploading * g, " uploading GPUs"),
        static_cast<double>(copied_total) / (uploading * g * h2d));
  }
  auto busiest = [&](const std::vector<std::vector<uint64_t>>& v, int* member) {
    uint64_t best = 0;
    *member = 0;
    for (int m = 0; m < n; ++m) {
      for (uint64_t x : v[m]) {
        if (x > best) {
          best = x;
          *member = m;
        }
      }
    }
    return best;
  };
  int m = 0;
  uint64_t most = busiest(up_bytes, &m);
  add(absl::StrCat("H2D per GPU (member ", m, ")"), static_cast<double>(most) / h2d);
  if (receptions_use_pcie) {
    most = busiest(pcie_bytes, &m);
    add(absl::StrCat("PCIe per GPU, uploads + NIC receptions (member ", m, ")"),
        static_cast<double>(most) / h2d);
  }
  if (g > 1) {
    add("NVLink ingress per GPU",
        static_cast<double>(*std::max_element(nvlink_bytes.begin(), nvlink_bytes.end())) / intra);
  }
  if (n > 1) {
    m = static_cast<int>(std::max_element(nic_in.begin(), nic_in.end()) - nic_in.begin());
    add(absl::StrCat("NIC ingress (member ", m, ")"), static_cast<double>(nic_in[m]) / inter);
    m = static_cast<int>(std::max_element(nic_out.begin(), nic_out.end()) - nic_out.begin());
    add(absl::StrCat("NIC egress (member ", m, ")"), static_cast<double>(nic_out[m]) / inter);
  }
  if (broadcasts_s > 0) add("broadcasts, one after another on the communicator", broadcasts_s);
  if (t.bucket_latency_s > 0) {
    add("per-bucket latency (workers told, load, ack)", nb * t.bucket_latency_s);
  }
  for (const ResourceBound& rb : out.bounds) {
    if (rb.seconds > out.lower_bound_s) {
      out.lower_bound_s = rb.seconds;
      out.bound_by = rb.resource;
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<int>>> EligibleMembers(
    const UpdatePlan& plan, const std::vector<std::vector<int>>& holders) {
  std::vector<std::vector<int>> out;
  out.reserve(plan.buckets.size());
  for (size_t k = 0; k < plan.buckets.size(); ++k) {
    std::vector<int> common;
    bool first = true;
    for (const TensorPlacement& p : plan.buckets[k].tensors) {
      if (p.tensor < 0 || static_cast<size_t>(p.tensor) >= holders.size()) {
        return absl::InvalidArgumentError(absl::StrCat("bucket ", k, " places tensor ", p.tensor,
                                                       " but holders has ", holders.size()));
      }
      std::vector<int> h = holders[p.tensor];
      std::sort(h.begin(), h.end());
      h.erase(std::unique(h.begin(), h.end()), h.end());
      if (first) {
        common = std::move(h);
        first = false;
      } else {
        std::vector<int> both;
        std::set_intersection(common.begin(), common.end(), h.begin(), h.end(),
                              std::back_inserter(both));
        common = std::move(both);
      }
    }
    out.push_back(std::move(common));
  }
  return out;
}

std::vector<std::vector<int>> PartsHolders(const UpdatePlan& plan, int tensor_count, int members) {
  std::vector<std::vector<int>> holders(std::max(0, tensor_count), std::vector<int>{0});
  const size_t nb = plan.buckets.size();
  if (members <= 1 || nb == 0) return holders;
  // Bytes before each bucket, and the buckets a part may start at.
  std::vector<uint64_t> before(nb + 1, 0);
  for (size_t k = 0; k < nb; ++k) before[k + 1] = before[k] + plan.buckets[k].used_bytes;
  const uint64_t total = before[nb];
  std::vector<size_t> cuts;  // candidate starts, ascending
  for (size_t k = 1; k < nb; ++k) {
    const auto& ts = plan.buckets[k].tensors;
    if (!ts.empty() && ts[0].tensor_offset == 0) cuts.push_back(k);
  }
  // Part p starts at the candidate nearest to p/N of the bytes, after the previous part's start.
  std::vector<size_t> starts = {0};
  size_t next = 0;
  for (int p = 1; p < members; ++p) {
    const double target = static_cast<double>(total) * p / members;
    while (next < cuts.size() && cuts[next] <= starts.back()) ++next;
    if (next == cuts.size()) break;
    size_t best = next;
    for (size_t c = next; c < cuts.size(); ++c) {
      const double here = std::fabs(static_cast<double>(before[cuts[c]]) - target);
      if (here < std::fabs(static_cast<double>(before[cuts[best]]) - target)) best = c;
      if (static_cast<double>(before[cuts[c]]) > target) break;
    }
    starts.push_back(cuts[best]);
    next = best + 1;
  }
  size_t part = 0;
  for (size_t k = 0; k < nb; ++k) {
    while (part + 1 < starts.size() && starts[part + 1] <= k) ++part;
    for (const TensorPlacement& p : plan.buckets[k].tensors) {
      if (p.tensor_offset == 0 && p.tensor >= 0 && p.tensor < tensor_count) {
        holders[p.tensor] = {static_cast<int>(part)};
      }
    }
  }
  return holders;
}

}  // namespace ckpt::daemon
