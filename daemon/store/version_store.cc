#include "daemon/store/version_store.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/checked_math.h"
#include "common/message_text.h"
#include "common/random_id.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "common/xxh3.h"
#include "daemon/store/manifest.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

// The arena ranges of one version; returned to the allocator on destruction.
class VersionStore::Ranges {
 public:
  explicit Ranges(VersionStore* store) : store_(store) {}
  ~Ranges() {
    absl::MutexLock lock(&store_->alloc_mu_);
    for (const auto& [offset, size] : ranges_) {
      absl::Status s = store_->allocator_.Free(offset, size);
      if (!s.ok()) spdlog::error("version store: {}", std::string(s.message()));
    }
  }
  // Tensor i's range, owned (freed with this object).
  void Add(uint64_t offset, uint64_t size) {
    ranges_.push_back({offset, size});
    offsets_.push_back(offset);
  }
  // Tensor i's range, owned by a Ranges this one keeps (parts merged into one version: each
  // part's ranges live as long as any version object that points into them).
  void AddShared(uint64_t offset) { offsets_.push_back(offset); }
  void Keep(std::shared_ptr<const Ranges> owner) { kept_.push_back(std::move(owner)); }
  uint64_t offset(size_t i) const { return offsets_[i]; }
  // Returns tensor i's owned range to the allocator now (a replicated tensor merged into a version
  // that holds it already: nothing points into it any more).
  void FreeNow(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(store_->alloc_mu_) {
    for (auto it = ranges_.begin(); it != ranges_.end(); ++it) {
      if (it->first != offsets_[i]) continue;
      absl::Status s = store_->allocator_.Free(it->first, it->second);
      if (!s.ok()) spdlog::error("version store: {}", std::string(s.message()));
      ranges_.erase(it);
      return;
    }
  }

 private:
  VersionStore* store_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;
  std::vector<uint64_t> offsets_;
  std::vector<std::shared_ptr<const Ranges>> kept_;
};

struct VersionStore::Version {
  uint64_t id = 0;
  std::string token;
  std::string label;
  // Who began it (the per-client staging limit counts by it).
  std::string client;
  v1::Manifest manifest;
  bool verify_checksums = true;
  // VersionInfo.transport: how the bytes came ("grpc", "local", "files", "cluster").
  std::string transport;
  // VersionInfo.ipc_bytes: bytes a local push copied from the trainer's GPUs.
  std::atomic<uint64_t> ipc_bytes{0};
  uint64_t total_bytes = 0;
  std::unordered_map<std::string, int> index;
  std::shared_ptr<Ranges> ranges;
  // Pushed in parts (VersionPart): the part count (0: whole), the parts held (a STAGING part: its
  // own index), and each tensor's part (manifest order).
  uint32_t part_count = 0;
  std::vector<uint32_t> parts;
  std::vector<uint32_t> tensor_part;
  // Each tensor's position in its part's own manifest (the merged order: by part, then this).
  std::vector<uint32_t> tensor_pos;
  absl::Time created;
  absl::Time committed;
  // STAGING or COMMITTED; a version being committed stays STAGING with `committing` set.
  v1::VersionState state = v1::VERSION_STATE_STAGING;
  std::atomic<int64_t> last_activity_ns{0};
  // Set when the version leaves the store (abort, drop, retirement): writers still holding it stop.
  std::atomic<bool> dropped{false};
  // Live ReadLeases (guarded by the store's mu_): a leased version is not retired or dropped.
  // Shared with the version objects that replace this one when parts are merged into it.
  std::shared_ptr<int> readers = std::make_shared<int>(0);

  mutable absl::Mutex mu;
  bool committing ABSL_GUARDED_BY(mu) = false;
  int writers ABSL_GUARDED_BY(mu) = 0;
  // Received byte intervals per tensor: start -> end, disjoint and not touching.
  std::vector<std::map<uint64_t, uint64_t>> received ABSL_GUARDED_BY(mu);
  uint64_t received_bytes ABSL_GUARDED_BY(mu) = 0;

  void Touch() { last_activity_ns = absl::ToUnixNanos(absl::Now()); }

  // Adds [begin, end) to tensor i's intervals; returns the bytes that were new.
  uint64_t MarkReceived(int i, uint64_t begin, uint64_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto& m = received[i];
    const uint64_t chunk = end - begin;
    uint64_t overlap = 0;
    uint64_t lo = begin, hi = end;
    auto it = m.upper_bound(begin);
    if (it != m.begin() && std::prev(it)->second >= begin) --it;
    while (it != m.end() && it->first <= end) {
      if (it->second > begin && it->first < end) {
        overlap += std::min(end, it->second) - std::max(begin, it->first);
      }
      lo = std::min(lo, it->first);
      hi = std::max(hi, it->second);
      it = m.erase(it);
    }
    m[lo] = hi;
    return chunk - overlap;
  }
};

VersionStore::VersionStore(std::unique_ptr<HostArena> arena, Options options)
    : arena_(std::move(arena)),
      options_(options),
      allocator_capacity_(arena_->size() / 256 * 256),
      allocator_(arena_->ready_bytes(), 256),
      warm_ended_(arena_->populated() &&
                  (arena_->kind() != HostArena::Kind::kPinned || arena_->pinned())) {}

std::optional<uint64_t> VersionStore::RoundedSize(uint64_t size) const {
  absl::MutexLock alock(&alloc_mu_);
  return allocator_.Rounded(size);
}

VersionStore::~VersionStore() {
  StopWarmUp();  // the thread uses the arena and the allocator
  // Versions hold Ranges that point back here: drop them while the allocator exists.
  std::map<uint64_t, std::shared_ptr<Version>> versions;
  {
    absl::MutexLock lock(&mu_);
    versions.swap(versions_);
  }
}

v1::VersionInfo VersionStore::Info(const Version& v) const {
  v1::VersionInfo info;
  info.set_version(v.id);
  info.set_state(v.state);
  info.set_tensor_count(v.manifest.tensors_size());
  info.set_total_bytes(v.total_bytes);
  info.set_created_unix_ms(absl::ToUnixMillis(v.created));
  if (v.state == v1::VERSION_STATE_COMMITTED) {
    info.set_committed_unix_ms(absl::ToUnixMillis(v.committed));
  }
  info.set_label(v.label);
  info.set_transport(v.transport);
  info.set_ipc_bytes(v.ipc_bytes.load());
  info.set_part_count(v.part_count);
  for (uint32_t p : v.parts) info.add_parts(p);
  absl::MutexLock lock(&v.mu);
  info.set_received_bytes(v.received_bytes);
  return info;
}

uint64_t VersionStore::RetirableBytes() const {
  uint64_t bytes = 0;
  bool newest = true;
  for (auto it = versions_.rbegin(); it != versions_.rend(); ++it) {
    if (it->second->state != v1::VERSION_STATE_COMMITTED) continue;
    if (newest) {
      newest = false;
      continue;
    }
    if (*it->second->readers > 0) continue;
    // Committed tensors were allocated, so their rounded sizes exist and their sum fits the arena.
    for (const auto& t : it->second->manifest.tensors()) {
      bytes += allocator_.Rounded(t.byte_size()).value_or(0);
    }
  }
  return bytes;
}

bool VersionStore::RetireOldest(std::vector<std::shared_ptr<Version>>* graveyard) {
  int committed = 0;
  for (const auto& [id, v] : versions_) committed += v->state == v1::VERSION_STATE_COMMITTED;
  if (committed < 2) return false;
  uint64_t newest = 0;
  for (const auto& [id, v] : versions_) {
    if (v->state == v1::VERSION_STATE_COMMITTED) newest = id;
  }
  for (auto it = versions_.begin(); it != versions_.end(); ++it) {
    if (it->second->state != v1::VERSION_STATE_COMMITTED) continue;
    if (it->first == newest) return false;
    if (*it->second->readers > 0) continue;  // being sent to workers
    spdlog::info("version {} retired", it->first);
    graveyard->push_back(Remove(it));
    return true;
  }
  return false;
}

void VersionStore::RetireBeyondMax(std::vector<std::shared_ptr<Version>>* graveyard) {
  int kept = 0;
  std::vector<uint64_t> retire;
  for (auto it = versions_.rbegin(); it != versions_.rend(); ++it) {
    if (it->second->state != v1::VERSION_STATE_COMMITTED) continue;
    if (++kept <= options_.max_versions) continue;
    if (*it->second->readers > 0) continue;  // being sent: retired when its last lease ends
    retire.push_back(it->first);
  }
  for (uint64_t id : retire) {
    spdlog::info("version {} retired: {} newer versions are committed (max_versions)", id,
                 options_.max_versions);
    graveyard->push_back(Remove(versions_.find(id)));
  }
}

std::shared_ptr<VersionStore::Version> VersionStore::Remove(
    std::map<uint64_t, std::shared_ptr<Version>>::iterator it) {
  std::shared_ptr<Version> v = std::move(it->second);
  versions_.erase(it);
  v->dropped = true;
  return v;
}

std::shared_ptr<VersionStore::Version> VersionStore::RemovePart(
    std::map<PartKey, std::shared_ptr<Version>>::iterator it) {
  std::shared_ptr<Version> v = std::move(it->second);
  part_staging_.erase(it);
  v->dropped = true;
  return v;
}

absl::Status VersionStore::CheckPartOf(const PartOf& part, uint64_t version) {
  if (part.count == 0) {
    if (part.index != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("part ", part.index, " of a version not pushed in parts (count 0)"));
    }
    return absl::OkStatus();
  }
  if (part.count < 2 || part.count > kMaxVersionParts) {
    return absl::InvalidArgumentError(absl::StrCat("a version of ", part.count, " parts (2..",
                                                   kMaxVersionParts,
                                                   "; push it whole instead of in one part)"));
  }
  if (part.index >= part.count) {
    return absl::InvalidArgumentError(
        absl::StrCat("part ", part.index, " of ", part.count, " (parts count from 0)"));
  }
  if (version == 0) {
    return absl::InvalidArgumentError(
        "a part needs a named version id: every part of a version is pushed under the same id");
  }
  return absl::OkStatus();
}

