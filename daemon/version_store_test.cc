#include "daemon/version_store.h"

#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/dtype.h"

namespace ckpt::daemon {
namespace {

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::string bytes;
};

Tensor MakeTensor(const std::string& name, std::vector<int64_t> shape, uint64_t seed) {
  uint64_t n = 4;  // float32
  for (int64_t d : shape) n *= d;
  std::string bytes(n, '\0');
  std::mt19937_64 rng(seed);
  for (auto& c : bytes) c = static_cast<char>(rng());
  return {name, std::move(shape), std::move(bytes)};
}

v1::Manifest ManifestOf(const std::vector<Tensor>& tensors) {
  v1::Manifest m;
  for (const Tensor& t : tensors) {
    v1::TensorSpec* s = m.add_tensors();
    s->set_name(t.name);
    s->set_dtype(v1::DTYPE_FLOAT32);
    for (int64_t d : t.shape) s->add_shape(d);
    s->set_byte_size(t.bytes.size());
    s->set_xxh3(XXH3_64bits(t.bytes.data(), t.bytes.size()));
  }
  return m;
}

std::unique_ptr<VersionStore> NewStore(uint64_t budget, VersionStore::Options options = {}) {
  auto arena = HostArena::Create(HostArena::Kind::kShared, budget);
  REQUIRE(arena.ok());
  return std::make_unique<VersionStore>(std::move(*arena), options);
}

// Pushes every tensor in chunks of `chunk` bytes, in reverse order (any order must work).
void PushAll(VersionStore& store, const VersionStore::Begun& b, const std::vector<Tensor>& ts,
             uint64_t chunk = 1000) {
  for (const Tensor& t : ts) {
    for (uint64_t off = 0; off < t.bytes.size(); off += chunk) {
      uint64_t end = std::min<uint64_t>(t.bytes.size(), off + chunk);
      REQUIRE(store
                  .WriteChunk(b.version, b.upload_token, t.name, t.bytes.size() - end,
                              t.bytes.data() + t.bytes.size() - end, end - off)
                  .ok());
    }
  }
}

bool Contains(absl::string_view s, absl::string_view needle) {
  return s.find(needle) != absl::string_view::npos;
}

TEST_CASE("begin, push in any order, commit: the version is committed with its manifest") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("a", {10, 10}, 1), MakeTensor("b", {333}, 2),
                            MakeTensor("empty", {0}, 3)};
  auto b = store->Begin(ManifestOf(ts), 0, "step-1");
  REQUIRE(b.ok());
  CHECK(b->version == 1);
  CHECK(b->upload_token.size() == 32);
  CHECK(store->GetUsage().staging == 1);
  PushAll(*store, *b, ts);
  // Resending a chunk is harmless and counts once.
  REQUIRE(store->WriteChunk(b->version, b->upload_token, "a", 0, ts[0].bytes.data(), 100).ok());
  auto info = store->Commit(b->version, b->upload_token);
  REQUIRE(info.ok());
  CHECK(info->state() == v1::VERSION_STATE_COMMITTED);
  CHECK(info->total_bytes() == 400 + 1332);
  CHECK(info->received_bytes() == 400 + 1332);
  CHECK(info->label() == "step-1");
  auto got = store->Get(b->version);
  REQUIRE(got.ok());
  CHECK(got->manifest().tensors_size() == 3);
  auto usage = store->GetUsage();
  CHECK(usage.committed == 1);
  CHECK(usage.staging == 0);
  CHECK(usage.latest_committed == 1);
  CHECK(usage.used_bytes == 512 + 1536 + 256);
}

