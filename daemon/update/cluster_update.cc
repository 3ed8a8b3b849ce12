// Cluster updates (docs/cluster.md, "The cluster update"): the member asked coordinates; every
// member that is up takes part as one rank of a communicator (host backend: Gloo); bucket k comes
// from an uploading rank (one that holds the version) and is broadcast into slot k % K of every
// rank, each of which hands it to its own workers.
//
// The coordinator drives each other member's part through one Peer.MemberUpdate call: the member's
// hello (its nonce), the start (version, ranks, settings), the manifest in parts, the member's
// ready, then (once every member is ready) the go, and finally the member's result. A rank whose
// collective fails drops its communicator, which closes its connections, so the other ranks'
// collectives fail at once (or by their deadline, cluster_timeout + ack_timeout, when a rank is
// stopped); each member then reports its part, and one that reports nothing in time is named as
// lost. A member's call that breaks also ends the coordinator's own part; failed workers on one
// member do not stop the others. Every member holds its update slot until its whole part ended.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/message_text.h"
#include "common/random_id.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "daemon/cluster/members.h"
#include "daemon/cluster/rendezvous.h"
#include "daemon/store/manifest.h"
#include "daemon/update/bucket_roots.h"
#include "daemon/update/host_copy.h"
#include "daemon/update/update_engine.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// The rank each bucket comes from when every one of `uploaders` (ascending) holds every bucket:
// AssignBucketRoots with each bucket eligible to all of them (bytes balanced, ties to the lowest
// rank; the same on every rank).
absl::StatusOr<std::vector<int>> BucketRoots(const UpdatePlan& plan,
                                             const std::vector<int>& uploaders) {
  return AssignBucketRoots(plan, std::vector<std::vector<int>>(plan.buckets.size(), uploaders));
}

// Bucket k comes from rank roots[k]: that rank fills its slot from its store, then the group
// broadcasts the bucket's bytes from it into every rank's slot.
class ClusterFiller final : public BucketFiller {
 public:
  // `arena`: this member's store when it uploads; `copy`: where a member without the version
  // keeps what it receives (HostCopy), or null; `uploaded`: bytes this rank uploaded.
  ClusterFiller(TransferBackend* transfer, const uint8_t* arena, GlooGroup* group,
                std::vector<int> roots, HostCopy* copy, std::atomic<uint64_t>* uploaded)
      : transfer_(transfer),
        arena_(arena),
        group_(group),
        roots_(std::move(roots)),
        copy_(copy),
        uploaded_(uploaded) {}

  absl::Status Fill(const Bucket& bucket, int k, int slot) override {
    if (k < 0 || static_cast<size_t>(k) >= roots_.size()) {
      return absl::InternalError(absl::StrCat("bucket ", k, " is not in the plan"));
    }
    const int root = roots_[static_cast<size_t>(k)];
    if (root == group_->rank()) {
      if (arena_ == nullptr) return absl::InternalError("an uploading rank without the version");
      RETURN_IF_ERROR(transfer_->Fill(bucket, slot, arena_));
      *uploaded_ += bucket.used_bytes;
    }
    uint8_t* data = transfer_->slots(0).data(slot);
    RETURN_IF_ERROR(group_->Broadcast(data, bucket.used_bytes, root, static_cast<uint32_t>(k)));
    if (copy_ != nullptr) {
      // Before the workers see the slot (they may not change it, but they release it).
      if (absl::Status s = copy_->Take(bucket, data); !s.ok()) {
        spdlog::warn("cluster copy of version {}: {}; not kept", copy_->version(),
                     std::string(s.message()));
        copy_ = nullptr;
      }
    }
    return absl::OkStatus();
  }
  absl::StatusOr<bool> Filled(int slot) override { return transfer_->Filled(slot); }
  absl::Status Drain(absl::Time deadline) override { return transfer_->Drain(deadline); }

 private:
  TransferBackend* const transfer_;
  const uint8_t* const arena_;
  GlooGroup* const group_;
  const std::vector<int> roots_;
  HostCopy* copy_;
  std::atomic<uint64_t>* const uploaded_;
};

constexpr size_t kManifestPartBytes = 32 << 10;

// Cancels `stream` at `deadline` unless destroyed before.
class CancelAt {
 public:
  CancelAt(MemberUpdateStream& stream, absl::Time deadline) {
    thread_ = std::thread([this, &stream, deadline] {
      absl::MutexLock lock(&mu_);
      auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_; };
      if (!mu_.AwaitWithDeadline(absl::Condition(&done), deadline)) {
        fired_ = true;
        stream.Cancel();
      }
    });
  }
  ~CancelAt() {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    thread_.join();
  }
  bool fired() {
    absl::MutexLock lock(&mu_);
    return fired_;
  }

 private:
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool fired_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// A member's result as its status (for the coordinator's message).
absl::Status MemberStatus(const v1::MemberUpdateResult& r) {
  if (r.code().empty()) return absl::OkStatus();
  absl::StatusCode code = absl::StatusCode::kAborted;
  for (int c = 1; c <= 16; ++c) {
    if (absl::StatusCodeToString(static_cast<absl::StatusCode>(c)) == r.code()) {
      code = static_cast<absl::StatusCode>(c);
    }
  }
  return absl::Status(code, EscapeForMessage(r.error(), 2000));
}

// Empty when `a` (here) and `b` (there), of one name, are the same tensor; else how they differ.
std::string TensorDifference(const v1::TensorSpec& a, const v1::TensorSpec& b) {
  if (SameTensor(a, b)) return "";
  const std::string name = QuoteForMessage(a.name(), 128);
  if (a.xxh3() != b.xxh3() && a.dtype() == b.dtype() && a.byte_size() == b.byte_size() &&
      std::equal(a.shape().begin(), a.shape().end(), b.shape().begin(), b.shape().end())) {
    return absl::StrCat("tensor ", name, " differs (xxh3 ", absl::Hex(a.xxh3(), absl::kZeroPad16),
                        " here, ", absl::Hex(b.xxh3(), absl::kZeroPad16), " there)");
  }
  return absl::StrCat("tensor ", name, " has another dtype or shape");
}

// Empty when `here` and `there` list the same tensors (names, dtypes, shapes, sizes, checksums);
// else the first difference, with `here` as this member's.
std::string ManifestDifference(const v1::Manifest& here, const v1::Manifest& there) {
  if (here.tensors_size() != there.tensors_size()) {
    return absl::StrCat(here.tensors_size(), " tensors here, ", there.tensors_size(), " there");
  }
  for (int i = 0; i < here.tensors_size(); ++i) {
    const v1::TensorSpec& a = here.tensors(i);
    const v1::TensorSpec& b = there.tensors(i);
    if (a.name() != b.name()) {
      return absl::StrCat("tensor ", i, " is ", QuoteForMessage(a.name(), 128), " here and ",
                          QuoteForMessage(b.name(), 128), " there");
    }
    if (std::string diff = TensorDifference(a, b); !diff.empty()) return diff;
  }
  return "";
}

// Empty when every tensor `held` (a member's parts) is in `composed` with the same dtype, shape and
// checksum, and (`all`) `composed` has no other tensor; else the first difference.
std::string HeldDifference(const v1::Manifest& held, const v1::Manifest& composed, bool all) {
  std::unordered_map<std::string, int> index;
  for (int i = 0; i < composed.tensors_size(); ++i) index[composed.tensors(i).name()] = i;
  for (const v1::TensorSpec& a : held.tensors()) {
    auto it = index.find(a.name());
    if (it == index.end()) {
      return absl::StrCat("tensor ", QuoteForMessage(a.name(), 128), " is held here but not there");
    }
    if (std::string diff = TensorDifference(a, composed.tensors(it->second)); !diff.empty()) {
      return diff;
    }
  }
  if (all && held.tensors_size() != composed.tensors_size()) {
    return absl::StrCat(held.tensors_size(), " tensors here, ", composed.tensors_size(), " there");
  }
  return "";
}