namespace {

std::string PartsText(const std::vector<uint32_t>& parts) { return absl::StrJoin(parts, ", "); }

}  // namespace

absl::Status VersionStore::CheckPartBeginLocked(const v1::Manifest& manifest, uint64_t version,
                                                const PartOf& part, bool verify_checksums) const {
  const std::string what =
      absl::StrCat("part ", part.index, " of ", part.count, " of version ", version);
  bool held_here = false;
  if (auto it = versions_.find(version); it != versions_.end()) {
    const Version& held = *it->second;
    if (held.part_count == 0) {
      return absl::AlreadyExistsError(absl::StrCat(
          what, ": version ", version, " is ",
          held.state == v1::VERSION_STATE_STAGING ? "being pushed" : "held", " whole here",
          held.label.empty() ? ""
                             : absl::StrCat(" (label ", QuoteForMessage(held.label, 128), ")")));
    }
    if (held.part_count != part.count) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": the parts held here say it has ", held.part_count, " parts"));
    }
    if (std::find(held.parts.begin(), held.parts.end(), part.index) != held.parts.end()) {
      return absl::AlreadyExistsError(
          absl::StrCat(what, " is held here already (parts ", PartsText(held.parts), ")"));
    }
    if (verify_checksums) {
      // A tensor another part holds too (replicated) must be the same; caught at commit otherwise.
      for (const v1::TensorSpec& t : manifest.tensors()) {
        auto found = held.index.find(t.name());
        if (found == held.index.end()) continue;
        const v1::TensorSpec& mine = held.manifest.tensors(found->second);
        if (!SameTensor(mine, t)) {
          return absl::FailedPreconditionError(absl::StrCat(
              what, ": tensor ", QuoteForMessage(t.name(), 128), " is held here by part ",
              held.tensor_part[found->second], " with another dtype, shape or checksum (xxh3 ",
              absl::Hex(mine.xxh3(), absl::kZeroPad16), " there, ",
              absl::Hex(t.xxh3(), absl::kZeroPad16), " here)"));
        }
      }
    }
    held_here = true;
  }
  for (auto it = part_staging_.lower_bound({version, 0});
       it != part_staging_.end() && it->first.first == version; ++it) {
    if (it->second->part_count != part.count) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": part ", it->first.second,
                                                        " being pushed here says it has ",
                                                        it->second->part_count, " parts"));
    }
    if (it->first.second == part.index) {
      return absl::AlreadyExistsError(absl::StrCat(what, " is being pushed here already"));
    }
    held_here = true;
  }
  if (!held_here && version <= max_committed_) {
    return absl::FailedPreconditionError(
        absl::StrCat("version ids must increase: ", version, " is not above the last committed id ",
                     max_committed_, ", and no part of it is held here"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<VersionStore::Version>> VersionStore::MergePart(
    const Version& held, const Version& part, const v1::Manifest& part_manifest) {
  struct Entry {
    uint32_t part;
    uint32_t pos;
    const v1::Manifest* manifest;
    const Ranges* ranges;
    int i;
  };
  std::vector<Entry> entries;
  std::vector<size_t> replicated;  // of the part: their bytes are held already
  entries.reserve(held.manifest.tensors_size() + part_manifest.tensors_size());
  for (int i = 0; i < held.manifest.tensors_size(); ++i) {
    entries.push_back(
        {held.tensor_part[i], held.tensor_pos[i], &held.manifest, held.ranges.get(), i});
  }
  const uint32_t index = part.parts.front();
  for (int i = 0; i < part_manifest.tensors_size(); ++i) {
    const v1::TensorSpec& t = part_manifest.tensors(i);
    auto found = held.index.find(t.name());
    if (found == held.index.end()) {
      entries.push_back({index, static_cast<uint32_t>(i), &part_manifest, part.ranges.get(), i});
      continue;
    }
    const v1::TensorSpec& mine = held.manifest.tensors(found->second);
    if (!SameTensor(mine, t)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "part ", index, " of version ", part.id, ": tensor ", QuoteForMessage(t.name(), 128),
          " is held here by part ", held.tensor_part[found->second],
          " with another dtype, shape or checksum (xxh3 ", absl::Hex(mine.xxh3(), absl::kZeroPad16),
          " there, ", absl::Hex(t.xxh3(), absl::kZeroPad16),
          " in this part): abort this part, or drop the version and push it again"));
    }
    // Replicated (the same bytes in both parts): kept once, as a tensor of the lower part (so the
    // manifest's order does not depend on the order in which parts came).
    replicated.push_back(static_cast<size_t>(i));
    Entry& e = entries[static_cast<size_t>(found->second)];
    if (index < e.part) {
      e.part = index;
      e.pos = static_cast<uint32_t>(i);
    }
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.part != b.part ? a.part < b.part : a.pos < b.pos;
  });
  auto merged = std::make_shared<Version>();
  merged->id = held.id;
  merged->token = held.token;
  merged->label = held.label.empty() ? part.label : held.label;
  merged->client = held.client;
  merged->transport = held.transport == part.transport ? held.transport : "mixed";
  merged->ipc_bytes = held.ipc_bytes.load() + part.ipc_bytes.load();
  merged->created = std::min(held.created, part.created);
  merged->part_count = held.part_count;
  merged->parts = held.parts;
  merged->parts.insert(std::upper_bound(merged->parts.begin(), merged->parts.end(), index), index);
  merged->readers = held.readers;  // leases of `held` still count against retiring this one
  merged->ranges = std::make_shared<Ranges>(this);
  merged->ranges->Keep(held.ranges);
  merged->ranges->Keep(part.ranges);
  merged->index.reserve(entries.size());
  merged->tensor_part.reserve(entries.size());
  merged->tensor_pos.reserve(entries.size());
  for (const Entry& e : entries) {
    const int i = merged->manifest.tensors_size();
    const v1::TensorSpec& t = e.manifest->tensors(e.i);
    *merged->manifest.add_tensors() = t;
    merged->index[t.name()] = i;
    merged->tensor_part.push_back(e.part);
    merged->tensor_pos.push_back(e.pos);
    merged->ranges->AddShared(e.ranges->offset(static_cast<size_t>(e.i)));
    merged->total_bytes += t.byte_size();
  }
  {
    // The part's copies of replicated tensors go back to the arena (nothing points into them).
    absl::MutexLock alock(&alloc_mu_);
    for (size_t i : replicated) part.ranges->FreeNow(i);
  }
  absl::MutexLock vlock(&merged->mu);
  merged->received_bytes = merged->total_bytes;
  return merged;
}