TEST_CASE("commit names missing bytes and checksum mismatches and keeps the version staging") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("w", {256}, 1)};
  auto b = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(b.ok());
  REQUIRE(store->WriteChunk(b->version, b->upload_token, "w", 0, ts[0].bytes.data(), 512).ok());
  auto r = store->Commit(b->version, b->upload_token);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(r.status().message(), "'w' has 512 of 1024 bytes missing (first gap at 512)"));

  std::string wrong = ts[0].bytes.substr(512);
  wrong[7] ^= 1;
  REQUIRE(store->WriteChunk(b->version, b->upload_token, "w", 512, wrong.data(), 512).ok());
  r = store->Commit(b->version, b->upload_token);
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "checksum mismatch"));
  CHECK(Contains(r.status().message(), "'w'"));
  // The trainer resends the right bytes and commits.
  REQUIRE(
      store->WriteChunk(b->version, b->upload_token, "w", 512, ts[0].bytes.data() + 512, 512).ok());
  CHECK(store->Commit(b->version, b->upload_token).ok());
}

TEST_CASE("chunk errors: token, version, tensor, range") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("w", {16}, 1)};
  auto b = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(b.ok());
  char buf[100] = {};
  CHECK(store->WriteChunk(b->version, "bad", "w", 0, buf, 4).code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK(store->WriteChunk(b->version, "", "w", 0, buf, 4).code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK(store->WriteChunk(99, b->upload_token, "w", 0, buf, 4).code() ==
        absl::StatusCode::kNotFound);
  CHECK(store->WriteChunk(b->version, b->upload_token, "x", 0, buf, 4).code() ==
        absl::StatusCode::kNotFound);
  absl::Status past = store->WriteChunk(b->version, b->upload_token, "w", 60, buf, 5);
  CHECK(past.code() == absl::StatusCode::kOutOfRange);
  CHECK(Contains(past.message(), "past the end of tensor 'w' (64 bytes)"));
  CHECK(store->WriteChunk(b->version, b->upload_token, "w", ~0ull, buf, 2).code() ==
        absl::StatusCode::kOutOfRange);
}

TEST_CASE("manifest errors at begin leave nothing behind") {
  auto store = NewStore(1 << 20);
  auto bad = [&](v1::Manifest m, const char* needle) {
    INFO(needle);
    auto r = store->Begin(m, 0, "");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(r.status().message(), needle));
  };
  bad(v1::Manifest(), "no tensors");
  v1::Manifest dup = ManifestOf({MakeTensor("a", {1}, 1), MakeTensor("a", {2}, 2)});
  bad(dup, "duplicate tensor name 'a'");
  v1::Manifest dtype = ManifestOf({MakeTensor("a", {1}, 1)});
  dtype.mutable_tensors(0)->set_dtype(static_cast<v1::DType>(77));
  bad(dtype, "unknown dtype 77");
  v1::Manifest size = ManifestOf({MakeTensor("a", {3}, 1)});
  size.mutable_tensors(0)->set_byte_size(13);
  bad(size, "byte_size 13 does not match shape [3] of float32 (12 bytes)");
  CHECK(store->GetUsage().used_bytes == 0);
  CHECK(store->List().empty());
}

TEST_CASE("version ids: given ids must be unused and increase") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("w", {4}, 1)};
  auto b = store->Begin(ManifestOf(ts), 10, "");
  REQUIRE(b.ok());
  CHECK(b->version == 10);
  CHECK(store->Begin(ManifestOf(ts), 10, "").status().code() == absl::StatusCode::kAlreadyExists);
  PushAll(*store, *b, ts);
  REQUIRE(store->Commit(10, b->upload_token).ok());
  CHECK(store->Begin(ManifestOf(ts), 5, "").status().code() ==
        absl::StatusCode::kFailedPrecondition);
  auto next = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(next.ok());
  CHECK(next->version == 11);
  // An aborted id may be used again.
  REQUIRE(store->Abort(11, next->upload_token, "test").ok());
  CHECK(store->Begin(ManifestOf(ts), 11, "").ok());
}

