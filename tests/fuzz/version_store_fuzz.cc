// libFuzzer target: the version store's manifest validation and chunk bookkeeping
// (daemon/store/version_store.h, daemon/store/manifest.h) on a fresh 256 KiB kShared store per
// input.
//
// Input layout (little-endian; a short input simply ends the sequence early):
//   u16  L                   length of the manifest
//   L    bytes               a serialized ckpt.v1.Manifest (the input is skipped if it does not
//   parse) u8   flags               bit 0: verify_checksums
//                            bit 1: fix byte_size (set it to product(shape) x element size)
//                            bit 2: fix xxh3 (set it to the checksum of the pattern that FILL
//                            writes) bits 3-4: first requested version: 0 auto, 1 next u8, 2 next
//                            u64,
//                                      3 kMaxVersionId + (next u8 & 1)
//                            bits 5-7: first client ("c0".."c7")
//   ops until the input ends, each an opcode byte (low 3 bits: the op; bits 3-4: which version,
//   see PickVersion) and its operands:
//     0 WRITE   u8 tensor (index mod n+1, n = an unknown name), offset, size (see Number),
//               data: bit 5 set takes `size` bytes of the input when that many are left,
//               otherwise the pattern
//     1 FILL    u8 tensor, u8 chunk (see FillChunk): the whole tensor, pattern data
//     2 COMMIT
//     3 ABORT
//     4 BEGIN   u8 requested version (0 auto, 1..254 that id, 255 next u64), u8 label length/4,
//               u8 client: the same manifest again
//     5 DROP
//     6 FILLALL u8 chunk: every tensor of the version, pattern data
//     7 LEASE   takes (or releases, if one is held) a read lease on the newest committed version
//
// The fuzzer keeps a model of the store (versions, their states and every byte written) and
// traps (__builtin_trap: libFuzzer reports a crash) when the store disagrees with it:
// - status codes of WriteChunk / Commit / Abort / Drop are exactly the ones the model predicts;
//   WriteChunk is never OK for a range past the tensor's byte_size or for a wrong token;
// - a first Begin on the empty store succeeds if and only if ValidateManifest accepts the manifest
//   (limits: the store's) and its tensors, rounded up to 256 bytes, fit the arena; a Begin that the
//   model knows must fail (label, id, limits, memory) fails; automatic ids are predicted exactly;
// - GetUsage().used_bytes <= budget_bytes, and used_bytes equals the 256-byte-rounded bytes of the
//   versions List() shows: after an Abort, a Drop or a failed Begin the memory is back;
// - List() shows exactly the model's versions; only Begin, Commit and the end of a lease may retire
//   committed versions (never the newest, never a leased one); received_bytes counts each byte
//   once;
// - Commit is OK exactly when every byte is present and the checksums match (when verified), in
//   any order of ids; a committed (or leased) version's bytes equal the model's.
// ASan / UBSan catch memory errors and undefined behaviour on the way.
#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "daemon/store/host_arena.h"
#include "daemon/store/manifest.h"
#include "daemon/store/version_store.h"
#include "google/protobuf/stubs/logging.h"
#include "proto/common.pb.h"
#include "spdlog/spdlog.h"