absl::StatusOr<VersionStore::Begun> VersionStore::Begin(
    const v1::Manifest& manifest, uint64_t requested_version, const std::string& label,
    const std::string& client, bool verify_checksums, absl::Time deadline, bool may_retire,
    const std::string& transport, PartOf part) {
  RETURN_IF_ERROR(CheckPartOf(part, requested_version));
  if (label.size() > kMaxLabelBytes) {
    return absl::InvalidArgumentError(absl::StrCat("label of ", label.size(),
                                                   " bytes is too long (at most ", kMaxLabelBytes,
                                                   "): ", QuoteForMessage(label, 64)));
  }
  if (requested_version > kMaxVersionId) {
    return absl::InvalidArgumentError(absl::StrCat(
        "version id ", requested_version, " is over the largest id ", kMaxVersionId, " (2^63-1)"));
  }
  ManifestLimits limits;
  limits.max_tensors = options_.max_tensors;
  limits.max_total_bytes = allocator_capacity_;
  uint64_t total = 0;
  RETURN_IF_ERROR(ValidateManifest(manifest, limits, &total));
  // Each tensor is charged its 256-byte rounded size; the sum is checked against the arena again.
  CheckedSum needed_sum;
  for (const auto& t : manifest.tensors()) {
    const std::optional<uint64_t> rounded = RoundedSize(t.byte_size());
    if (!rounded || !needed_sum.Add(*rounded) || needed_sum.total() > allocator_capacity_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("version of ", manifest.tensors_size(),
                       " tensors needs more than the whole ", FormatBytes(allocator_capacity_),
                       " host_memory_budget once each tensor is rounded up "
                       "to 256 bytes"));
    }
  }
  const uint64_t needed = needed_sum.total();
  AwaitReadyFor(needed, deadline);  // start-up: memory still being made ready
  if (absl::Now() >= deadline) {
    return absl::DeadlineExceededError(
        "the caller's deadline passed while the store got memory ready for this version; retry");
  }
  auto v = std::make_shared<Version>();
  v->manifest = manifest;
  v->label = label;
  v->client = client;
  v->verify_checksums = verify_checksums;
  v->transport = !transport.empty() ? transport : verify_checksums ? "grpc" : "files";
  v->total_bytes = total;
  v->token = RandomHex128();
  v->created = absl::Now();
  v->Touch();
  v->index.reserve(manifest.tensors_size());
  for (int i = 0; i < manifest.tensors_size(); ++i) v->index[manifest.tensors(i).name()] = i;
  v->part_count = part.count;
  if (part.count != 0) v->parts = {part.index};
  v->tensor_part.assign(static_cast<size_t>(manifest.tensors_size()), part.index);
  v->tensor_pos.resize(static_cast<size_t>(manifest.tensors_size()));
  for (size_t i = 0; i < v->tensor_pos.size(); ++i) v->tensor_pos[i] = static_cast<uint32_t>(i);
  {
    absl::MutexLock vlock(&v->mu);
    v->received.resize(manifest.tensors_size());
  }

  std::vector<std::shared_ptr<Version>> graveyard;  // destroyed after mu_ is released
  absl::MutexLock lock(&mu_);
  int staging = 0, staging_of_client = 0;
  for (const auto& [id, other] : versions_) {
    if (other->state != v1::VERSION_STATE_STAGING) continue;
    ++staging;
    staging_of_client += other->client == client;
  }
  for (const auto& [key, other] : part_staging_) {
    ++staging;
    staging_of_client += other->client == client;
  }
  if (staging_of_client >= options_.max_staging_per_client) {
    return absl::ResourceExhaustedError(
        absl::StrCat("client ", EscapeForMessage(client), " has ", staging_of_client,
                     " staging versions already, the most one client may have (config key "
                     "max_staging_per_client); commit or abort one first"));
  }
  if (staging >= options_.max_staging) {
    return absl::ResourceExhaustedError(absl::StrCat(
        staging,
        " versions are staging already, the most the daemon accepts at once (config key "
        "max_staging_versions); commit or abort one first"));
  }
  if (requested_version != 0) {
    // Naming the holder's label says where it came from (a push, LoadFiles, a cluster copy).
    auto labelled = [this](uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> std::string {
      auto it = versions_.find(id);
      if (it == versions_.end() || it->second->label.empty()) return "";
      return absl::StrCat(" (label ", QuoteForMessage(it->second->label, 128), ")");
    };
    if (part.count != 0) {
      RETURN_IF_ERROR(CheckPartBeginLocked(manifest, requested_version, part, verify_checksums));
    } else if (versions_.count(requested_version) != 0) {
      return absl::AlreadyExistsError(absl::StrCat(
          "version ", requested_version, " is already in use", labelled(requested_version)));
    } else if (auto p = part_staging_.lower_bound({requested_version, 0});
               p != part_staging_.end() && p->first.first == requested_version) {
      return absl::AlreadyExistsError(
          absl::StrCat("version ", requested_version, " is being pushed in parts here"));
    } else if (requested_version <= max_committed_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "version ids must increase: ", requested_version, " is not above the last committed id ",
          max_committed_, labelled(max_committed_)));
    }
    if (options_.ledger != nullptr && verify_checksums && part.count == 0) {
      // Before a restart this id may have named other weights: refused before a byte is sent.
      const std::optional<uint64_t> before = options_.ledger->CommittedDigest(requested_version);
      if (before.has_value() && *before != IdLedger::Digest(manifest)) {
        return absl::AlreadyExistsError(
            absl::StrCat("version ", requested_version,
                         " was committed with other weights before the daemon "
                         "restarted (",
                         options_.ledger->path(), "); name a new id"));
      }
    }
    v->id = requested_version;
  } else {
    // Above every id used before a restart too (state_dir), so an id never names two checkpoints.
    uint64_t next = std::max(
        {max_committed_, max_begun_, options_.ledger != nullptr ? options_.ledger->floor() : 0});
    do {
      if (next >= kMaxVersionId) {
        return absl::ResourceExhaustedError(
            absl::StrCat("no version id is left: ids reached the largest, ", kMaxVersionId,
                         "; automatic ids start again from 1 only with an empty store and no "
                         "state_dir ledger (version-ids.json)"));
      }
      ++next;
    } while (versions_.count(next) != 0);
    v->id = next;
  }

  uint64_t free_bytes;
  {
    absl::MutexLock alock(&alloc_mu_);
    free_bytes = allocator_.free_bytes();
  }
  if (!may_retire && needed > free_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("it needs ", FormatBytes(needed), " and ", FormatBytes(free_bytes),
                     " of the host_memory_budget are free (held versions are not pushed out)"));
  }
  if (needed > free_bytes + RetirableBytes()) {
    RETURN_IF_ERROR(StillWarmingUp(needed, free_bytes + RetirableBytes()));
    return absl::ResourceExhaustedError(
        absl::StrCat("version of ", manifest.tensors_size(), " tensors needs ", needed, " bytes (",
                     FormatBytes(needed), ") but only ", free_bytes, " bytes (",
                     FormatBytes(free_bytes), ") are free of the ", FormatBytes(arena_->size()),
                     " host_memory_budget, and ", FormatBytes(RetirableBytes()),
                     " more could be freed by retiring older versions", UsableNote()));
  }
  // Per-tensor first fit; retire old versions while something does not fit.
  for (;;) {
    auto ranges = std::make_shared<Ranges>(this);
    bool fits = true;
    {
      absl::MutexLock alock(&alloc_mu_);
      for (const auto& t : manifest.tensors()) {
        auto offset = allocator_.Allocate(t.byte_size());
        if (!offset.ok()) {
          fits = false;
          break;
        }
        ranges->Add(*offset, t.byte_size());
      }
    }
    if (fits) {
      v->ranges = std::move(ranges);
      break;
    }
    ranges.reset();  // returns the partial allocation
    if (!may_retire) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the free memory of the host_memory_budget is too fragmented for ",
                       FormatBytes(needed), " (held versions are not pushed out)"));
    }
    if (!RetireOldest(&graveyard)) {
      RETURN_IF_ERROR(StillWarmingUp(needed, 0));
      return absl::ResourceExhaustedError(absl::StrCat(
          "version of ", manifest.tensors_size(), " tensors needs ", needed,
          " bytes but the free memory of the host_memory_budget is too fragmented for it",
          UsableNote()));
    }
    graveyard.clear();  // frees the retired version's ranges now (takes alloc_mu_ only)
  }
  // Automatic ids are recorded before they are handed out; a trainer-named id only when it commits
  // (RecordCommitted), so that a named push that never commits (even one of id 2^63-1) takes no
  // automatic id away.
  if (options_.ledger != nullptr && requested_version == 0) {
    absl::Status recorded = options_.ledger->RecordBegun(v->id);
    if (!recorded.ok()) {
      return absl::UnavailableError(
          absl::StrCat("cannot record version id ", v->id, " in state_dir (", recorded.message(),
                       "); refused so that ids stay unique across restarts"));
    }
  }
  max_begun_ = std::max(max_begun_, v->id);
  if (part.count != 0) {
    part_staging_[{v->id, part.index}] = v;
  } else {
    versions_[v->id] = v;
  }
  spdlog::info("version {}{} staging: {} tensors, {}{}{}", v->id,
               part.count != 0 ? absl::StrCat(" part ", part.index, " of ", part.count) : "",
               manifest.tensors_size(), FormatBytes(total),
               label.empty() ? "" : absl::StrCat(", label ", QuoteForMessage(label)),
               client.empty() ? "" : absl::StrCat(", from ", EscapeForMessage(client)));
  return Begun{v->id, v->token};
}