// Pages of a VersionManifest answer: at most this many tensors or (about) bytes of specs.
constexpr int kManifestPageTensors = 8192;
constexpr size_t kManifestPageBytes = 512 << 10;
// Catalog fetches per Hello round, each's deadline, and how long a failed one is not tried again.
constexpr int kCatalogFetchesPerRound = 4;
constexpr absl::Duration kCatalogFetchLimit = absl::Seconds(5);
constexpr absl::Duration kCatalogBackoff = absl::Seconds(30);

}  // namespace

void UpdateEngine::SetCluster(Cluster* cluster) { cluster_ = cluster; }

absl::StatusOr<v1::VersionManifestResponse> UpdateEngine::ServeVersionManifest(
    const v1::VersionManifestRequest& request) {
  if (request.version() == 0) return absl::InvalidArgumentError("a manifest of version 0");
  ASSIGN_OR_RETURN(std::shared_ptr<VersionStore::ReadLease> lease,
                   store_->Lease(request.version()));
  const v1::Manifest& m = lease->manifest();
  if (request.first() > static_cast<uint32_t>(m.tensors_size())) {
    return absl::InvalidArgumentError(absl::StrCat("version ", request.version(), " has ",
                                                   m.tensors_size(), " tensors, not ",
                                                   request.first()));
  }
  v1::VersionManifestResponse r;
  r.set_part_count(lease->part_count());
  for (uint32_t p : lease->parts()) r.add_parts(p);
  r.set_tensors(static_cast<uint32_t>(m.tensors_size()));
  size_t bytes = 0;
  for (int i = static_cast<int>(request.first());
       i < m.tensors_size() && r.specs_size() < kManifestPageTensors && bytes < kManifestPageBytes;
       ++i) {
    *r.add_specs() = m.tensors(i);
    r.add_tensor_parts(lease->tensor_part(i));
    bytes += m.tensors(i).ByteSizeLong();
  }
  return r;
}

absl::StatusOr<PartHolding> UpdateEngine::FetchHolding(const std::string& member, uint64_t version,
                                                       absl::Duration limit) {
  Cluster* const cluster = cluster_.load();
  if (cluster == nullptr) return absl::FailedPreconditionError("not in a cluster");
  const absl::Time deadline = absl::Now() + std::min(limit, cluster->timeout());
  PartHolding h;
  h.member = member;
  h.state = "up";
  h.usable = true;
  uint32_t total = 0;
  v1::VersionManifestRequest request;
  request.set_version(version);
  const std::string what = absl::StrCat("member '", member, "''s manifest of version ", version);
  for (;;) {
    request.set_first(static_cast<uint32_t>(h.manifest.tensors_size()));
    ASSIGN_OR_RETURN(v1::VersionManifestResponse page,
                     cluster->CallVersionManifest(member, request, deadline));
    if (request.first() == 0) {
      if (page.tensors() == 0 || page.tensors() > store_->max_tensors()) {
        return absl::InvalidArgumentError(absl::StrCat(what, " lists ", page.tensors(),
                                                       " tensors (1..", store_->max_tensors(),
                                                       ", max_tensors_per_version)"));
      }
      total = page.tensors();
      h.part_count = page.part_count();
      h.parts.assign(page.parts().begin(), page.parts().end());
      // As a Hello's held entry is checked: a count of 0 (whole) or 2..4096, parts ascending
      // below it.
      bool well_formed = h.part_count == 0 ? h.parts.empty()
                                           : h.part_count >= 2 &&
                                                 h.part_count <= VersionStore::kMaxVersionParts &&
                                                 !h.parts.empty() && h.parts.size() <= h.part_count;
      for (size_t k = 0; well_formed && k < h.parts.size(); ++k) {
        well_formed = h.parts[k] < h.part_count && (k == 0 || h.parts[k - 1] < h.parts[k]);
      }
      if (!well_formed) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": malformed parts"));
      }
    } else if (page.tensors() != total || page.part_count() != h.part_count ||
               !std::equal(page.parts().begin(), page.parts().end(), h.parts.begin(),
                           h.parts.end())) {
      return absl::AbortedError(absl::StrCat(what, " changed while it was read"));
    }
    if (page.specs_size() != page.tensor_parts_size() || page.specs().empty() ||
        h.manifest.tensors_size() + page.specs_size() > static_cast<int>(total)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": a page that does not add up"));
    }
    for (int i = 0; i < page.specs_size(); ++i) {
      const uint32_t part = page.tensor_parts(i);
      if (h.part_count == 0 ? part != 0
                            : !std::binary_search(h.parts.begin(), h.parts.end(), part)) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": a tensor of part ", part, ", which it does not hold"));
      }
      *h.manifest.add_tensors() = std::move(*page.mutable_specs(i));
      h.tensor_part.push_back(part);
    }
    if (h.manifest.tensors_size() == static_cast<int>(total)) break;
  }
  ManifestLimits limits;
  limits.max_tensors = store_->max_tensors();
  if (absl::Status s = ValidateManifest(h.manifest, limits); !s.ok()) return Annotate(s, what);
  return h;
}

std::optional<PartHolding> UpdateEngine::CatalogEntry(const v1::ClusterMember& member,
                                                      const v1::HeldVersion& held) {
  absl::MutexLock lock(&catalog_mu_);
  auto v = catalog_.find(held.version());
  if (v == catalog_.end()) return std::nullopt;
  auto e = v->second.find(member.node_name());
  if (e == v->second.end() || e->second.instance != member.instance() ||
      !std::equal(e->second.parts.begin(), e->second.parts.end(), held.parts().begin(),
                  held.parts().end())) {
    return std::nullopt;
  }
  return e->second;
}

void UpdateEngine::RefreshPartCatalog() {
  Cluster* const cluster = cluster_.load();
  if (cluster == nullptr) return;
  // Versions held here in parts.
  std::map<uint64_t, v1::VersionInfo> mine;
  for (v1::VersionInfo& v : store_->List()) {
    if (v.state() == v1::VERSION_STATE_COMMITTED && v.part_count() != 0) {
      mine.emplace(v.version(), std::move(v));
    }
  }
  const std::vector<v1::ClusterMember> members = cluster->Members();
  {
    absl::MutexLock lock(&catalog_mu_);
    for (auto it = catalog_.begin(); it != catalog_.end();) {
      it = mine.count(it->first) == 0 ? catalog_.erase(it) : std::next(it);
    }
    // Each entry shows its member's state now (a missing part's message says it).
    for (auto& [version, held] : catalog_) {
      for (auto& [name, h] : held) {
        h.state = "gone from the member list";
        for (const v1::ClusterMember& m : members) {
          if (m.node_name() != name) continue;
          h.state = m.instance() == h.instance || m.state() != "up"
                        ? m.state()
                        : "up again as another process (the parts it held are gone)";
        }
      }
    }
  }
  int fetches = 0;
  for (const v1::ClusterMember& m : members) {
    if (m.state() != "up" || m.protocol_version() < kPeerPartsVersion) continue;
    for (const v1::HeldVersion& held : m.held()) {
      if (held.part_count() == 0 || mine.count(held.version()) == 0) continue;
      if (CatalogEntry(m, held).has_value()) continue;  // current
      const std::string key = absl::StrCat(m.node_name(), "/", m.instance(), "/", held.version());
      {
        absl::MutexLock lock(&catalog_mu_);
        auto failed = catalog_failed_.find(key);
        if (failed != catalog_failed_.end() && absl::Now() < failed->second) continue;  // backoff
      }
      if (fetches++ >= kCatalogFetchesPerRound) return;  // the next round goes on
      // Bounded (the shutdown joins this thread); an update that needs it fetches again itself.
      auto got = FetchHolding(m.node_name(), held.version(), kCatalogFetchLimit);
      if (!got.ok()) {
        spdlog::warn("cluster: {} (tried again in {})", std::string(got.status().message()),
                     HumanDuration(kCatalogBackoff));
        absl::MutexLock lock(&catalog_mu_);
        if (catalog_failed_.size() > 4096) catalog_failed_.clear();
        catalog_failed_[key] = absl::Now() + kCatalogBackoff;
        continue;
      }
      got->instance = m.instance();
      spdlog::info("cluster: member '{}' holds {} {} of version {} ({} tensors)", m.node_name(),
                   got->parts.size() == 1 ? "part" : "parts", absl::StrJoin(got->parts, ", "),
                   held.version(), got->manifest.tensors_size());
      absl::MutexLock lock(&catalog_mu_);
      catalog_[held.version()][m.node_name()] = *std::move(got);
    }
  }
}