TEST_CASE("admission control refuses what cannot fit, with needed and free bytes") {
  auto store = NewStore(64 * 1024);
  std::vector<Tensor> big = {MakeTensor("w", {20000}, 1)};  // 80000 bytes
  auto r = store->Begin(ManifestOf(big), 0, "");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(r.status().message(), "'w' has 80000 bytes"));
  CHECK(Contains(r.status().message(), "more than the whole host_memory_budget of 64.0 KiB"));
  CHECK(store->GetUsage().used_bytes == 0);
  // Fits the budget, but not what a staging version leaves free.
  auto held = store->Begin(ManifestOf({MakeTensor("h", {10000}, 2)}), 0, "");  // 40000 bytes
  REQUIRE(held.ok());
  auto r2 = store->Begin(ManifestOf({MakeTensor("w", {7500}, 1)}), 0, "");  // 30000 bytes
  CHECK(r2.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(r2.status().message(), "needs 30208 bytes"));
  CHECK(Contains(r2.status().message(), "only 25344 bytes"));
  CHECK(store->GetUsage().used_bytes == 40192);
}

TEST_CASE("old versions are retired: at most max_versions, and to make room for a new one") {
  VersionStore::Options options;
  options.max_versions = 2;
  auto store = NewStore(35000, options);
  std::vector<Tensor> ts = {MakeTensor("w", {2500}, 1)};  // 10000 (10240 aligned): 3 fit, 4 do not
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    auto b = store->Begin(ManifestOf(ts), 0, "");
    REQUIRE(b.ok());
    PushAll(*store, *b, ts, 4096);
    REQUIRE(store->Commit(b->version, b->upload_token).ok());
    ids.push_back(b->version);
  }
  // The third commit retired the first.
  auto list = store->List();
  REQUIRE(list.size() == 2);
  CHECK(list[0].version() == ids[1]);
  CHECK(list[1].version() == ids[2]);
  CHECK(store->Get(ids[0]).status().code() == absl::StatusCode::kNotFound);

  // Two staging versions fill the memory; the older committed one is retired for the second, the
  // newest committed one never is.
  auto s1 = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(s1.ok());
  auto s2 = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(s2.ok());
  list = store->List();
  REQUIRE(list.size() == 3);
  CHECK(list[0].version() == ids[2]);
  auto s3 = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE_FALSE(s3.ok());
  CHECK(s3.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(store->Get(ids[2]).ok());
}

TEST_CASE("abort, drop and stale staging versions return their memory") {
  VersionStore::Options options;
  options.staging_timeout = absl::Seconds(10);
  auto store = NewStore(1 << 20, options);
  std::vector<Tensor> ts = {MakeTensor("w", {1000}, 1)};
  auto a = store->Begin(ManifestOf(ts), 0, "");
  auto b = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(store->Abort(a->version, "wrong", "x").code() == absl::StatusCode::kPermissionDenied);
  REQUIRE(store->Abort(a->version, a->upload_token, "test").ok());
  CHECK(store->Abort(a->version, a->upload_token, "again").code() == absl::StatusCode::kNotFound);
  CHECK(store->AbortStale(absl::Now()) == 0);
  CHECK(store->AbortStale(absl::Now() + absl::Seconds(11)) == 1);
  CHECK(store->GetUsage().used_bytes == 0);
  CHECK(store->GetUsage().staging == 0);

  auto c = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(c.ok());
  PushAll(*store, *c, ts);
  REQUIRE(store->Commit(c->version, c->upload_token).ok());
  REQUIRE(store->Drop(c->version).ok());
  CHECK(store->Drop(c->version).code() == absl::StatusCode::kNotFound);
  CHECK(store->GetUsage().used_bytes == 0);
}