std::shared_ptr<VersionStore::Version> VersionStore::FindStaging(uint64_t version,
                                                                 const std::string& token,
                                                                 absl::Status* error) const {
  auto it = versions_.find(version);
  if (it == versions_.end() || it->second->state != v1::VERSION_STATE_STAGING) {
    // Parts of `version` staging here: the token says which.
    auto p = part_staging_.lower_bound({version, 0});
    if (p == part_staging_.end() || p->first.first != version) {
      *error = absl::NotFoundError(
          absl::StrCat("no staging version ", version, " (never begun, committed, or aborted)"));
      return nullptr;
    }
    if (token.empty()) {
      *error = absl::PermissionDeniedError(
          absl::StrCat("no upload token for version ", version, " (BeginVersion returned one)"));
      return nullptr;
    }
    for (; p != part_staging_.end() && p->first.first == version; ++p) {
      if (p->second->token == token) return p->second;
    }
    *error = absl::PermissionDeniedError(absl::StrCat("wrong upload token for version ", version,
                                                      " (no part of it staging here "
                                                      "has this token)"));
    return nullptr;
  }
  if (token.empty()) {
    *error = absl::PermissionDeniedError(
        absl::StrCat("no upload token for version ", version, " (BeginVersion returned one)"));
    return nullptr;
  }
  if (it->second->token != token) {
    *error = absl::PermissionDeniedError(absl::StrCat("wrong upload token for version ", version));
    return nullptr;
  }
  return it->second;
}

absl::StatusOr<std::shared_ptr<VersionStore::Version>> VersionStore::LookUpStaging(
    uint64_t version, const std::string& token) const {
  absl::ReaderMutexLock lock(&mu_);
  absl::Status error;
  std::shared_ptr<Version> v = FindStaging(version, token, &error);
  if (v == nullptr) return error;
  return v;
}

absl::Status VersionStore::AddWriter(Version& v) {
  {
    absl::MutexLock vlock(&v.mu);
    if (v.committing) {
      return absl::FailedPreconditionError(
          absl::StrCat("version ", v.id, " is being committed; it cannot be written"));
    }
    ++v.writers;
  }
  v.Touch();
  return absl::OkStatus();
}

namespace {

// A local push's version is written and committed by its own PushLocal stream only: its upload
// token (handed to the trainer for Trainer.Abort) writes and commits nothing, so no byte changes
// after the daemon hashed it (and perhaps sent it to workers: an overlapped push + update).
absl::Status OnlyItsStream(uint64_t version, const std::string& transport, const char* what) {
  if (transport != "local") return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "version ", version, " is being pushed over PushLocal: only that stream ", what, " it"));
}

}  // namespace

absl::Status VersionStore::WriteChunk(uint64_t version, const std::string& token,
                                      const std::string& tensor, uint64_t offset, const void* data,
                                      uint64_t size) {
  ASSIGN_OR_RETURN(std::shared_ptr<Version> v, LookUpStaging(version, token));
  RETURN_IF_ERROR(OnlyItsStream(version, v->transport, "writes"));
  auto it = v->index.find(tensor);
  if (it == v->index.end()) {
    return absl::NotFoundError(
        absl::StrCat("version ", version, " has no tensor ", QuoteForMessage(tensor)));
  }
  const int i = it->second;
  const uint64_t tensor_size = v->manifest.tensors(i).byte_size();
  if (!RangeWithin(offset, size, tensor_size)) {
    return absl::OutOfRangeError(
        absl::StrCat("chunk of ", size, " bytes at offset ", offset, " is past the end of tensor ",
                     QuoteForMessage(tensor), " (", tensor_size, " bytes)"));
  }
  RETURN_IF_ERROR(AddWriter(*v));
  std::memcpy(arena_->data() + v->ranges->offset(i) + offset, data, size);
  absl::MutexLock vlock(&v->mu);
  if (size > 0) v->received_bytes += v->MarkReceived(i, offset, offset + size);
  --v->writers;
  return absl::OkStatus();
}