namespace {

using ckpt::daemon::HostArena;
using ckpt::daemon::kMaxVersionId;
using ckpt::daemon::VersionStore;
namespace v1 = ckpt::v1;
using Code = absl::StatusCode;

// The arena: 256 KiB. Creating it (memfd, fallocate, MAP_POPULATE) is most of the cost of an input;
// at 1 MiB it took 1.5 ms, a quarter of the speed, for the same code paths.
constexpr uint64_t kBudget = uint64_t{1} << 18;
constexpr uint64_t kAlign = 256;
constexpr int kMaxVersions = 2;
constexpr int kMaxStaging = 6;
constexpr int kMaxStagingPerClient = 3;
constexpr size_t kMaxOps = 256;
// Chunk sizes above this (but below kHuge) are cut to it: the pattern buffer has this many bytes
// past any offset inside a tensor.
constexpr uint64_t kMaxChunk = 2 * kBudget;
constexpr size_t kPatternPeriod = 251;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// pattern[i] depends on i % 251 only, so a chunk written at tensor offset o from pattern + o % 251
// leaves byte p of the tensor equal to pattern[p] however the tensor was cut into chunks.
const uint8_t* Pattern() {
  static const uint8_t* const p = [] {
    auto* buf = new uint8_t[kMaxChunk + 2 * kBudget + kPatternPeriod];
    for (size_t i = 0; i < kMaxChunk + 2 * kBudget + kPatternPeriod; ++i) {
      buf[i] = static_cast<uint8_t>((i % kPatternPeriod) * 37 + 11);
    }
    return buf;
  }();
  return p;
}

uint64_t Rounded(uint64_t size) {
  if (size == 0) return kAlign;
  return (size + kAlign - 1) / kAlign * kAlign;
}

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), left_(size) {}
  bool empty() const { return left_ == 0; }
  size_t left() const { return left_; }
  uint8_t U8() {
    if (left_ == 0) return 0;
    --left_;
    return *p_++;
  }
  uint16_t U16() { return static_cast<uint16_t>(U8() | (U8() << 8)); }
  uint64_t U64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(U8()) << (8 * i);
    return v;
  }
  const uint8_t* Take(size_t n) {
    if (n > left_) n = left_;
    const uint8_t* out = p_;
    p_ += n;
    left_ -= n;
    return out;
  }

 private:
  const uint8_t* p_;
  size_t left_;
};

// An offset or size relative to a tensor of `limit` bytes: a selector byte, then its operand.
uint64_t Number(Reader& in, uint64_t limit) {
  const uint8_t sel = in.U8();
  switch (sel & 7) {
    case 0:
      return sel >> 3;  // 0..31
    case 1:
      return in.U8();
    case 2:
      return in.U16();
    case 3:
      return limit - std::min<uint64_t>(limit, sel >> 3);  // near the end
    case 4:
      return limit + (sel >> 3);  // just past the end
    case 5:
      return limit / 2 + in.U8();
    case 6:
      return in.U64();  // anything, overflow included
    default:
      return UINT64_MAX - (sel >> 3);
  }
}

// Sets `n` bytes of a have-map to 1; returns how many were 0. Not instrumented for coverage: the
// model's per-byte loop says nothing about the store, and instrumented it cost most of the time.
__attribute__((noinline, no_sanitize("coverage"))) uint64_t MarkBytes(uint8_t* have, uint64_t n) {
  uint64_t fresh = 0;
  for (uint64_t k = 0; k < n; ++k) fresh += have[k] ^ 1;
  if (n > 0) std::memset(have, 1, n);
  return fresh;
}

// The rounded sum of a manifest's byte sizes, saturating.
uint64_t RoundedSum(const v1::Manifest& m) {
  uint64_t sum = 0;
  for (const auto& t : m.tensors()) {
    const uint64_t b = t.byte_size();
    const uint64_t r = b > UINT64_MAX - kAlign ? UINT64_MAX : Rounded(b);
    sum = r > UINT64_MAX - sum ? UINT64_MAX : sum + r;
  }
  return sum;
}

struct ModelVersion {
  uint64_t id = 0;
  std::string token;
  std::string client;
  bool committed = false;
  bool verify = true;
  // Per tensor: the bytes written and which of them were written.
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<std::vector<uint8_t>> have;
  uint64_t received = 0;
  uint64_t rounded = 0;
};

class Fuzz {
 public:
  Fuzz(const v1::Manifest& manifest, std::unique_ptr<VersionStore> store)
      : manifest_(manifest), store_(std::move(store)), rounded_(RoundedSum(manifest_)) {}

  ~Fuzz() { ReleaseLease(); }