absl::StatusOr<std::vector<PartHolding>> UpdateEngine::GatherHoldings(
    const VersionStore::ReadLease& lease, const std::vector<v1::ClusterMember>& others) {
  const uint64_t version = lease.version();
  std::vector<PartHolding> holdings;
  PartHolding self;
  self.member = cluster_.load()->node_name();
  self.state = "self";
  self.usable = true;
  self.part_count = lease.part_count();
  self.parts = lease.parts();
  self.manifest = lease.manifest();
  for (int i = 0; i < lease.manifest().tensors_size(); ++i) {
    self.tensor_part.push_back(lease.tensor_part(i));
  }
  holdings.push_back(std::move(self));
  std::set<std::string> up;
  for (const v1::ClusterMember& m : others) {
    up.insert(m.node_name());
    const v1::HeldVersion* held = nullptr;
    for (const v1::HeldVersion& h : m.held()) {
      if (h.version() == version) held = &h;
    }
    if (held == nullptr) continue;
    if (held->part_count() == 0) {
      // Held whole (a host copy of an earlier update, a pull): its tensors are checked against
      // the parts' and it may upload any bucket.
      auto whole = FetchHolding(m.node_name(), version, absl::InfiniteDuration());
      if (!whole.ok()) {
        return Annotate(whole.status(),
                        absl::StrCat("member '", m.node_name(), "' holds version ", version));
      }
      whole->instance = m.instance();
      holdings.push_back(*std::move(whole));
      continue;
    }
    std::optional<PartHolding> h = CatalogEntry(m, *held);
    if (!h.has_value()) {
      auto got = FetchHolding(m.node_name(), version, absl::InfiniteDuration());
      if (!got.ok()) {
        return Annotate(got.status(),
                        absl::StrCat("member '", m.node_name(), "' holds parts ",
                                     absl::StrJoin(held->parts(), ", "), " of version ", version));
      }
      got->instance = m.instance();
      h = *got;
      absl::MutexLock lock(&catalog_mu_);
      catalog_[version][m.node_name()] = *got;
    }
    h->state = "up";
    h->usable = true;
    holdings.push_back(*std::move(h));
  }
  // Where the parts of members that are not up were.
  absl::MutexLock lock(&catalog_mu_);
  if (auto v = catalog_.find(version); v != catalog_.end()) {
    for (const auto& [name, h] : v->second) {
      if (up.count(name) != 0 || name == holdings.front().member) continue;
      PartHolding gone = h;
      gone.usable = false;
      holdings.push_back(std::move(gone));
    }
  }
  return holdings;
}