absl::Status VersionStore::CheckPart(const v1::Manifest& manifest, absl::string_view what, size_t k,
                                     const ChunkPart& p) {
  const uint64_t count = static_cast<uint64_t>(manifest.tensors_size());
  if (p.bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " part ", k, " has 0 bytes"));
  }
  if (p.tensor_index >= count) {
    return absl::InvalidArgumentError(absl::StrCat(what, " part ", k, " names tensor #",
                                                   p.tensor_index, " of a version of ", count,
                                                   " tensors"));
  }
  const v1::TensorSpec& spec = manifest.tensors(static_cast<int>(p.tensor_index));
  if (!RangeWithin(p.offset, p.bytes, spec.byte_size())) {
    return absl::OutOfRangeError(absl::StrCat(what, " part ", k, ": ", p.bytes, " bytes at offset ",
                                              p.offset, " are past the end of tensor ",
                                              QuoteForMessage(spec.name()), " (", spec.byte_size(),
                                              " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status VersionStore::WriteChunkParts(uint64_t version, const std::string& token,
                                           const std::vector<ChunkPart>& parts, const void* data,
                                           uint64_t size) {
  if (parts.empty()) return absl::InvalidArgumentError("chunk has no parts");
  if (parts.size() > kMaxChunkParts) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk has ", parts.size(), " parts, more than ", kMaxChunkParts));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Version> v, LookUpStaging(version, token));
  RETURN_IF_ERROR(OnlyItsStream(version, v->transport, "writes"));
  uint64_t total = 0;
  for (size_t k = 0; k < parts.size(); ++k) {
    const ChunkPart& p = parts[k];
    RETURN_IF_ERROR(CheckPart(v->manifest, "chunk", k, p));
    if (p.bytes > size - total) {
      return absl::InvalidArgumentError(absl::StrCat("chunk parts add up to more than its ", size,
                                                     " data bytes (at part ", k, ")"));
    }
    total += p.bytes;
  }
  if (total != size) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk parts add up to ", total, " bytes, but the chunk has ", size));
  }
  RETURN_IF_ERROR(AddWriter(*v));
  const auto* from = static_cast<const uint8_t*>(data);
  for (const ChunkPart& p : parts) {
    std::memcpy(arena_->data() + v->ranges->offset(static_cast<int>(p.tensor_index)) + p.offset,
                from, p.bytes);
    from += p.bytes;
  }
  absl::MutexLock vlock(&v->mu);
  for (const ChunkPart& p : parts) {
    v->received_bytes +=
        v->MarkReceived(static_cast<int>(p.tensor_index), p.offset, p.offset + p.bytes);
  }
  --v->writers;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<VersionStore::WriteLease>> VersionStore::OpenWriter(
    uint64_t version, const std::string& token) {
  ASSIGN_OR_RETURN(std::shared_ptr<Version> v, LookUpStaging(version, token));
  RETURN_IF_ERROR(AddWriter(*v));
  return std::unique_ptr<WriteLease>(new WriteLease(this, std::move(v)));
}

VersionStore::WriteLease::~WriteLease() {
  absl::MutexLock vlock(&v_->mu);
  --v_->writers;
}

uint8_t* VersionStore::WriteLease::data(int i) const {
  return store_->arena_->data() + v_->ranges->offset(i);
}

bool VersionStore::WriteLease::Touch() {
  v_->Touch();
  return !v_->dropped.load();
}

absl::Status VersionStore::WriteLease::MarkReceived(int i, uint64_t offset, uint64_t bytes) {
  if (i < 0 || i >= v_->manifest.tensors_size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor index ", i, " is past the manifest's ",
                                                   v_->manifest.tensors_size(), " tensors"));
  }
  const uint64_t size = v_->manifest.tensors(i).byte_size();
  if (!RangeWithin(offset, bytes, size)) {
    return absl::OutOfRangeError(absl::StrCat(
        "bytes [", offset, ", ", offset, " + ", bytes, ") are past the end of tensor '",
        v_->manifest.tensors(i).name(), "' (", size, " bytes)"));
  }
  if (v_->dropped.load()) {
    return absl::AbortedError(
        absl::StrCat("version ", v_->id, " was aborted while it was written"));
  }
  if (bytes == 0) return absl::OkStatus();
  absl::MutexLock vlock(&v_->mu);
  v_->received_bytes += v_->MarkReceived(i, offset, offset + bytes);
  v_->Touch();
  return absl::OkStatus();
}

void VersionStore::WriteLease::AddIpcBytes(uint64_t bytes) { v_->ipc_bytes += bytes; }

absl::Status VersionStore::WriteLease::MarkAllReceived() {
  if (v_->dropped.load()) {
    return absl::AbortedError(
        absl::StrCat("version ", v_->id, " was aborted while it was written"));
  }
  absl::MutexLock vlock(&v_->mu);
  for (int i = 0; i < v_->manifest.tensors_size(); ++i) {
    uint64_t size = v_->manifest.tensors(i).byte_size();
    if (size > 0) v_->received_bytes += v_->MarkReceived(i, 0, size);
  }
  v_->Touch();
  return absl::OkStatus();
}