  // Begin with the model's predictions. `first`: the store is empty (exact prediction).
  void Begin(uint64_t requested, const std::string& label, const std::string& client, bool verify,
             bool first) {
    uint64_t total = 0;
    ckpt::daemon::ManifestLimits limits;
    limits.max_tensors = ckpt::daemon::kDefaultMaxTensors;
    limits.max_total_bytes = kBudget / kAlign * kAlign;
    const bool manifest_ok = ckpt::daemon::ValidateManifest(manifest_, limits, &total).ok();
    const bool label_ok = label.size() <= ckpt::daemon::kMaxLabelBytes;
    const bool id_ok = requested <= kMaxVersionId;
    // Memory that no retirement can free: staging versions, the newest committed, leased ones.
    uint64_t pinned = 0;
    int staging = 0, staging_of_client = 0;
    uint64_t newest = 0;
    for (const auto& [id, m] : model_) {
      if (m.committed) newest = id;
    }
    for (const auto& [id, m] : model_) {
      if (!m.committed) {
        ++staging;
        staging_of_client += m.client == client;
      }
      if (!m.committed || id == newest || id == leased_) pinned += m.rounded;
    }
    bool must_fail = !manifest_ok || !label_ok || !id_ok || staging >= kMaxStaging ||
                     staging_of_client >= kMaxStagingPerClient || rounded_ > kBudget - pinned;
    std::optional<uint64_t> expected_id;
    if (requested != 0) {
      if (model_.count(requested) != 0 || requested <= max_committed_) must_fail = true;
      expected_id = requested;
    } else {
      uint64_t next = std::max(max_committed_, max_begun_);
      for (;;) {
        if (next >= kMaxVersionId) {
          must_fail = true;
          break;
        }
        ++next;
        if (model_.count(next) == 0) break;
      }
      expected_id = next;
    }

    const uint64_t used_before = Used();
    v1::Manifest copy = manifest_;
    auto r = store_->Begin(copy, requested, label, client, verify);
    if (first) {
      Check(r.ok() == !must_fail);
      Check(used_before == 0);
    }
    if (must_fail) Check(!r.ok());
    if (!r.ok()) {
      const Code c = r.status().code();
      Check(c == Code::kInvalidArgument || c == Code::kResourceExhausted ||
            c == Code::kAlreadyExists || c == Code::kFailedPrecondition);
      if (!label_ok || !id_ok || !manifest_ok) {
        Check(c == Code::kInvalidArgument ||
              (manifest_ok == false && c == Code::kResourceExhausted));
      }
      Sync(/*retirement_allowed=*/true);
      return;
    }
    Check(!r->upload_token.empty());
    Check(r->version == *expected_id);
    Check(r->version != 0 && r->version <= kMaxVersionId);
    Check(model_.count(r->version) == 0);
    ModelVersion m;
    m.id = r->version;
    m.token = r->upload_token;
    m.client = client;
    m.verify = verify;
    m.rounded = rounded_;
    for (const auto& t : manifest_.tensors()) {
      m.bytes.emplace_back(t.byte_size());
      m.have.emplace_back(t.byte_size());
    }
    model_[m.id] = std::move(m);
    max_begun_ = std::max(max_begun_, r->version);
    current_ = r->version;
    Sync(/*retirement_allowed=*/true);
  }

  // Version chosen by bits 3-4 of the opcode: 0 the current one (last begun), 1 one of the
  // model's by the next byte, 2 an id the store never gave, 3 the current one with a wrong token
  // (bit 5 of the opcode: an empty one).
  struct Target {
    uint64_t id;
    std::string token;
    ModelVersion* m;  // null when the model has no such version
    bool token_ok;
  };
  Target PickVersion(uint8_t op, Reader& in) {
    uint64_t id = current_;
    const int sel = (op >> 3) & 3;
    if (sel == 1 && !model_.empty()) {
      auto it = model_.begin();
      std::advance(it, in.U8() % model_.size());
      id = it->first;
    } else if (sel == 2) {
      id = max_begun_ + 1 + in.U8();
    }
    Target t{id, "", nullptr, false};
    auto it = model_.find(id);
    if (it != model_.end()) {
      t.m = &it->second;
      t.token = it->second.token;
      t.token_ok = true;
    }
    if (sel == 3) {
      t.token = (op & 0x20) ? "" : "0123456789abcdef0123456789abcdef";
      t.token_ok = false;
    }
    return t;
  }

  // The status the store must give for a write/commit/abort on `t` before looking at tensors.
  static std::optional<Code> AccessError(const Target& t) {
    if (t.m == nullptr || t.m->committed) return Code::kNotFound;
    if (!t.token_ok) return Code::kPermissionDenied;
    return std::nullopt;
  }