absl::Status UpdateEngine::EnsureGroup(
    const std::string& id, bool create,
    const std::vector<std::pair<std::string, std::string>>& ranks, int rank,
    const std::string& coordinator) {
  if (!create) {
    if (group_.group != nullptr && group_.id == id && group_.ranks == ranks &&
        !group_.group->broken()) {
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(
        absl::StrCat("communicator ", id, " is not held here (any more)"));
  }
  group_ = ClusterGroup{};
  const bool local = coordinator == cluster_.load()->node_name();
  Cluster* cluster = cluster_;
  const absl::Duration timeout = cluster_.load()->timeout();
  RendezvousClient store(
      id + "/",
      [cluster, local, coordinator,
       timeout](const v1::RendezvousRequest& r) -> absl::StatusOr<v1::RendezvousResponse> {
        if (local) return cluster->rendezvous().Serve(r);
        v1::RendezvousRequest named = r;
        named.set_node_name(cluster->node_name());
        return cluster->CallRendezvous(coordinator, named,
                                       absl::Now() + timeout + absl::Milliseconds(r.wait_ms()));
      },
      timeout);
  GlooGroup::Options o;
  o.rank = rank;
  o.size = static_cast<int>(ranks.size());
  o.host = cluster_.load()->DataHost();
  o.interface = cluster_.load()->data_interface();
  // A rank posts a bucket's broadcast once its own workers released the slot, which may take up
  // to ack_timeout: a collective waits that long plus cluster_timeout for the slowest rank.
  o.timeout = timeout + options_.ack_timeout;
  ASSIGN_OR_RETURN(auto group, GlooGroup::Create(store, o));
  group_.id = id;
  group_.ranks = ranks;
  group_.group = std::move(group);
  spdlog::info("cluster: communicator {} of {} ranks ready (this member rank {})", id, ranks.size(),
               rank);
  return absl::OkStatus();
}

absl::StatusOr<v1::UpdateResponse> UpdateEngine::RunClusterUpdate(
    const v1::UpdateRequest& request, const std::string& trigger,
    std::shared_ptr<VersionStore::ReadLease> lease, std::vector<v1::ClusterMember> others) {
  const absl::Time started = absl::Now();
  const uint64_t version = lease->version();
  const std::string self = cluster_.load()->node_name();
  auto refuse = [&](const std::string& why) {
    return absl::FailedPreconditionError(
        absl::StrCat("cluster update to version ", version, ": ", why));
  };
  if (transfer_->kind() != BackendKind::kHost) {
    return refuse(
        "cluster updates with the cuda backend are not built yet (a cluster whose other members "
        "are down updates this member alone)");
  }
  if (request.consistent()) {
    for (const v1::ClusterMember& m : others) {
      if (m.protocol_version() < kPeerConsistentVersion) {
        return refuse(absl::StrCat("member '", m.node_name(), "' runs Peer protocol ",
                                   m.protocol_version(),
                                   ", which takes no part in a consistent switch: upgrade it"));
      }
    }
  }
  for (const v1::ClusterMember& m : others) {
    if (m.protocol_version() < kPeerClusterUpdateVersion) {
      return refuse(absl::StrCat("member '", m.node_name(), "' runs Peer protocol ",
                                 m.protocol_version(), ", which takes no part in cluster updates",
                                 ": upgrade it"));
    }
    if (m.backend() != BackendName(transfer_->kind())) {
      return refuse(absl::StrCat("member '", m.node_name(), "' runs the ", m.backend(),
                                 " backend and this one ", BackendName(transfer_->kind()),
                                 ": every member needs the same backend"));
    }
  }
  // Ranks: members by node_name.
  std::vector<std::pair<std::string, std::string>> ranks;
  ranks.emplace_back(self, cluster_.load()->instance());
  for (const v1::ClusterMember& m : others) ranks.emplace_back(m.node_name(), m.instance());
  std::sort(ranks.begin(), ranks.end());
  int my_rank = 0;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i].first == self) my_rank = static_cast<int>(i);
  }
  // The coordinator uploads; so does every member that says (ready) it holds the version too.
  std::vector<int> uploaders = {my_rank};

  Prepared p;
  p.version = version;
  // A version in parts that this member does not hold whole: composed from the parts of every
  // member that is up (docs/cluster.md, "Versions in parts"); each bucket comes from a member
  // that holds all of it.
  std::optional<ComposedVersion> composed;
  std::vector<PartHolding> holdings;
  std::vector<int> composed_roots;
  if (!lease->complete()) {
    for (const v1::ClusterMember& m : others) {
      if (m.protocol_version() < kPeerPartsVersion) {
        return refuse(absl::StrCat("it is pushed in parts and member '", m.node_name(),
                                   "' runs Peer protocol ", m.protocol_version(),
                                   ", which knows no versions in parts: upgrade it"));
      }
    }
    ASSIGN_OR_RETURN(holdings, GatherHoldings(*lease, others));
    auto c = ComposeParts(version, holdings);
    if (!c.ok()) return Annotate(c.status(), absl::StrCat("cluster update to version ", version));
    composed = *std::move(c);
    std::unordered_map<std::string, int> mine;
    for (int i = 0; i < lease->manifest().tensors_size(); ++i) {
      mine[lease->manifest().tensors(i).name()] = i;
    }
    const v1::Manifest& m = composed->manifest;
    ASSIGN_OR_RETURN(p.plan, PlanManifest(
                                 version, m,
                                 [&](int i) -> uint64_t {
                                   auto it = mine.find(m.tensors(i).name());
                                   return it == mine.end() ? 0 : lease->arena_offset(it->second);
                                 },
                                 options_.bucket_bytes, 1, &composed->tensor_part));
    p.manifest = std::make_shared<const v1::Manifest>(composed->manifest);
    // Who may upload each bucket: the ranks holding every tensor of it.
    std::map<std::string, int> rank_of;
    for (size_t r = 0; r < ranks.size(); ++r) rank_of[ranks[r].first] = static_cast<int>(r);
    std::vector<std::vector<int>> eligible;
    for (const Bucket& b : p.plan.buckets) {
      std::vector<int> can;
      for (size_t j = 0; j < b.tensors.size(); ++j) {
        std::vector<int> these;
        for (int h : composed->holders[static_cast<size_t>(b.tensors[j].tensor)]) {
          these.push_back(rank_of.at(holdings[static_cast<size_t>(h)].member));
        }
        std::sort(these.begin(), these.end());
        if (j == 0) {
          can = std::move(these);
        } else {
          std::vector<int> both;
          std::set_intersection(can.begin(), can.end(), these.begin(), these.end(),
                                std::back_inserter(both));
          can = std::move(both);
        }
      }
      eligible.push_back(std::move(can));
    }
    auto roots = AssignBucketRoots(p.plan, eligible);
    if (!roots.ok()) {
      return refuse(absl::StrCat("no member holds every tensor of a bucket (a daemon bug): ",
                                 roots.status().message()));
    }
    composed_roots = *std::move(roots);
    spdlog::info("cluster update to version {}: composed from {} parts held by {} members", version,
                 lease->part_count(), holdings.size());
  } else {
    ASSIGN_OR_RETURN(p.plan, PlanVersion(*lease, options_.bucket_bytes, 1));
    p.manifest = std::shared_ptr<const v1::Manifest>(lease, &lease->manifest());
  }
  p.response.set_version(version);
  p.every_bucket = true;
  // Not joinable: a joiner would be answered with this member's part alone.
  p.unrestricted = false;
  // Consistent: this member's workers pause in its run and resume after every member's result.
  p.consistent = request.consistent();
  std::vector<std::shared_ptr<WorkerRecord>> paused;
  p.paused = &paused;
  const std::string update_id = RandomHex128();
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(SlotFreeLocked());
    ASSIGN_OR_RETURN(p.participants,
                     UpdateRun::Select(registry_, request, version, *p.manifest, &p.response,
                                       /*allow_none=*/true));
    // The slot is claimed from here: the members' parts start before this one runs.
    updating_ = version;
    running_unrestricted_ = false;
  }
  auto release = [this] {
    absl::MutexLock lock(&mu_);
    updating_ = 0;
  };
  spdlog::info("cluster update {} to version {}: {} members, coordinated by this one (rank {})",
               update_id, version, ranks.size(), my_rank);

  // Start every member's part.
  const bool reuse_candidate =
      group_.group != nullptr && group_.ranks == ranks && !group_.group->broken();
  v1::MemberUpdateIn start;
  v1::MemberUpdateStart* st = start.mutable_start();
  st->set_protocol_version(kPeerProtocolVersion);
  st->set_update_id(update_id);
  st->set_coordinator(self);
  st->set_version(version);
  st->set_force(request.force());
  st->set_trigger(trigger);
  st->set_bucket_bytes(options_.bucket_bytes);
  for (const auto& [name, instance] : ranks) {
    v1::ClusterRank* r = st->add_ranks();
    r->set_node_name(name);
    r->set_instance(instance);
  }
  for (int u : uploaders) st->add_uploader_ranks(static_cast<uint32_t>(u));
  st->set_tensors(static_cast<uint32_t>(p.manifest->tensors_size()));
  st->set_consistent(request.consistent());
  if (reuse_candidate) st->set_communicator_id(group_.id);

  struct Part {
    std::string node_name;
    int rank = 0;
    std::unique_ptr<Cluster::MemberCall> call;
    v1::MemberUpdateReady ready;
    absl::Status status;  // of the part
    v1::MemberUpdateResult result;
    bool has_result = false;
    bool lost = false;  // sent no result in time: its call was ended here
  };
  std::vector<Part> parts;
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (static_cast<int>(r) == my_rank) continue;
    Part part;
    part.node_name = ranks[r].first;
    part.rank = static_cast<int>(r);
    parts.push_back(std::move(part));
  }
  // Phase 1, bounded by cluster_timeout: every member says hello (its nonce: everything after is
  // bound to this call), gets the start and the manifest, and says it is ready. A member that does
  // not answer in time is cancelled (its Read returns) and the phase fails.
  absl::Mutex watch_mu;
  bool watch_stop = false, watch_fired = false;
  std::vector<Cluster::MemberCall*> calls;  // under watch_mu
  const absl::Time phase1_deadline = absl::Now() + cluster_.load()->timeout();
  std::thread watchdog([&] {
    absl::MutexLock lock(&watch_mu);
    auto stop = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_mu) { return watch_stop; };
    if (!watch_mu.AwaitWithDeadline(absl::Condition(&stop), phase1_deadline)) {
      watch_fired = true;
      for (Cluster::MemberCall* c : calls) c->Cancel();
    }
  });
  absl::Status phase1;
  for (Part& part : parts) {
    auto call = cluster_.load()->CallMemberUpdate(part.node_name, phase1_deadline);
    if (!call.ok()) {
      phase1 = call.status();
      break;
    }
    part.call = *std::move(call);
    {
      absl::MutexLock lock(&watch_mu);
      if (watch_fired) part.call->Cancel();
      calls.push_back(part.call.get());
    }
    v1::MemberUpdateOut hello;
    absl::Status s = part.call->Read(&hello, "its hello");
    if (s.ok() && !hello.has_hello()) {
      s = absl::InvalidArgumentError(
          absl::StrCat("member '", part.node_name, "' did not begin with its hello"));
    }
    st->set_rank(static_cast<uint32_t>(part.rank));
    if (s.ok()) s = part.call->Write(start);
    v1::MemberUpdateIn piece;
    size_t bytes = 0;
    for (int i = 0; s.ok() && i < p.manifest->tensors_size(); ++i) {
      const v1::TensorSpec& t = p.manifest->tensors(i);
      *piece.mutable_manifest()->add_tensors() = t;
      if (composed.has_value()) {
        piece.mutable_manifest()->add_parts(composed->tensor_part[static_cast<size_t>(i)]);
      }
      bytes += t.ByteSizeLong();
      if (bytes >= kManifestPartBytes || i + 1 == p.manifest->tensors_size()) {
        s = part.call->Write(piece);
        piece.Clear();
        bytes = 0;
      }
    }
    if (!s.ok()) {
      phase1 = s;
      break;
    }
  }
  for (Part& part : parts) {
    if (!phase1.ok()) break;
    v1::MemberUpdateOut out;
    absl::Status s = part.call->Read(&out, "its answer to the start");
    if (s.ok() && !out.has_ready()) {
      s = absl::InvalidArgumentError(
          absl::StrCat("member '", part.node_name, "' answered the start with something else"));
    }
    if (s.ok() && composed.has_value()) {
      // It holds the parts it was planned with (it may have dropped or got some since).
      std::vector<uint32_t> planned;
      for (const PartHolding& h : holdings) {
        if (h.usable && h.member == part.node_name) planned = h.parts;
      }
      if (!std::equal(planned.begin(), planned.end(), out.ready().parts().begin(),
                      out.ready().parts().end())) {
        s = absl::AbortedError(absl::StrCat(
            "member '", part.node_name, "' holds parts [", absl::StrJoin(out.ready().parts(), ", "),
            "] of version ", version, ", not the [", absl::StrJoin(planned, ", "),
            "] the update was planned with: retry"));
      }
    }
    if (!s.ok()) {
      phase1 = s;
      break;
    }
    part.ready = out.ready();
  }
  bool fired;
  {
    absl::MutexLock lock(&watch_mu);
    watch_stop = true;
    fired = watch_fired;
  }
  watchdog.join();
  if (fired) {
    phase1 = absl::DeadlineExceededError(
        absl::StrCat("not every member was ready within cluster_timeout ",
                     HumanDuration(cluster_.load()->timeout()),
                     phase1.ok() ? std::string() : absl::StrCat(": ", phase1.message())));
  }
  if (!phase1.ok()) {
    for (Part& part : parts) {
      if (part.call != nullptr) part.call->Cancel();
    }
    release();
    spdlog::error("cluster update to version {}: {}", version, std::string(phase1.message()));
    return absl::Status(
        phase1.code(), absl::StrCat("cluster update to version ", version, ": ", phase1.message()));
  }
  size_t workers = p.participants.size() + static_cast<size_t>(p.response.workers_size());
  for (const Part& part : parts) workers += part.ready.participants() + part.ready.skipped();
  if (workers == 0) {
    for (Part& part : parts) part.call->Cancel();
    release();
    return absl::FailedPreconditionError(
        absl::StrCat("no worker is attached to any of the ", ranks.size(),
                     " members: start the inference workers before asking for an update"));
  }
  size_t sending = p.participants.size();
  for (const Part& part : parts) sending += part.ready.participants();
  if (sending == 0) {
    // Every worker of every member holds it already (no force): nothing to broadcast.
    for (Part& part : parts) part.call->Cancel();
    release();
    return p.response;
  }
  // Every member is ready: reuse the communicator if all hold it, else every rank creates one.
  bool reuse = reuse_candidate;
  for (const Part& part : parts) reuse = reuse && part.ready.has_communicator();
  const std::string communicator = reuse ? group_.id : RandomHex128();
  if (!reuse) cluster_.load()->rendezvous().Open(communicator);
  std::vector<std::string> uploader_names = {self};
  // A member of an older release would ignore the go's uploaders (and wait for buckets from the
  // coordinator alone): then the coordinator uploads every bucket.
  bool all_upload = true;
  for (const v1::ClusterMember& m : others) {
    all_upload = all_upload && m.protocol_version() >= kPeerMultiUploadVersion;
  }
  if (composed.has_value()) {
    // The ranks the buckets come from (every member runs protocol 4: checked above).
    std::set<int> from(composed_roots.begin(), composed_roots.end());
    uploaders.assign(from.begin(), from.end());
    uploader_names.clear();
    for (int u : uploaders) uploader_names.push_back(ranks[static_cast<size_t>(u)].first);
  } else {
    for (const Part& part : parts) {
      if (all_upload && part.ready.holds_version()) {
        uploaders.push_back(part.rank);
        uploader_names.push_back(part.node_name);
      }
    }
  }
  std::sort(uploaders.begin(), uploaders.end());
  std::sort(uploader_names.begin(), uploader_names.end());
  spdlog::info("cluster update {}: {} of {} members upload ({})", update_id, uploaders.size(),
               ranks.size(), absl::StrJoin(uploader_names, ", "));
  v1::MemberUpdateIn go;
  go.mutable_go()->set_communicator_id(communicator);
  go.mutable_go()->set_create(!reuse);
  for (int u : uploaders) go.mutable_go()->add_uploader_ranks(static_cast<uint32_t>(u));
  for (int r : composed_roots) go.mutable_go()->add_bucket_roots(static_cast<uint32_t>(r));
  for (Part& part : parts) {
    part.status = part.call->Write(go);
  }
  // Each member's result arrives on its own thread. The first failure stops this member's run at
  // its next step; the other members' runs end by themselves (a broken group closes its
  // connections, so the collectives fail everywhere) and send their results, which say who
  // failed; a member that sends none in time is lost (killed, stopped, partitioned).
  absl::Mutex parts_mu;
  std::vector<std::thread> readers;
  std::atomic<bool> any_failed{false};
  // A member whose call broke (killed, cut off) ends this member's part too, also when it has not
  // begun yet (the flag is checked under mu_ before it runs). A member reporting failed workers
  // does not: the others' workers go on.
  bool cancel_requested = false;  // under mu_
  auto cancel_local = [&] {
    absl::MutexLock lock(&mu_);
    cancel_requested = true;
    if (running_ != nullptr) running_->Cancel("a member's part of the cluster update failed");
  };
  for (Part& part : parts) {
    readers.emplace_back([&, raw = &part] {
      absl::Status s = raw->status;
      v1::MemberUpdateOut out;
      if (s.ok()) s = raw->call->Read(&out, "its result (lost?)");
      if (s.ok() && !out.has_result()) {
        s = absl::InvalidArgumentError(
            absl::StrCat("member '", raw->node_name, "' sent something else than its result"));
      }
      const bool got = s.ok();
      if (got) {
        s = MemberStatus(out.result());
        if (!s.ok()) {
          // Its own messages begin with its name already.
          s = absl::Status(s.code(),
                           absl::StartsWith(s.message(), "member '")
                               ? std::string(s.message())
                               : absl::StrCat("member '", raw->node_name, "': ", s.message()));
        }
      }
      {
        absl::MutexLock lock(&parts_mu);
        if (got) {
          raw->result = out.result();
          raw->has_result = true;
        }
        raw->status = s;
      }
      if (!s.ok()) any_failed = true;
      if (!got) cancel_local();
    });
  }
  // This member's own part.
  std::atomic<uint64_t> uploaded{0};
  absl::Status local_status;
  v1::UpdateResponse local;
  {
    absl::Status group = EnsureGroup(communicator, !reuse, ranks, my_rank, self);
    absl::StatusOr<std::vector<int>> roots =
        composed.has_value() ? composed_roots : BucketRoots(p.plan, uploaders);
    if (group.ok() && !roots.ok()) group = roots.status();
    if (group.ok()) {
      p.filler = std::make_unique<ClusterFiller>(transfer_.get(), store_->arena().data(),
                                                 group_.group.get(), *std::move(roots), nullptr,
                                                 &uploaded);
      p.lease = std::move(lease);
      absl::MutexLock lock(&mu_);
      if (cancel_requested) {
        local_status = absl::AbortedError("a member's call broke before this member's part began");
      } else {
        // The slot stays claimed until every part ended (below).
        auto r = RunLocked(std::move(p), trigger, started, /*keep_slot=*/true);
        if (r.ok()) {
          local = *std::move(r);
        } else {
          local_status = r.status();
          local = outcomes_.count(version) > 0 ? outcomes_[version].result() : v1::UpdateResponse();
        }
      }
    } else {
      local_status = group;
    }
    if (!local_status.ok()) any_failed = true;
  }
  // A part that failed here drops the communicator at once: its connections close, so the other
  // ranks' collectives fail now instead of at their deadline, and their results come.
  if (!local_status.ok() || (group_.group != nullptr && group_.group->broken())) {
    group_ = ClusterGroup{};
  }
  // The members' results: they end with this one's (the last bucket's broadcast is shared). Give
  // them cluster_timeout after it (plus ack_timeout for their workers' last acks when all went
  // well), then end the calls of those that sent nothing.
  {
    const absl::Time limit = absl::Now() + cluster_.load()->timeout() +
                             (any_failed ? absl::ZeroDuration() : options_.ack_timeout);
    absl::MutexLock lock(&parts_mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(parts_mu) {
      for (const Part& part : parts) {
        if (!part.has_result && part.status.ok()) return false;
      }
      return true;
    };
    if (!parts_mu.AwaitWithDeadline(absl::Condition(&all), limit)) {
      for (Part& part : parts) {
        if (part.has_result || !part.status.ok()) continue;
        part.lost = true;
        part.call->Cancel();
      }
    }
  }
  for (std::thread& t : readers) t.join();
  if (request.consistent()) {
    // Every member's part ended: every paused worker of the cluster resumes now (members that
    // reported their result get the word; a lost one resumes by its own deadline).
    bool loaded = local_status.ok() && !any_failed;
    for (const Part& part : parts) loaded = loaded && part.has_result && !part.lost;
    v1::MemberUpdateIn resume;
    resume.mutable_resume()->set_loaded(loaded);
    if (!loaded) resume.mutable_resume()->set_error("the cluster update failed (see its result)");
    const absl::Time close_by = absl::Now() + cluster_.load()->timeout();
    for (Part& part : parts) {
      if (part.has_result && !part.lost && part.call->Write(resume).ok()) {
        part.call->Close(close_by);
      }
    }
    absl::MutexLock lock(&mu_);
    UpdateRun::Resume(paused, version, loaded, resume.resume().error());
    if (!paused.empty()) {
      spdlog::info("cluster update to version {}: {} paused workers here resume ({})", version,
                   paused.size(), loaded ? "loaded everywhere" : "the update failed");
    }
  }
  if (!reuse) cluster_.load()->rendezvous().Close(communicator);
  if (!local_status.ok() || any_failed) group_ = ClusterGroup{};  // rebuilt next time

  // One answer: this member's workers and every member's, each named.
  v1::UpdateResponse all = local;
  all.set_version(version);
  for (v1::WorkerResult& w : *all.mutable_workers()) w.set_node_name(self);
  // The members that are lost or failed first, then this one's own failure (often only the
  // consequence: a broadcast that lost its peer).
  std::vector<std::string> problems, reported;
  bool timed_out = absl::IsDeadlineExceeded(local_status);
  for (const Part& part : parts) {
    if (part.lost) {
      problems.push_back(absl::StrCat(
          "member '", part.node_name, "' sent no result within cluster_timeout ",
          HumanDuration(cluster_.load()->timeout()),
          " after this member's part ended: lost (killed, stopped, cut off) or still waiting in a "
          "collective"));
      timed_out = true;
    }
  }
  for (const Part& part : parts) {
    if (part.lost) continue;
    if (part.has_result) {
      for (const v1::WorkerResult& w : part.result.response().workers()) {
        v1::WorkerResult* out = all.add_workers();
        *out = w;
        out->set_node_name(part.node_name);
        out->set_engine(EscapeForMessage(w.engine(), 64));
        out->set_gpu_uuid(EscapeForMessage(w.gpu_uuid(), 64));
        out->set_error(EscapeForMessage(w.error(), 1000));
      }
    }
    if (!part.status.ok()) {
      // A member whose call broke (no result) before one that reported its failure.
      (part.has_result ? reported : problems).push_back(std::string(part.status.message()));
      timed_out = timed_out || absl::IsDeadlineExceeded(part.status);
    }
  }
  problems.insert(problems.end(), reported.begin(), reported.end());
  if (!local_status.ok()) {
    problems.push_back(absl::StrCat("member '", self, "' (this one): ", local_status.message()));
  }
  all.set_seconds(absl::ToDoubleSeconds(absl::Now() - started));
  {
    absl::MutexLock lock(&mu_);
    if (last_outcome_.has_value() && last_outcome_->version() == version) {
      // The cluster's answer replaces this member's own in the outcome.
      *last_outcome_->mutable_result() = all;
      outcomes_[version] = *last_outcome_;
    }
  }
  if (!problems.empty()) {
    const std::string message = absl::StrCat("cluster update to version ", version,
                                             " failed: ", absl::StrJoin(problems, "; "));
    spdlog::error("{}", message);
    absl::Status s = timed_out ? absl::DeadlineExceededError(message) : absl::AbortedError(message);
    absl::MutexLock lock(&mu_);
    if (last_outcome_.has_value() && last_outcome_->version() == version) {
      last_outcome_->set_state("failed");
      last_outcome_->set_code(absl::StatusCodeToString(s.code()));
      last_outcome_->set_error(message);
      outcomes_[version] = *last_outcome_;
    }
    last_result_ = s;
    updating_ = 0;  // every part ended: the slot is free
    registry_.NoteChange();
    return s;
  }
  {
    absl::MutexLock lock(&mu_);
    last_result_ = all;
    updating_ = 0;  // every part ended: the slot is free
    registry_.NoteChange();
  }
  spdlog::info(
      "cluster update to version {}: {} members, {} workers in {}; this member uploaded {}",
      version, ranks.size(), all.workers_size(), HumanDuration(absl::Seconds(all.seconds())),
      FormatBytes(uploaded.load()));
  return all;
}