absl::StatusOr<v1::VersionInfo> VersionStore::Commit(uint64_t version, const std::string& token,
                                                     bool notify,
                                                     const std::vector<uint64_t>* expected_xxh3,
                                                     const std::vector<uint64_t>* computed_xxh3) {
  ASSIGN_OR_RETURN(std::shared_ptr<Version> v, LookUpStaging(version, token));
  if (expected_xxh3 == nullptr) RETURN_IF_ERROR(OnlyItsStream(version, v->transport, "commits"));
  if (computed_xxh3 != nullptr &&
      (expected_xxh3 == nullptr ||
       computed_xxh3->size() != static_cast<size_t>(v->manifest.tensors_size()))) {
    return absl::InternalError(absl::StrCat("version ", version,
                                            ": computed checksums need expected ones, one per "
                                            "tensor (a daemon bug)"));
  }
  if (expected_xxh3 != nullptr) {
    if (v->verify_checksums) {
      return absl::FailedPreconditionError(absl::StrCat(
          "version ", version, " has its checksums in the manifest; none may come at commit"));
    }
    if (expected_xxh3->size() != static_cast<size_t>(v->manifest.tensors_size())) {
      return absl::InvalidArgumentError(absl::StrCat("version ", version, " has ",
                                                     v->manifest.tensors_size(), " tensors but ",
                                                     expected_xxh3->size(), " checksums came"));
    }
  }
  {
    absl::MutexLock vlock(&v->mu);
    if (v->committing) {
      return absl::FailedPreconditionError(
          absl::StrCat("version ", version, " is already being committed"));
    }
    v->committing = true;
    // Chunk copies that started before this point finish first (they are memcpy calls: short).
    auto no_writers = [&v]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(v->mu) { return v->writers == 0; };
    if (!v->mu.AwaitWithTimeout(absl::Condition(&no_writers), absl::Seconds(30))) {
      v->committing = false;
      return absl::DeadlineExceededError(
          absl::StrCat("version ", version, ": chunk copies did not finish within 30 s"));
    }
  }
  v->Touch();
  auto fail = [&v](absl::Status s) {
    absl::MutexLock vlock(&v->mu);
    v->committing = false;
    v->Touch();
    return s;
  };

  // Every byte present?
  std::vector<std::string> problems;
  uint64_t missing_tensors = 0;
  {
    absl::MutexLock vlock(&v->mu);
    for (int i = 0; i < v->manifest.tensors_size(); ++i) {
      const auto& spec = v->manifest.tensors(i);
      const auto& got = v->received[i];
      uint64_t have = got.empty() ? 0 : (got.begin()->first == 0 ? got.begin()->second : 0);
      if (spec.byte_size() == 0 || (got.size() == 1 && have == spec.byte_size())) continue;
      ++missing_tensors;
      if (problems.size() < 8) {
        uint64_t present = 0;
        for (const auto& [b, e] : got) present += e - b;
        problems.push_back(absl::StrCat("'", spec.name(), "' has ", spec.byte_size() - present,
                                        " of ", spec.byte_size(), " bytes missing (first gap at ",
                                        have, ")"));
      }
    }
  }
  if (missing_tensors > 0) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "version ", version, " is incomplete: ", missing_tensors, " tensor(s) lack bytes: ",
        absl::StrJoin(problems, "; "), missing_tensors > problems.size() ? "; ..." : "")));
  }

  // Checksums, in parallel over tensors.
  const int n = v->manifest.tensors_size();
  std::vector<uint64_t> sums(n);
  std::atomic<int> next{0};
  auto hash = [&] {
    for (int i = next++; i < n; i = next++) {
      sums[i] =
          XXH3_64bits(arena_->data() + v->ranges->offset(i), v->manifest.tensors(i).byte_size());
    }
  };
  if (computed_xxh3 != nullptr) {
    sums = *computed_xxh3;  // nothing left to hash
  } else {
    const int threads = std::max(1, std::min(options_.hash_threads, n));
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(hash);
    hash();
    for (auto& t : pool) t.join();
  }
  if (v->verify_checksums || expected_xxh3 != nullptr) {
    uint64_t mismatches = 0;
    for (int i = 0; i < n; ++i) {
      const auto& spec = v->manifest.tensors(i);
      const uint64_t want = expected_xxh3 != nullptr ? (*expected_xxh3)[i] : spec.xxh3();
      if (sums[i] == want) continue;
      ++mismatches;
      if (problems.size() < 8) {
        problems.push_back(
            absl::StrFormat("'%s' has xxh3 %016x, %s %016x", spec.name(), sums[i],
                            expected_xxh3 != nullptr ? "the trainer says" : "manifest says", want));
      }
    }
    if (mismatches > 0) {
      return fail(absl::FailedPreconditionError(absl::StrCat(
          "version ", version, ": checksum mismatch in ", mismatches, " tensor(s): ",
          absl::StrJoin(problems, "; "), mismatches > problems.size() ? "; ..." : "")));
    }
  }
  // The manifest as it will be committed (with the computed checksums: LoadFiles). It is written
  // into the version under mu_ below: Get and List copy a staging manifest under the shared lock.
  v1::Manifest committed_manifest;
  if (!v->verify_checksums) {
    committed_manifest = v->manifest;
    for (int i = 0; i < n; ++i) committed_manifest.mutable_tensors(i)->set_xxh3(sums[i]);
  }
  const v1::Manifest& final_manifest = v->verify_checksums ? v->manifest : committed_manifest;
  const bool use_ledger = options_.ledger != nullptr && v->part_count == 0;
  const uint64_t digest = use_ledger ? IdLedger::Digest(final_manifest) : 0;
  if (use_ledger) {
    const std::optional<uint64_t> before = options_.ledger->CommittedDigest(version);
    if (before.has_value() && *before != digest) {
      return fail(absl::AlreadyExistsError(absl::StrCat(
          "version ", version, " was committed with other weights before the daemon restarted (",
          options_.ledger->path(), "): abort this push and name a new id")));
    }
  }

  std::vector<std::shared_ptr<Version>> graveyard;
  v1::VersionInfo info;
  bool complete = true;  // every part of a parted version is held here now
  {
    absl::MutexLock lock(&mu_);
    if (v->part_count == 0) {
      auto it = versions_.find(version);
      if (it == versions_.end() || it->second != v) {
        return absl::AbortedError(absl::StrCat("version ", version, " was aborted during commit"));
      }
    } else {
      auto it = part_staging_.find({version, v->parts.front()});
      if (it == part_staging_.end() || it->second != v) {
        return absl::AbortedError(absl::StrCat("part ", v->parts.front(), " of version ", version,
                                               " was aborted during commit"));
      }
    }
    // A version that began before a newer one committed commits too (concurrent pushes): it is
    // simply not the newest. Readers asking for the newest never see ids go backwards.
    const bool newest = version >= max_committed_;  // >=: another part of it may have committed
    // A part joins the version of its id held here (a new object: leases of the one before keep
    // it), or becomes it.
    std::shared_ptr<Version> merged;
    auto held = v->part_count != 0 ? versions_.find(version) : versions_.end();
    if (held != versions_.end()) {
      absl::StatusOr<std::shared_ptr<Version>> m = MergePart(*held->second, *v, final_manifest);
      if (!m.ok()) return fail(m.status());
      merged = *std::move(m);
    }
    if (!v->verify_checksums) v->manifest = std::move(committed_manifest);
    v->state = v1::VERSION_STATE_COMMITTED;
    v->committed = absl::Now();
    std::shared_ptr<Version> now_held = v;
    if (v->part_count != 0) {
      if (merged != nullptr) {
        merged->state = v1::VERSION_STATE_COMMITTED;
        merged->committed = v->committed;
        now_held = merged;
        held->second = merged;
      } else {
        versions_[version] = v;
      }
      part_staging_.erase({version, v->parts.front()});
      complete = now_held->parts.size() == now_held->part_count;
    }
    max_committed_ = std::max(max_committed_, version);
    info = Info(*now_held);
    RetireBeyondMax(&graveyard);
    if (!newest) {
      spdlog::info("version {} committed after the newer version {}{}", version, max_committed_,
                   versions_.count(version) == 0
                       ? absl::StrCat(" and was retired at once: ", options_.max_versions,
                                      " newer versions are committed (max_versions)")
                       : "");
    }
  }
  if (v->part_count == 0) {
    spdlog::info("version {} committed: {} tensors, {}", version, n, FormatBytes(v->total_bytes));
  } else {
    spdlog::info("version {} part {} of {} committed: {} tensors, {}; parts held here: {}{}",
                 version, v->parts.front(), v->part_count, n, FormatBytes(v->total_bytes),
                 absl::StrJoin(info.parts(), ", "), complete ? " (every part)" : "");
  }
  {
    absl::MutexLock clock(&counters_mu_);
    const double seconds = absl::ToDoubleSeconds(v->committed - v->created);
    if (v->transport == "local") {
      ++counters_.commits_local;
      counters_.bytes_local += v->total_bytes;
      counters_.seconds_local += seconds;
    } else if (v->verify_checksums) {
      ++counters_.commits_chunks;
      counters_.bytes_chunks += v->total_bytes;
      counters_.seconds_chunks += seconds;
    } else {
      ++counters_.commits_files;
      counters_.bytes_files += v->total_bytes;
      counters_.seconds_files += seconds;
    }
  }
  if (options_.ledger != nullptr && v->part_count != 0) {
    // A part's id is kept from automatic ids after a restart (no digest: a part is not the
    // version's weights).
    if (absl::Status s = options_.ledger->RecordBegun(version); !s.ok()) {
      spdlog::error("version {}: cannot record its id in state_dir: {}", version,
                    std::string(s.message()));
    }
  }
  if (use_ledger) {
    absl::Status recorded = options_.ledger->RecordCommitted(version, digest);
    if (!recorded.ok()) {
      spdlog::error("version {}: cannot record its digest in state_dir: {}", version,
                    std::string(recorded.message()));
    }
  }
  if (notify && complete && commit_listener_) commit_listener_(version);
  return info;
}