  void Write(const Target& t, int tensor, uint64_t offset, uint64_t size, const uint8_t* data) {
    const std::string name =
        tensor < manifest_.tensors_size() ? manifest_.tensors(tensor).name() : UnknownName();
    absl::Status s = store_->WriteChunk(t.id, t.token, name, offset, data, size);
    std::optional<Code> expected = AccessError(t);
    uint64_t limit = 0;
    if (!expected) {
      if (tensor >= manifest_.tensors_size()) {
        expected = Code::kNotFound;
      } else {
        limit = manifest_.tensors(tensor).byte_size();
        if (offset > limit || size > limit - offset) expected = Code::kOutOfRange;
      }
    }
    if (expected) {
      Check(s.code() == *expected);
      return;
    }
    Check(s.ok());
    ModelVersion& m = *t.m;
    if (size == 0) return;  // an empty tensor has no buffer at all
    std::memcpy(m.bytes[tensor].data() + offset, data, size);
    m.received += MarkBytes(m.have[tensor].data() + offset, size);
  }

  void Fill(const Target& t, int tensor, uint64_t chunk) {
    if (tensor >= manifest_.tensors_size()) return;
    const uint64_t n = manifest_.tensors(tensor).byte_size();
    if (AccessError(t) || n > kBudget) {  // refused whatever the chunk: one try is enough
      Write(t, tensor, 0, std::min(n, chunk), Pattern());
      return;
    }
    for (uint64_t off = 0; off < n; off += chunk) {
      const uint64_t size = std::min(chunk, n - off);
      Write(t, tensor, off, size, Pattern() + off % kPatternPeriod);
    }
  }

  void Commit(const Target& t) {
    auto r = store_->Commit(t.id, t.token);
    std::optional<Code> expected = AccessError(t);
    if (!expected) {
      const ModelVersion& m = *t.m;
      bool complete = true, sums_ok = true;
      for (int i = 0; i < manifest_.tensors_size(); ++i) {
        complete = complete && (m.have[i].empty() ||
                                std::memchr(m.have[i].data(), 0, m.have[i].size()) == nullptr);
        if (m.verify && complete) {
          sums_ok = sums_ok && XXH3_64bits(m.bytes[i].data(), m.bytes[i].size()) ==
                                   manifest_.tensors(i).xxh3();
        }
      }
      if (!complete || !sums_ok) expected = Code::kFailedPrecondition;
    }
    if (expected) {
      Check(r.status().code() == *expected);
      Sync(/*retirement_allowed=*/false);
      return;
    }
    Check(r.ok());
    Check(r->version() == t.id && r->state() == v1::VERSION_STATE_COMMITTED);
    Check(r->total_bytes() == TotalBytes());
    t.m->committed = true;
    const bool newest = t.id > max_committed_;
    max_committed_ = std::max(max_committed_, t.id);
    // (A late commit below max_versions newer ids is retired at once: nothing to read then.)
    if (newest || store_->Get(t.id).ok()) CheckBytes(t.id);
    Sync(/*retirement_allowed=*/true);
    // A version committing after a higher id did (a concurrent push) is an older one: it may be
    // retired at once; the newest never is.
    if (newest) Check(model_.count(t.id) == 1);
  }

  void Abort(const Target& t) {
    absl::Status s = store_->Abort(t.id, t.token, "fuzz");
    std::optional<Code> expected = AccessError(t);
    if (expected) {
      Check(s.code() == *expected);
    } else {
      Check(s.ok());
      model_.erase(t.id);
    }
    Sync(/*retirement_allowed=*/false);
  }

  void Drop(const Target& t) {
    absl::Status s = store_->Drop(t.id);
    if (t.m == nullptr) {
      Check(s.code() == Code::kNotFound);
    } else if (t.id == leased_) {
      Check(s.code() == Code::kFailedPrecondition);
    } else {
      Check(s.ok());
      model_.erase(t.id);
    }
    Sync(/*retirement_allowed=*/false);
  }

  void ToggleLease() {
    if (lease_ != nullptr) {
      ReleaseLease();
      Sync(/*retirement_allowed=*/true);  // a version kept past max_versions for it goes now
      return;
    }
    uint64_t newest = 0;
    for (const auto& [id, m] : model_) {
      if (m.committed) newest = id;
    }
    auto r = store_->Lease(0);
    if (newest == 0) {
      Check(r.status().code() == Code::kNotFound);
      return;
    }
    Check(r.ok() && (*r)->version() == newest);
    lease_ = *std::move(r);
    leased_ = newest;
    CheckBytes(newest);
  }