absl::Status UpdateEngine::ServeMemberUpdate(MemberUpdateStream& stream) {
  const absl::Time started = absl::Now();
  if (cluster_ == nullptr) return absl::UnavailableError("this daemon is not in a cluster");
  const std::string self = cluster_.load()->node_name();
  // Until this member is ready, every read is bounded: a caller that opens the call and sends
  // nothing, or stops halfway through the manifest, holds a server thread for cluster_timeout at
  // most (and the Peer server runs few of these calls at once).
  auto start_guard = std::make_unique<CancelAt>(stream, absl::Now() + cluster_.load()->timeout());
  // The hello first: its nonce binds everything the coordinator sends after it to this call, so a
  // recorded call replayed to this member fails at the start.
  {
    v1::MemberUpdateOut hello;
    hello.mutable_hello();
    RETURN_IF_ERROR(stream.Write(hello));
  }
  v1::MemberUpdateIn in;
  RETURN_IF_ERROR(stream.Read(&in, "the start"));
  if (!in.has_start()) return absl::InvalidArgumentError("a member update begins with its start");
  const v1::MemberUpdateStart st = in.start();
  auto refuse = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat("member '", self, "': ", why));
  };
  if (st.protocol_version() < kPeerClusterUpdateVersion) {
    return refuse(absl::StrCat("Peer protocol ", st.protocol_version(), " has no cluster update"));
  }
  if (st.version() == 0) return absl::InvalidArgumentError("a cluster update of version 0");
  auto hex_id = [](const std::string& id) {
    return !id.empty() && id.size() <= 64 &&
           std::all_of(id.begin(), id.end(), [](char c) { return std::isxdigit(c) != 0; });
  };
  if (!hex_id(st.update_id()) || (!st.communicator_id().empty() && !hex_id(st.communicator_id()))) {
    return absl::InvalidArgumentError("update and communicator ids are 1-64 hex digits");
  }
  if (transfer_->kind() != BackendKind::kHost) {
    return refuse("cluster updates with the cuda backend are not built yet");
  }
  // The ranks: at most the most members, names valid and ordered, this member at `rank`.
  if (st.ranks_size() < 2 || st.ranks_size() > static_cast<int>(kMaxClusterMembers)) {
    return absl::InvalidArgumentError(absl::StrCat("a cluster update of ", st.ranks_size(),
                                                   " ranks (2..", kMaxClusterMembers, ")"));
  }
  std::vector<std::pair<std::string, std::string>> ranks;
  bool coordinator_ranked = false;
  for (const v1::ClusterRank& r : st.ranks()) {
    RETURN_IF_ERROR(CheckNodeName(r.node_name()));
    if (!ranks.empty() && !(ranks.back().first < r.node_name())) {
      return absl::InvalidArgumentError("the ranks are not ordered by node_name");
    }
    ranks.emplace_back(r.node_name(), r.instance());
    coordinator_ranked = coordinator_ranked || r.node_name() == st.coordinator();
  }
  if (st.rank() >= ranks.size() || ranks[st.rank()].first != self ||
      ranks[st.rank()].second != cluster_.load()->instance()) {
    return refuse(
        "the update's ranks do not name this member's process at its rank (it "
        "restarted?)");
  }
  if (!coordinator_ranked || st.coordinator() == self) {
    return absl::InvalidArgumentError("the coordinator is not another rank of the update");
  }
  RETURN_IF_ERROR(stream.CheckCaller(st.coordinator()));
  if (st.uploader_ranks().empty()) return absl::InvalidArgumentError("no uploading rank");
  for (uint32_t u : st.uploader_ranks()) {
    if (u >= ranks.size()) return absl::InvalidArgumentError("an uploading rank out of range");
    if (u == st.rank()) return refuse("asked to upload a version it was not sent");
  }
  if (st.bucket_bytes() == 0 || st.bucket_bytes() > transfer_->slots(0).slot_bytes()) {
    return refuse(absl::StrCat("the coordinator's buckets of ", FormatBytes(st.bucket_bytes()),
                               " do not fit this member's slots of ",
                               FormatBytes(transfer_->slots(0).slot_bytes()),
                               ": give every member the same bucket_bytes"));
  }
  if (st.tensors() == 0 || st.tensors() > store_->max_tensors()) {
    return refuse(absl::StrCat("a manifest of ", st.tensors(), " tensors; this member takes 1..",
                               store_->max_tensors(), " (max_tensors_per_version)"));
  }
  // The manifest, in parts.
  auto manifest = std::make_shared<v1::Manifest>();
  // A version composed of parts (protocol 4): each tensor's part, for every tensor or none.
  std::vector<uint32_t> tensor_parts;
  while (manifest->tensors_size() < static_cast<int>(st.tensors())) {
    RETURN_IF_ERROR(stream.Read(&in, "the manifest"));
    if (!in.has_manifest() || in.manifest().tensors().empty() ||
        manifest->tensors_size() + in.manifest().tensors_size() > static_cast<int>(st.tensors())) {
      return absl::InvalidArgumentError(
          absl::StrCat("the manifest's parts do not add up to ", st.tensors(), " tensors"));
    }
    const bool with_parts = in.manifest().parts_size() != 0;
    if ((with_parts && in.manifest().parts_size() != in.manifest().tensors_size()) ||
        (with_parts != !tensor_parts.empty() && manifest->tensors_size() > 0)) {
      return absl::InvalidArgumentError("the manifest gives the part of some tensors only");
    }
    for (v1::TensorSpec& t : *in.mutable_manifest()->mutable_tensors()) {
      *manifest->add_tensors() = std::move(t);
    }
    for (uint32_t part : in.manifest().parts()) {
      if (part >= VersionStore::kMaxVersionParts) {
        return absl::InvalidArgumentError(absl::StrCat("a tensor of part ", part));
      }
      tensor_parts.push_back(part);
    }
  }
  ManifestLimits limits;
  limits.max_tensors = store_->max_tensors();
  RETURN_IF_ERROR(ValidateManifest(*manifest, limits));
  const bool composed = !tensor_parts.empty();
  // A member that holds a version of this id itself must hold the same weights: two trainers that
  // pushed different checkpoints under one id would otherwise leave the cluster serving both.
  // Holding the same weights, it can upload buckets too (the coordinator decides in the go).
  // A member holding parts of it holds them with the same weights (and, holding every part, can
  // upload any bucket).
  std::shared_ptr<VersionStore::ReadLease> held;
  bool holds_all = false;
  std::unordered_map<std::string, int> held_index;  // a parted holding's tensors by name
  if (auto mine = store_->Lease(st.version()); mine.ok()) {
    const bool parted = (*mine)->part_count() != 0;
    std::string diff = parted ? HeldDifference((*mine)->manifest(), *manifest, /*all=*/false)
                              : ManifestDifference((*mine)->manifest(), *manifest);
    if (!diff.empty()) {
      return refuse(absl::StrCat("it holds a version ", st.version(),
                                 " with other weights than member '", st.coordinator(), "': ", diff,
                                 " (two trainers pushed under one id?): drop it on one of them"));
    }
    if (composed && !parted) {
      // Held whole (a host copy, a pull): the same tensors as the parts make, in its own order.
      if (std::string whole = HeldDifference((*mine)->manifest(), *manifest, /*all=*/true);
          !whole.empty()) {
        return refuse(absl::StrCat("it holds version ", st.version(),
                                   " whole with other weights "
                                   "than the parts member '",
                                   st.coordinator(), "' composed: ", whole,
                                   ": drop it on one of them"));
      }
    }
    held = *std::move(mine);
    holds_all = !parted || (held->complete() &&
                            HeldDifference(held->manifest(), *manifest, /*all=*/true).empty());
    if (parted || composed) {
      for (int i = 0; i < held->manifest().tensors_size(); ++i) {
        held_index[held->manifest().tensors(i).name()] = i;
      }
    }
  }
  Prepared p;
  p.version = st.version();
  // The same buckets as on every rank (the plan depends on the manifest, the parts and
  // bucket_bytes); a member holding the version (or parts of it) plans its own store's offsets for
  // the copies it uploads.
  if (held != nullptr && held->part_count() == 0 && !composed) {
    ASSIGN_OR_RETURN(p.plan, PlanVersion(*held, st.bucket_bytes(), 1));
  } else if (held != nullptr) {
    const VersionStore::ReadLease& lease = *held;
    ASSIGN_OR_RETURN(p.plan, PlanManifest(
                                 st.version(), *manifest,
                                 [&](int i) -> uint64_t {
                                   auto it = held_index.find(manifest->tensors(i).name());
                                   return it == held_index.end() ? 0
                                                                 : lease.arena_offset(it->second);
                                 },
                                 st.bucket_bytes(), 1, composed ? &tensor_parts : nullptr));
  } else {
    ASSIGN_OR_RETURN(p.plan, PlanManifest(st.version(), *manifest, nullptr, st.bucket_bytes(), 1,
                                          composed ? &tensor_parts : nullptr));
  }
  p.manifest = manifest;
  p.response.set_version(st.version());
  p.every_bucket = true;
  p.consistent = st.consistent();
  std::vector<std::shared_ptr<WorkerRecord>> paused;
  p.paused = &paused;
  v1::UpdateRequest request;
  request.set_version(st.version());
  request.set_force(st.force());
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError(stop_reason_);
    if (updating_ != 0) {
      return refuse(absl::StrCat("an update to version ", updating_, " is running here"));
    }
    ASSIGN_OR_RETURN(p.participants,
                     UpdateRun::Select(registry_, request, st.version(), *manifest, &p.response,
                                       /*allow_none=*/true));
    updating_ = st.version();
    running_unrestricted_ = false;
  }
  auto release = [this] {
    absl::MutexLock lock(&mu_);
    updating_ = 0;
  };
  if (start_guard->fired()) {
    release();
    return absl::DeadlineExceededError("the start did not arrive within twice cluster_timeout");
  }
  start_guard.reset();
  // A member without the version keeps a copy of what it receives when its free memory allows
  // (host backend: the slots are host memory).
  std::unique_ptr<HostCopy> copy;
  if (transfer_->kind() == BackendKind::kHost && held == nullptr) {
    std::string why_not;
    copy = HostCopy::Begin(store_, st.version(), *manifest, p.plan.buckets.size(), st.coordinator(),
                           &why_not);
    if (copy == nullptr) {
      spdlog::info("cluster update {}: no host copy of version {} is kept here: {}", st.update_id(),
                   st.version(), why_not);
    }
  }
  v1::MemberUpdateOut out;
  v1::MemberUpdateReady* ready = out.mutable_ready();
  ready->set_has_communicator(!st.communicator_id().empty() && group_.group != nullptr &&
                              group_.id == st.communicator_id() && group_.ranks == ranks &&
                              !group_.group->broken());
  ready->set_holds_version(held != nullptr && holds_all);
  if (held != nullptr) {
    ready->set_part_count(held->part_count());
    for (uint32_t part : held->parts()) ready->add_parts(part);
  }
  ready->set_participants(static_cast<uint32_t>(p.participants.size()));
  ready->set_skipped(static_cast<uint32_t>(p.response.workers_size()));
  if (absl::Status s = stream.Write(out); !s.ok()) {
    release();
    return s;
  }
  {
    // A coordinator that stops answering (SIGSTOP, a partition) ends this wait by deadline: it
    // sends the go within its own cluster_timeout of the start.
    CancelAt guard(stream, absl::Now() + 2 * cluster_.load()->timeout());
    absl::Status s = stream.Read(&in, "the go");
    if (!s.ok() || !in.has_go()) {
      release();
      if (guard.fired()) {
        return absl::DeadlineExceededError(
            absl::StrCat("member '", self, "': the coordinator '", st.coordinator(),
                         "' sent no go within twice cluster_timeout"));
      }
      return s.ok() ? absl::InvalidArgumentError("expected the go") : s;
    }
  }
  // Who uploads: the go's ranks (every member holding the version), else the start's.
  std::vector<int> uploaders;
  {
    const auto& listed =
        in.go().uploader_ranks().empty() ? st.uploader_ranks() : in.go().uploader_ranks();
    for (uint32_t u : listed) {
      if (u >= ranks.size() || (!uploaders.empty() && static_cast<int>(u) <= uploaders.back())) {
        release();
        return absl::InvalidArgumentError("the uploading ranks are out of range or out of order");
      }
      if (u == st.rank() && held == nullptr) {
        release();
        return refuse("asked to upload a version it does not hold");
      }
      if (u == st.rank() && !holds_all && in.go().bucket_roots().empty()) {
        release();
        return refuse("asked to upload any bucket of a version of which it holds some parts only");
      }
      uploaders.push_back(static_cast<int>(u));
    }
    if (uploaders.empty()) {
      release();
      return absl::InvalidArgumentError("no uploading rank");
    }
  }
  // The rank each bucket comes from: the go's (a version composed of parts), each one an uploader
  // and, where it is this member, holding every tensor of its bucket; else BucketRoots.
  std::vector<int> roots;
  if (!in.go().bucket_roots().empty()) {
    if (static_cast<size_t>(in.go().bucket_roots_size()) != p.plan.buckets.size()) {
      release();
      return absl::InvalidArgumentError(absl::StrCat("the go names ", in.go().bucket_roots_size(),
                                                     " bucket roots for ", p.plan.buckets.size(),
                                                     " buckets"));
    }
    for (size_t k = 0; k < p.plan.buckets.size(); ++k) {
      const int r = static_cast<int>(in.go().bucket_roots(static_cast<int>(k)));
      if (!std::binary_search(uploaders.begin(), uploaders.end(), r)) {
        release();
        return absl::InvalidArgumentError("a bucket root that is not an uploading rank");
      }
      if (r == static_cast<int>(st.rank()) && !holds_all) {
        for (const TensorPlacement& t : p.plan.buckets[k].tensors) {
          if (held_index.count(manifest->tensors(t.tensor).name()) == 0) {
            release();
            return refuse(absl::StrCat("asked to upload bucket ", k, ", whose tensor ",
                                       QuoteForMessage(manifest->tensors(t.tensor).name(), 128),
                                       " it does not hold"));
          }
        }
      }
      roots.push_back(r);
    }
  } else {
    auto every = BucketRoots(p.plan, uploaders);
    if (!every.ok()) {
      release();
      return every.status();
    }
    roots = *std::move(every);
  }
  const bool uploads =
      std::find(uploaders.begin(), uploaders.end(), static_cast<int>(st.rank())) != uploaders.end();
  spdlog::info(
      "cluster update {} to version {} coordinated by '{}': this member is rank {} of {}{}",
      st.update_id(), st.version(), st.coordinator(), st.rank(), ranks.size(),
      uploads ? absl::StrCat(", one of ", uploaders.size(), " uploading") : std::string());
  absl::Status group = EnsureGroup(in.go().communicator_id(), in.go().create(), ranks,
                                   static_cast<int>(st.rank()), st.coordinator());
  v1::MemberUpdateOut result;
  v1::MemberUpdateResult* r = result.mutable_result();
  if (!group.ok()) {
    release();
    group_ = ClusterGroup{};
    r->set_code(absl::StatusCodeToString(group.code()));
    r->set_error(absl::StrCat("member '", self, "': ", group.message()));
    return stream.Write(result);
  }
  std::atomic<uint64_t> uploaded{0};
  p.filler =
      std::make_unique<ClusterFiller>(transfer_.get(), uploads ? store_->arena().data() : nullptr,
                                      group_.group.get(), roots, copy.get(), &uploaded);
  p.lease = held;  // not retired while it uploads
  // The coordinator may end the update (its call breaks): the run stops at its next step. Polled
  // until the run ends (a cancel before the run began is seen when it begins).
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    bool told = false;
    while (!done) {
      if (!told && stream.cancelled()) {
        absl::MutexLock lock(&mu_);
        if (running_ != nullptr) {
          running_->Cancel("the coordinator ended the cluster update");
          told = true;
        }
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  });
  absl::StatusOr<v1::UpdateResponse> run;
  {
    absl::MutexLock lock(&mu_);
    // The slot stays claimed until the communicator is settled (below).
    run = stream.cancelled() ? absl::StatusOr<v1::UpdateResponse>(absl::CancelledError(
                                   "the coordinator ended the cluster update before it ran"))
                             : RunLocked(std::move(p), "cluster", started, /*keep_slot=*/true);
    if (run.ok()) {
      *r->mutable_response() = *run;
    } else {
      r->set_code(absl::StatusCodeToString(run.status().code()));
      r->set_error(std::string(run.status().message()));
      if (outcomes_.count(st.version()) > 0) {
        *r->mutable_response() = outcomes_[st.version()].result();
      }
    }
  }
  done = true;
  watcher.join();
  if (!run.ok() || group_.group->broken()) group_ = ClusterGroup{};
  release();
  if (uploads) {
    spdlog::info("cluster update {}: this member uploaded {} of version {}", st.update_id(),
                 FormatBytes(uploaded.load()), st.version());
  }
  absl::Status sent = stream.Write(result);
  if (st.consistent() && !paused.empty()) {
    // The workers that paused resume once every member's part ended: the coordinator says so
    // (bounded: a coordinator that is gone leaves them resuming, told the update failed).
    bool loaded = false;
    std::string error = "the coordinator sent no resume (lost?)";
    if (sent.ok()) {
      CancelAt guard(stream, absl::Now() + 2 * cluster_.load()->timeout() + options_.ack_timeout);
      if (stream.Read(&in, "the resume").ok() && in.has_resume()) {
        loaded = in.resume().loaded();
        error = in.resume().error();
      }
    }
    absl::MutexLock lock(&mu_);
    UpdateRun::Resume(paused, st.version(), loaded, error);
    spdlog::info("cluster update {}: {} paused workers resume ({})", st.update_id(), paused.size(),
                 loaded ? "loaded everywhere" : error);
  }
  // The copy commits after the result went out (its checksums take time the coordinator need not
  // wait for): the bytes as they landed here, verified.
  if (copy != nullptr && run.ok()) {
    const absl::Time begun = absl::Now();
    auto kept = copy->Commit();
    if (kept.ok()) {
      spdlog::info(
          "cluster update {}: kept a host copy of version {} ({}, checksums verified in {})",
          st.update_id(), st.version(), FormatBytes(copy->bytes()),
          HumanDuration(absl::Now() - begun));
    } else {
      spdlog::warn("cluster update {}: the host copy of version {} is not kept: {}", st.update_id(),
                   st.version(), std::string(kept.status().message()));
    }
  }
  return sent;
}

}  // namespace ckpt::daemon