absl::Status VersionStore::Abort(uint64_t version, const std::string& token,
                                 const std::string& why) {
  std::shared_ptr<Version> victim;
  {
    absl::MutexLock lock(&mu_);
    absl::Status error;
    victim = FindStaging(version, token, &error);
    if (victim == nullptr) return error;
    victim = victim->part_count == 0 ? Remove(versions_.find(version))
                                     : RemovePart(part_staging_.find({version, victim->parts[0]}));
  }
  spdlog::info("version {}{} aborted: {}", version,
               victim->part_count == 0
                   ? ""
                   : absl::StrCat(" part ", victim->parts[0], " of ", victim->part_count),
               EscapeForMessage(why, kMaxStatusMessageBytes));
  {
    absl::MutexLock clock(&counters_mu_);
    ++counters_.aborted;
  }
  return absl::OkStatus();
}

absl::Status VersionStore::Drop(uint64_t version) {
  std::vector<std::shared_ptr<Version>> victims;
  {
    absl::MutexLock lock(&mu_);
    auto it = versions_.find(version);
    auto parts = part_staging_.lower_bound({version, 0});
    const bool staging_parts = parts != part_staging_.end() && parts->first.first == version;
    if (it == versions_.end() && !staging_parts) {
      return absl::NotFoundError(absl::StrCat("no version ", version));
    }
    // A STAGING version is aborted even while an overlapped update reads it (its lease keeps the
    // memory; the update then fails): only committed versions being sent are kept.
    if (it != versions_.end() && *it->second->readers > 0 &&
        it->second->state == v1::VERSION_STATE_COMMITTED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "version ", version, " is being sent to workers; drop it after the update ends"));
    }
    if (it != versions_.end()) victims.push_back(Remove(it));
    // Its parts still being pushed go too (their pushes fail).
    while (parts != part_staging_.end() && parts->first.first == version) {
      victims.push_back(RemovePart(parts++));
    }
  }
  spdlog::info("version {} dropped by request", version);
  return absl::OkStatus();
}

std::vector<v1::VersionInfo> VersionStore::List() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::VersionInfo> out;
  auto part = part_staging_.begin();
  for (const auto& [id, v] : versions_) {
    for (; part != part_staging_.end() && part->first.first < id; ++part) {
      out.push_back(Info(*part->second));
    }
    out.push_back(Info(*v));
  }
  for (; part != part_staging_.end(); ++part) out.push_back(Info(*part->second));
  return out;
}

absl::StatusOr<v1::GetVersionResponse> VersionStore::Get(uint64_t version) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = versions_.find(version);
  const Version* v = it != versions_.end() ? it->second.get() : nullptr;
  if (v == nullptr) {
    // Only parts of it staging here: the first.
    auto p = part_staging_.lower_bound({version, 0});
    if (p != part_staging_.end() && p->first.first == version) v = p->second.get();
  }
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("no version ", version));
  v1::GetVersionResponse r;
  *r.mutable_info() = Info(*v);
  *r.mutable_manifest() = v->manifest;
  return r;
}

int VersionStore::AbortStale(absl::Time now) {
  std::vector<std::shared_ptr<Version>> victims;
  const int64_t cutoff = absl::ToUnixNanos(now - options_.staging_timeout);
  {
    absl::MutexLock lock(&mu_);
    for (auto it = versions_.begin(); it != versions_.end();) {
      Version& v = *it->second;
      bool stale = v.state == v1::VERSION_STATE_STAGING && v.last_activity_ns.load() < cutoff;
      if (stale) {
        absl::MutexLock vlock(&v.mu);
        stale = !v.committing && v.writers == 0;
      }
      if (stale) {
        spdlog::warn("version {} aborted: no activity for {}", it->first,
                     HumanDuration(options_.staging_timeout));
        victims.push_back(Remove(it++));
      } else {
        ++it;
      }
    }
    for (auto it = part_staging_.begin(); it != part_staging_.end();) {
      Version& v = *it->second;
      bool stale = v.last_activity_ns.load() < cutoff;
      if (stale) {
        absl::MutexLock vlock(&v.mu);
        stale = !v.committing && v.writers == 0;
      }
      if (stale) {
        spdlog::warn("version {} part {} of {} aborted: no activity for {}", it->first.first,
                     it->first.second, v.part_count, HumanDuration(options_.staging_timeout));
        victims.push_back(RemovePart(it++));
      } else {
        ++it;
      }
    }
  }
  if (!victims.empty()) {
    absl::MutexLock clock(&counters_mu_);
    counters_.aborted += victims.size();
  }
  return static_cast<int>(victims.size());
}

VersionStore::Counters VersionStore::GetCounters() const {
  absl::MutexLock clock(&counters_mu_);
  return counters_;
}

VersionStore::ReadLease::~ReadLease() {
  std::vector<std::shared_ptr<Version>> graveyard;  // destroyed after mu_ is released
  absl::MutexLock lock(&store_->mu_);
  --*v_->readers;
  // A version kept past max_versions only because it was being sent goes now.
  if (*v_->readers == 0) store_->RetireBeyondMax(&graveyard);
}

uint64_t VersionStore::ReadLease::version() const { return v_->id; }
const v1::Manifest& VersionStore::ReadLease::manifest() const { return v_->manifest; }
const uint8_t* VersionStore::ReadLease::data(int i) const {
  return store_->arena_->data() + v_->ranges->offset(i);
}
uint64_t VersionStore::ReadLease::arena_offset(int i) const { return v_->ranges->offset(i); }
bool VersionStore::ReadLease::dropped() const { return v_->dropped.load(); }
uint32_t VersionStore::ReadLease::part_count() const { return v_->part_count; }
const std::vector<uint32_t>& VersionStore::ReadLease::parts() const { return v_->parts; }
uint32_t VersionStore::ReadLease::tensor_part(int i) const {
  return v_->tensor_part[static_cast<size_t>(i)];
}
bool VersionStore::ReadLease::complete() const {
  return v_->part_count == 0 || v_->parts.size() == v_->part_count;
}

absl::StatusOr<VersionStore::StagingLease> VersionStore::LeaseStaging(uint64_t version,
                                                                      const std::string& token) {
  absl::MutexLock lock(&mu_);
  absl::Status error;
  std::shared_ptr<Version> v = FindStaging(version, token, &error);
  if (v == nullptr) return error;
  if (v->part_count != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("version ", version,
                     " is pushed in parts: it is sent to workers once every part is in, "
                     "not while one arrives"));
  }
  StagingLease out;
  // Copied under mu_: Commit replaces the version's manifest under it.
  out.manifest = std::make_shared<const v1::Manifest>(v->manifest);
  ++*v->readers;
  out.lease = std::shared_ptr<ReadLease>(new ReadLease(this, std::move(v)));
  return out;
}

absl::StatusOr<std::shared_ptr<VersionStore::ReadLease>> VersionStore::Lease(uint64_t version) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Version> found;
  if (version == 0) {
    for (const auto& [id, v] : versions_) {
      if (v->state == v1::VERSION_STATE_COMMITTED) found = v;
    }
    if (found == nullptr) return absl::NotFoundError("no version is committed yet");
  } else {
    auto it = versions_.find(version);
    if (it == versions_.end()) {
      return absl::NotFoundError(absl::StrCat(
          "no version ", version,
          version <= max_committed_ ? " (it was retired or dropped)" : " (never committed)"));
    }
    if (it->second->state != v1::VERSION_STATE_COMMITTED) {
      return absl::NotFoundError(absl::StrCat("version ", version, " is still staging"));
    }
    found = it->second;
  }
  ++*found->readers;
  return std::shared_ptr<ReadLease>(new ReadLease(this, std::move(found)));
}