  // The store agrees with the model. `retirement_allowed`: committed versions may have been retired
  // (Begin, Commit), never the newest or the leased one.
  void Sync(bool retirement_allowed) {
    const VersionStore::Usage u = store_->GetUsage();
    Check(u.budget_bytes == kBudget);
    Check(u.used_bytes <= u.budget_bytes);
    std::vector<v1::VersionInfo> list = store_->List();
    std::map<uint64_t, const v1::VersionInfo*> listed;
    for (const auto& info : list) listed[info.version()] = &info;
    Check(listed.size() == list.size());
    uint64_t newest = 0;
    for (const auto& [id, m] : model_) {
      if (m.committed) newest = id;
    }
    for (auto it = model_.begin(); it != model_.end();) {
      if (listed.count(it->first) == 0) {
        Check(retirement_allowed && it->second.committed && it->first != newest &&
              it->first != leased_);
        it = model_.erase(it);
      } else {
        ++it;
      }
    }
    Check(listed.size() == model_.size());
    uint64_t used = 0;
    uint32_t staging = 0, committed = 0;
    for (const auto& [id, m] : model_) {
      auto l = listed.find(id);
      Check(l != listed.end());
      const v1::VersionInfo& info = *l->second;
      Check(info.state() ==
            (m.committed ? v1::VERSION_STATE_COMMITTED : v1::VERSION_STATE_STAGING));
      Check(info.tensor_count() == static_cast<uint64_t>(manifest_.tensors_size()));
      if (!m.committed) Check(info.received_bytes() == m.received);
      used += m.rounded;
      staging += !m.committed;
      committed += m.committed;
    }
    Check(u.used_bytes == used);
    Check(u.staging == staging && u.committed == committed);
    Check(u.latest_committed == newest);
    Check(committed <= static_cast<uint32_t>(kMaxVersions) + (lease_ != nullptr ? 1 : 0));
  }

 private:
  uint64_t Used() const { return store_->GetUsage().used_bytes; }

  uint64_t TotalBytes() const {
    uint64_t total = 0;
    for (const auto& t : manifest_.tensors()) total += t.byte_size();
    return total;
  }

  std::string UnknownName() const {
    std::string name = "unknown-tensor";
    for (;;) {
      bool taken = false;
      for (const auto& t : manifest_.tensors()) taken = taken || t.name() == name;
      if (!taken) return name;
      name += "-";
    }
  }

  // A committed version's bytes, read through a lease, are the model's.
  void CheckBytes(uint64_t id) {
    auto lease = store_->Lease(id);
    Check(lease.ok());
    const ModelVersion& m = model_.at(id);
    for (int i = 0; i < manifest_.tensors_size(); ++i) {
      if (m.bytes[i].empty()) continue;
      Check(std::memcmp((*lease)->data(i), m.bytes[i].data(), m.bytes[i].size()) == 0);
    }
  }

  void ReleaseLease() {
    if (lease_ == nullptr) return;
    CheckBytes(leased_);  // nothing wrote over a leased version
    lease_.reset();
    leased_ = 0;
  }

  const v1::Manifest manifest_;
  std::unique_ptr<VersionStore> store_;
  uint64_t rounded_ = 0;
  std::map<uint64_t, ModelVersion> model_;
  uint64_t max_committed_ = 0;
  uint64_t max_begun_ = 0;
  uint64_t current_ = 0;
  std::shared_ptr<VersionStore::ReadLease> lease_;
  uint64_t leased_ = 0;
};