TEST_CASE("parallel writers into one version") {
  auto store = NewStore(16 << 20);
  std::vector<Tensor> ts;
  for (int i = 0; i < 16; ++i) ts.push_back(MakeTensor("t" + std::to_string(i), {40000}, i));
  auto b = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(b.ok());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = k; i < ts.size(); i += 4) {
        for (uint64_t off = 0; off < ts[i].bytes.size(); off += 7000) {
          uint64_t n = std::min<uint64_t>(7000, ts[i].bytes.size() - off);
          if (!store
                   ->WriteChunk(b->version, b->upload_token, ts[i].name, off,
                                ts[i].bytes.data() + off, n)
                   .ok()) {
            ++failures;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  CHECK(store->Commit(b->version, b->upload_token).ok());
}

TEST_CASE("LoadFiles path: a write lease, mark received, checksums computed at commit") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("x", {8}, 5)};
  v1::Manifest m = ManifestOf(ts);
  m.mutable_tensors(0)->clear_xxh3();
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  auto lease = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(lease.ok());
  std::memcpy((*lease)->data(0), ts[0].bytes.data(), ts[0].bytes.size());
  CHECK((*lease)->Touch());
  REQUIRE((*lease)->MarkAllReceived().ok());
  lease->reset();
  REQUIRE(store->Commit(b->version, b->upload_token).ok());
  auto got = store->Get(b->version);
  REQUIRE(got.ok());
  CHECK(got->manifest().tensors(0).xxh3() == XXH3_64bits(ts[0].bytes.data(), ts[0].bytes.size()));
}