VersionStore::Usage VersionStore::GetUsage() const {
  Usage u;
  u.budget_bytes = arena_->size();
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, v] : versions_) {
      if (v->state == v1::VERSION_STATE_COMMITTED) {
        ++u.committed;
        u.latest_committed = std::max(u.latest_committed, id);
      } else {
        ++u.staging;
      }
    }
    u.staging += static_cast<uint32_t>(part_staging_.size());
  }
  absl::MutexLock alock(&alloc_mu_);
  u.used_bytes = allocator_.capacity() - allocator_.free_bytes();
  u.ready_bytes = arena_->ready_bytes();
  u.ready = warm_ended_ && warm_error_.empty();
  u.pinned = arena_->pinned();
  u.ready_error = warm_error_;
  if (warm_started_ != absl::InfinitePast()) {
    u.warmup_elapsed =
        (warm_finished_ != absl::InfinitePast() ? warm_finished_ : absl::Now()) - warm_started_;
  }
  return u;
}

absl::Duration VersionStore::ReadyEta(uint64_t bytes) const {
  const absl::Duration elapsed = absl::Now() - warm_started_;
  const uint64_t done = arena_->ready_bytes() - warm_start_bytes_;
  if (warm_started_ == absl::InfinitePast() || done == 0 || elapsed <= absl::ZeroDuration()) {
    return absl::ZeroDuration();
  }
  return elapsed * (static_cast<double>(bytes) / static_cast<double>(done));
}

void VersionStore::AwaitReadyFor(uint64_t needed, absl::Time deadline) {
  absl::MutexLock alock(&alloc_mu_);
  auto enough = [this, needed]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(alloc_mu_) {
    const uint64_t free_bytes = allocator_.free_bytes();
    const uint64_t unready = allocator_capacity_ - allocator_.capacity();
    // Waiting helps only while warm-up runs and the version fits once it is done (without
    // retiring anything: Begin decides that later).
    return warm_ended_ || free_bytes >= needed || free_bytes + unready < needed;
  };
  if (enough() || options_.ready_wait <= absl::ZeroDuration()) return;
  // Not worth waiting when the memory would come later than the wait allows: refuse now.
  if (ReadyEta(needed - allocator_.free_bytes()) > options_.ready_wait) return;
  alloc_mu_.AwaitWithDeadline(absl::Condition(&enough),
                              std::min(deadline, absl::Now() + options_.ready_wait));
}

absl::Status VersionStore::StillWarmingUp(uint64_t needed, uint64_t available) const {
  absl::MutexLock alock(&alloc_mu_);
  const uint64_t unready = allocator_capacity_ - allocator_.capacity();
  if (warm_ended_ || needed > available + unready) return absl::OkStatus();
  const uint64_t ready = arena_->ready_bytes();
  const absl::Duration elapsed =
      warm_started_ == absl::InfinitePast() ? absl::ZeroDuration() : absl::Now() - warm_started_;
  const absl::Duration eta = ReadyEta(needed - std::min(needed, allocator_.free_bytes()));
  return absl::UnavailableError(
      absl::StrCat("the store is still getting memory ready: ", FormatBytes(ready), " of ",
                   FormatBytes(arena_->size()), " ready (", HumanDuration(elapsed), " so far",
                   eta > absl::ZeroDuration()
                       ? absl::StrCat(", enough for this version in about ", HumanDuration(eta))
                       : "",
                   "); this version needs ", FormatBytes(needed), ", ",
                   FormatBytes(allocator_.free_bytes()), " of the ready memory is free; retry"));
}

std::string VersionStore::UsableNote() const {
  absl::MutexLock alock(&alloc_mu_);
  if (warm_error_.empty()) return "";
  return absl::StrCat("; only ", FormatBytes(allocator_.capacity()),
                      " of the budget could be made ready (", warm_error_, ")");
}

void VersionStore::StartWarmUp(WarmUpOptions options) {
  {
    absl::MutexLock alock(&alloc_mu_);
    if (warm_ended_) return;
  }
  absl::MutexLock lock(&warm_mu_);
  if (warm_thread_.joinable() || warm_stop_) return;
  warm_thread_ = std::thread([this, options = std::move(options)] { WarmUp(options); });
}

void VersionStore::WarmUp(const WarmUpOptions& options) {
  for (;;) {
    {
      absl::MutexLock lock(&warm_mu_);
      if (warm_stop_) return;
    }
    const bool ended = WarmUpStep(options.piece_bytes);
    if (options.on_progress) options.on_progress(GetUsage());
    if (ended) return;
    if (options.pause > absl::ZeroDuration()) {
      absl::MutexLock lock(&warm_mu_);
      warm_mu_.AwaitWithTimeout(absl::Condition(&warm_stop_), options.pause);
    }
  }
}

bool VersionStore::WarmUpStep(uint64_t piece_bytes) {
  {
    absl::MutexLock alock(&alloc_mu_);
    if (warm_ended_) return true;
    if (warm_started_ == absl::InfinitePast()) {
      warm_started_ = absl::Now();
      warm_start_bytes_ = arena_->ready_bytes();
    }
  }
  const bool pinning = arena_->populated();
  const absl::Time step_start = absl::Now();
  absl::Status s = pinning ? arena_->Pin() : arena_->PopulateNext(piece_bytes);
  std::string note;
  bool ended = false;
  {
    absl::MutexLock alock(&alloc_mu_);
    if (absl::Status grown = allocator_.Grow(arena_->ready_bytes()); !grown.ok() && s.ok()) {
      s = grown;
    }
    if (warm_ended_) return true;  // stopped meanwhile (StopWarmUp)
    const bool done =
        arena_->populated() && (arena_->kind() != HostArena::Kind::kPinned || arena_->pinned());
    if (!s.ok()) {
      warm_error_ = std::string(s.message());
      note = absl::StrCat("version store: warm-up stopped with ",
                          FormatBytes(allocator_.capacity()), " of ", FormatBytes(arena_->size()),
                          " ready: ", warm_error_, "; versions use what is ready");
    } else if (done) {
      note = absl::StrCat(
          "version store ready: ", FormatBytes(arena_->size()), " of ",
          arena_->kind() == HostArena::Kind::kPinned ? "pinned" : "shared", " host memory in ",
          HumanDuration(absl::Now() - warm_started_),
          pinning
              ? absl::StrCat(" (cudaHostRegister: ", HumanDuration(absl::Now() - step_start), ")")
              : "");
    } else if (arena_->populated() && arena_->kind() == HostArena::Kind::kPinned) {
      note = absl::StrCat("version store: ", FormatBytes(arena_->size()), " populated in ",
                          HumanDuration(absl::Now() - warm_started_),
                          "; pinning it (cudaHostRegister); updates copy from pageable memory "
                          "until then");
    }
    if (!s.ok() || done) {
      warm_ended_ = true;
      warm_finished_ = absl::Now();
    }
    ended = warm_ended_;
  }
  if (!s.ok()) {
    spdlog::error("{}", note);
  } else if (!note.empty()) {
    spdlog::info("{}", note);
  }
  return ended;
}

void VersionStore::StopWarmUp() {
  bool running;
  {
    absl::MutexLock lock(&warm_mu_);
    warm_stop_ = true;
    running = warm_thread_.joinable();
  }
  {
    absl::MutexLock alock(&alloc_mu_);
    if (!warm_ended_) {
      warm_ended_ = true;  // wakes Begin calls waiting for memory
      warm_finished_ = absl::Now();
      warm_error_ = "warm-up stopped: ckpt-engined is shutting down";
      if (running) {
        spdlog::info("version store: warm-up stopped with {} of {} ready (shutting down)",
                     FormatBytes(arena_->ready_bytes()), FormatBytes(arena_->size()));
      }
    }
  }
  if (running) warm_thread_.join();
}

}  // namespace ckpt::daemon