// FILL's chunk size: 1..128 x 4 KiB, or 1..128 x 256 B + 1 when the top bit is set (chunk edges
// off the 256-byte grid). Small ragged chunks are WRITE's job: a whole 256 KiB tensor in 256-byte
// chunks would cost 1024 calls.
uint64_t FillChunk(uint8_t b) {
  return (b & 0x80) ? (uint64_t{b} - 0x80 + 1) * 256 + 1 : (uint64_t{b} + 1) * 4096;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  // Parsing logs every string field that is not UTF-8; the fuzzer makes millions of them.
  google::protobuf::SetLogHandler(nullptr);
  Pattern();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint16_t manifest_len = in.U16();
  if (in.left() < manifest_len) return 0;
  v1::Manifest manifest;
  if (!manifest.ParseFromArray(in.Take(manifest_len), manifest_len)) return 0;
  const uint8_t flags = in.U8();
  const bool verify = flags & 1;
  if (flags & 2) {
    for (auto& t : *manifest.mutable_tensors()) {
      auto dtype = ckpt::DTypeFromWire(t.dtype());
      if (!dtype) continue;
      auto bytes = ckpt::TensorByteSize(*dtype, {t.shape().begin(), t.shape().end()});
      if (bytes.ok()) t.set_byte_size(*bytes);
    }
  }
  if (flags & 4) {
    for (auto& t : *manifest.mutable_tensors()) {
      // FILL writes pattern[p] at byte p; a tensor larger than the pattern cannot fit the store.
      if (t.byte_size() <= kBudget) t.set_xxh3(XXH3_64bits(Pattern(), t.byte_size()));
    }
  }
  uint64_t requested = 0;
  switch ((flags >> 3) & 3) {
    case 0:
      requested = 0;
      break;
    case 1:
      requested = in.U8();
      break;
    case 2:
      requested = in.U64();
      break;
    default:
      requested = kMaxVersionId + (in.U8() & 1);
      break;
  }
  const std::string first_client = "c" + std::to_string(flags >> 5);

  auto arena = HostArena::Create(HostArena::Kind::kShared, kBudget);
  Check(arena.ok());
  VersionStore::Options options;
  options.max_versions = kMaxVersions;
  options.hash_threads = 1;
  options.max_staging = kMaxStaging;
  options.max_staging_per_client = kMaxStagingPerClient;
  auto store = std::make_unique<VersionStore>(*std::move(arena), options);
  Fuzz fuzz(manifest, std::move(store));
  fuzz.Begin(requested, "fuzz", first_client, verify, /*first=*/true);

  for (size_t ops = 0; ops < kMaxOps && !in.empty(); ++ops) {
    const uint8_t op = in.U8();
    switch (op & 7) {
      case 0: {
        Fuzz::Target t = fuzz.PickVersion(op, in);
        const int tensor =
            manifest.tensors_size() == 0 ? 0 : in.U8() % (manifest.tensors_size() + 1);
        const uint64_t limit =
            tensor < manifest.tensors_size() ? manifest.tensors(tensor).byte_size() : 64;
        const uint64_t offset = Number(in, limit);
        uint64_t size = Number(in, limit);
        const uint8_t* src;
        std::vector<uint8_t> inline_bytes;
        if ((op & 0x20) && size <= in.left()) {
          src = in.Take(size);
        } else {
          // Sizes the store must refuse may be anything; a size it could accept is at most
          // kMaxChunk here, so that the pattern covers it.
          if (size > kMaxChunk && size <= (UINT64_MAX >> 1)) size = kMaxChunk;
          src = Pattern() + (offset < kBudget ? offset % kPatternPeriod : 0);
        }
        fuzz.Write(t, tensor, offset, size, src);
        break;
      }
      case 1: {
        Fuzz::Target t = fuzz.PickVersion(op, in);
        const int tensor = manifest.tensors_size() == 0 ? 0 : in.U8() % manifest.tensors_size();
        fuzz.Fill(t, tensor, FillChunk(in.U8()));
        break;
      }
      case 2:
        fuzz.Commit(fuzz.PickVersion(op, in));
        break;
      case 3:
        fuzz.Abort(fuzz.PickVersion(op, in));
        break;
      case 4: {
        const uint8_t r = in.U8();
        const uint64_t req = r == 255 ? in.U64() : r;
        const std::string label(size_t{in.U8()} * 5, 'l');
        const std::string client = "c" + std::to_string(in.U8() % 8);
        fuzz.Begin(req, label, client, verify, /*first=*/false);
        break;
      }
      case 5:
        fuzz.Drop(fuzz.PickVersion(op, in));
        break;
      case 6: {
        Fuzz::Target t = fuzz.PickVersion(op, in);
        const uint64_t chunk = FillChunk(in.U8());
        for (int i = 0; i < manifest.tensors_size(); ++i) fuzz.Fill(t, i, chunk);
        break;
      }
      default:
        fuzz.ToggleLease();
        break;
    }
  }
  fuzz.Sync(false);
  return 0;
}