TEST_CASE("a version aborted or dropped under a writer keeps its memory until the writer is done") {
  VersionStore::Options options;
  options.staging_timeout = absl::Seconds(1);
  auto store = NewStore(1 << 20, options);
  std::vector<Tensor> ts = {MakeTensor("x", {1000}, 5)};
  auto b = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(b.ok());
  auto lease = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(lease.ok());
  // The reaper spares a version with a writer, however old its last activity.
  CHECK(store->AbortStale(absl::Now() + absl::Hours(1)) == 0);
  CHECK(store->GetUsage().staging == 1);

  REQUIRE(store->Drop(b->version).ok());
  CHECK(store->GetUsage().staging == 0);
  // Still ours: the 4000 bytes (rounded to 4096) are not free for another version yet.
  CHECK(store->GetUsage().used_bytes == 4096);
  std::memset((*lease)->data(0), 0x5a, 4000);  // no use after free: the range is still held
  CHECK_FALSE((*lease)->Touch());
  CHECK((*lease)->MarkAllReceived().code() == absl::StatusCode::kAborted);
  lease->reset();
  CHECK(store->GetUsage().used_bytes == 0);
  CHECK(store->Commit(b->version, b->upload_token).status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("tokens are required: an empty token is refused everywhere") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("x", {8}, 5)};
  auto b = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(b.ok());
  PushAll(*store, *b, ts);
  CHECK(store->Commit(b->version, "").status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(store->Abort(b->version, "", "x").code() == absl::StatusCode::kPermissionDenied);
  CHECK(store->WriteChunk(b->version, "", "x", 0, "abcd", 4).code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK(store->OpenWriter(b->version, "").status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(store->GetUsage().staging == 1);
  CHECK(store->Commit(b->version, b->upload_token).ok());
}

TEST_CASE("sizes near 2^64 are refused at Begin and charge nothing") {
  auto store = NewStore(1 << 20);
  v1::Manifest m;
  v1::TensorSpec* t = m.add_tensors();
  t->set_name("huge");
  t->set_dtype(v1::DTYPE_FLOAT16);
  t->add_shape(INT64_MAX);
  t->set_byte_size(UINT64_MAX - 1);
  auto r = store->Begin(m, 0, "");
  CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(r.status().message(), "more than the whole host_memory_budget"));
  // Two tensors whose sum wraps.
  v1::Manifest m2;
  for (const char* name : {"a", "b"}) {
    v1::TensorSpec* s2 = m2.add_tensors();
    s2->set_name(name);
    s2->set_dtype(v1::DTYPE_UINT8);
    s2->add_shape(int64_t{1} << 62);
    s2->set_byte_size(uint64_t{1} << 62);
  }
  CHECK(store->Begin(m2, 0, "").status().code() == absl::StatusCode::kResourceExhausted);
  // Just under the budget, but each rounded to 256 bytes: refused, not wrapped.
  v1::Manifest m3;
  for (int i = 0; i < 2; ++i) {
    v1::TensorSpec* s3 = m3.add_tensors();
    s3->set_name("t" + std::to_string(i));
    s3->set_dtype(v1::DTYPE_UINT8);
    s3->add_shape((1 << 19) - 1 + i);
    s3->set_byte_size((1 << 19) - 1 + i);
  }
  CHECK(store->Begin(m3, 0, "").ok());
  CHECK(store->GetUsage().used_bytes == 1 << 20);
}

TEST_CASE("version ids stop at 2^63-1: larger ones are refused, automatic ones never wrap") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("x", {8}, 5)};
  CHECK(store->Begin(ManifestOf(ts), UINT64_MAX, "").status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(store->Begin(ManifestOf(ts), kMaxVersionId + 1, "").status().code() ==
        absl::StatusCode::kInvalidArgument);
  auto last = store->Begin(ManifestOf(ts), kMaxVersionId, "");
  REQUIRE(last.ok());
  PushAll(*store, *last, ts);
  REQUIRE(store->Commit(last->version, last->upload_token).ok());
  auto next = store->Begin(ManifestOf(ts), 0, "");
  CHECK(next.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(next.status().message(), "no version id is left"));
}

TEST_CASE("labels, tensor counts and staging versions are bounded") {
  VersionStore::Options options;
  options.max_tensors = 3;
  options.max_staging = 3;
  options.max_staging_per_client = 2;
  auto store = NewStore(1 << 20, options);
  std::vector<Tensor> ts = {MakeTensor("x", {8}, 5)};
  auto label = store->Begin(ManifestOf(ts), 0, std::string(kMaxLabelBytes + 1, 'l'));
  CHECK(label.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(label.status().message().size() < 300);
  CHECK(store->Begin(ManifestOf(ts), 0, std::string(kMaxLabelBytes, 'l')).ok());

  std::vector<Tensor> four = {MakeTensor("a", {1}, 1), MakeTensor("b", {1}, 1),
                              MakeTensor("c", {1}, 1), MakeTensor("d", {1}, 1)};
  auto many = store->Begin(ManifestOf(four), 0, "", "alice");
  CHECK(many.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(many.status().message(), "max_tensors_per_version"));

  CHECK(store->Begin(ManifestOf(ts), 0, "", "alice").ok());
  CHECK(store->Begin(ManifestOf(ts), 0, "", "alice").ok());
  auto third = store->Begin(ManifestOf(ts), 0, "", "alice");
  CHECK(third.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(third.status().message(), "max_staging_per_client"));
  // Total: one by "" (the label test) and two by alice = 3 = max_staging.
  auto bob = store->Begin(ManifestOf(ts), 0, "", "bob");
  CHECK(bob.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(bob.status().message(), "max_staging_versions"));
}

}  // namespace
}  // namespace ckpt::daemon

namespace ckpt::daemon {
namespace {

uint64_t PushVersion(VersionStore& store, const std::vector<Tensor>& ts) {
  auto b = store.Begin(ManifestOf(ts), 0, "");
  REQUIRE(b.ok());
  PushAll(store, *b, ts);
  auto info = store.Commit(b->version, b->upload_token);
  REQUIRE(info.ok());
  return info->version();
}

TEST_CASE("a leased version is neither retired nor dropped; the oldest unused one goes instead") {
  VersionStore::Options options;
  options.max_versions = 2;
  auto store = NewStore(1 << 20, options);
  const uint64_t v1 = PushVersion(*store, {MakeTensor("a", {100}, 1)});
  const uint64_t v2 = PushVersion(*store, {MakeTensor("a", {100}, 2)});

  CHECK(store->Lease(99).status().code() == absl::StatusCode::kNotFound);
  auto latest = store->Lease(0);
  REQUIRE(latest.ok());
  CHECK((*latest)->version() == v2);
  latest->reset();

  auto lease = store->Lease(v1);
  REQUIRE(lease.ok());
  CHECK((*lease)->manifest().tensors(0).name() == "a");
  std::vector<Tensor> first = {MakeTensor("a", {100}, 1)};
  CHECK(std::string(reinterpret_cast<const char*>((*lease)->data(0)), 400) == first[0].bytes);
  CHECK((*lease)->data(0) == store->arena().data() + (*lease)->arena_offset(0));

  absl::Status drop = store->Drop(v1);
  CHECK(drop.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(drop.message(), "being sent to workers"));

  // A third commit exceeds max_versions: the leased v1 stays while it is sent, and the newer v2 is
  // not retired in its place (issue 10 point 2); v1 goes when its lease ends.
  const uint64_t v3 = PushVersion(*store, {MakeTensor("a", {100}, 3)});
  auto ids = [&] {
    std::vector<uint64_t> out;
    for (const auto& info : store->List()) out.push_back(info.version());
    return out;
  };
  CHECK(ids() == std::vector<uint64_t>{v1, v2, v3});
  lease->reset();
  CHECK(ids() == std::vector<uint64_t>{v2, v3});
  auto gone = store->Lease(v1);
  CHECK(gone.status().code() == absl::StatusCode::kNotFound);
  CHECK(Contains(gone.status().message(), "retired or dropped"));

  // Unleased versions may be dropped.
  CHECK(store->Drop(v2).ok());

  // A staging version cannot be leased.
  auto staging = store->Begin(ManifestOf({MakeTensor("b", {10}, 4)}), 0, "");
  REQUIRE(staging.ok());
  auto s = store->Lease(staging->version);
  CHECK(s.status().code() == absl::StatusCode::kNotFound);
  CHECK(Contains(s.status().message(), "still staging"));
}

TEST_CASE("concurrent pushes both commit in any order; the newest committed is never retired") {
  VersionStore::Options options;
  options.max_versions = 2;
  auto store = NewStore(1 << 20, options);
  std::vector<Tensor> big = {MakeTensor("a", {1000}, 1)};
  std::vector<Tensor> small = {MakeTensor("a", {10}, 2)};
  // Begun first, finished last: both commit; the newest is the higher id.
  auto first = store->Begin(ManifestOf(big), 0, "");
  auto second = store->Begin(ManifestOf(small), 0, "");
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  CHECK(second->version == first->version + 1);
  PushAll(*store, *second, small);
  REQUIRE(store->Commit(second->version, second->upload_token).ok());
  PushAll(*store, *first, big);
  auto late = store->Commit(first->version, first->upload_token);
  INFO(late.status().ToString());
  REQUIRE(late.ok());
  CHECK(late->state() == v1::VERSION_STATE_COMMITTED);
  auto newest = store->Lease(0);
  REQUIRE(newest.ok());
  CHECK((*newest)->version() == second->version);
  newest->reset();
  CHECK(store->Get(first->version).ok());
  CHECK(store->GetUsage().latest_committed == second->version);
  // A given id below the newest committed one is still refused at Begin, before a byte is sent.
  CHECK(store->Begin(ManifestOf(small), first->version, "").status().code() ==
        absl::StatusCode::kAlreadyExists);

  // With max_versions newer ids committed, a late commit is retired at once, never the newest.
  auto old = store->Begin(ManifestOf(small), 0, "");
  REQUIRE(old.ok());
  const uint64_t a = PushVersion(*store, small);
  const uint64_t b = PushVersion(*store, small);
  PushAll(*store, *old, small);
  REQUIRE(store->Commit(old->version, old->upload_token).ok());
  std::vector<uint64_t> ids;
  for (const auto& info : store->List()) ids.push_back(info.version());
  CHECK(ids == std::vector<uint64_t>{a, b});
}

}  // namespace
}  // namespace ckpt::daemon
