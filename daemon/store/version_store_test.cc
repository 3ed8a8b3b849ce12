#include "daemon/store/version_store.h"

#include <stdlib.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/dtype.h"
#include "daemon/store/id_ledger.h"

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

TEST_CASE(
    "a Begin that may not retire uses free memory only; a commit may leave the listener out") {
  VersionStore::Options options;
  options.max_versions = 3;
  auto store = NewStore(35000, options);
  std::vector<uint64_t> told;
  store->SetCommitListener([&told](uint64_t v) { told.push_back(v); });
  std::vector<Tensor> ts = {MakeTensor("w", {2500}, 1)};  // 10240 aligned: 3 fit, 4 do not
  std::vector<uint64_t> ids;
  for (int i = 0; i < 2; ++i) {
    auto b = store->Begin(ManifestOf(ts), 0, "");
    REQUIRE(b.ok());
    PushAll(*store, *b, ts);
    REQUIRE(store->Commit(b->version, b->upload_token).ok());
    ids.push_back(b->version);
  }
  CHECK(told == ids);
  // The third fits in free memory and commits without telling the listener.
  auto third = store->Begin(ManifestOf(ts), 0, "", "", true, absl::InfiniteFuture(),
                            /*may_retire=*/false);
  REQUIRE(third.ok());
  PushAll(*store, *third, ts);
  REQUIRE(store->Commit(third->version, third->upload_token, /*notify=*/false).ok());
  CHECK(told == ids);
  // A fourth would need the oldest retired: refused, and the oldest stays.
  auto fourth = store->Begin(ManifestOf(ts), 0, "", "", true, absl::InfiniteFuture(),
                             /*may_retire=*/false);
  REQUIRE_FALSE(fourth.ok());
  CHECK(fourth.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(fourth.status().message(), "held versions are not pushed out"));
  CHECK(store->Get(ids[0]).ok());
  CHECK(store->List().size() == 3);
  // A Begin that may retire does.
  auto fifth = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(fifth.ok());
  CHECK(store->Get(ids[0]).status().code() == absl::StatusCode::kNotFound);
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

TEST_CASE("a staging lease keeps a version's memory through abort, and through commit leased") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("x", {100}, 5)};
  v1::Manifest m = ManifestOf(ts);
  for (auto& t : *m.mutable_tensors()) t.clear_xxh3();
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false, absl::InfiniteFuture(),
                        /*may_retire=*/true, "local");
  REQUIRE(b.ok());
  CHECK(store->LeaseStaging(b->version, "wrong").status().code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK(store->LeaseStaging(b->version + 1, b->upload_token).status().code() ==
        absl::StatusCode::kNotFound);
  SECTION("aborted while leased: the memory returns when the lease ends") {
    auto leased = store->LeaseStaging(b->version, b->upload_token);
    REQUIRE(leased.ok());
    CHECK(leased->manifest->tensors(0).name() == "x");
    CHECK(leased->manifest->tensors(0).xxh3() == 0);
    CHECK_FALSE(leased->lease->dropped());
    SECTION("by its token") { REQUIRE(store->Abort(b->version, b->upload_token, "test").ok()); }
    SECTION("by an operator's Drop") { REQUIRE(store->Drop(b->version).ok()); }
    CHECK(leased->lease->dropped());
    CHECK(store->GetUsage().used_bytes == 512);  // still held by the lease
    leased->lease.reset();
    CHECK(store->GetUsage().used_bytes == 0);
  }
  SECTION("committed while leased: not dropped until the lease ends; the copy keeps its manifest") {
    auto leased = store->LeaseStaging(b->version, b->upload_token);
    REQUIRE(leased.ok());
    {
      auto lease = store->OpenWriter(b->version, b->upload_token);
      REQUIRE(lease.ok());
      std::memcpy((*lease)->data(0), ts[0].bytes.data(), ts[0].bytes.size());
      REQUIRE((*lease)->MarkReceived(0, 0, 400).ok());
    }
    const std::vector<uint64_t> sums = {XXH3_64bits(ts[0].bytes.data(), 400)};
    REQUIRE(store->Commit(b->version, b->upload_token, true, &sums).ok());
    CHECK(leased->manifest->tensors(0).xxh3() == 0);
    CHECK(store->Drop(b->version).code() == absl::StatusCode::kFailedPrecondition);
    leased->lease.reset();
    CHECK(store->Drop(b->version).ok());
  }
}

TEST_CASE("local push path: ranges marked received, checksums from the commit verified") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> ts = {MakeTensor("x", {100}, 5), MakeTensor("y", {7}, 6)};
  v1::Manifest m = ManifestOf(ts);
  for (auto& t : *m.mutable_tensors()) t.clear_xxh3();
  const std::vector<uint64_t> right = {XXH3_64bits(ts[0].bytes.data(), ts[0].bytes.size()),
                                       XXH3_64bits(ts[1].bytes.data(), ts[1].bytes.size())};
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false, absl::InfiniteFuture(),
                        /*may_retire=*/true, "local");
  REQUIRE(b.ok());
  CHECK(store->Get(b->version)->info().transport() == "local");
  // Its upload token writes and commits nothing: only the stream's writer does.
  CHECK(Contains(store->WriteChunk(b->version, b->upload_token, "x", 0, "a", 1).message(),
                 "only that stream writes it"));
  CHECK(store->WriteChunkParts(b->version, b->upload_token, {{0, 0, 1}}, "a", 1).code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(store->Commit(b->version, b->upload_token).status().message(),
                 "only that stream commits it"));
  {
    auto lease = store->OpenWriter(b->version, b->upload_token);
    REQUIRE(lease.ok());
    std::memcpy((*lease)->data(0), ts[0].bytes.data(), ts[0].bytes.size());
    std::memcpy((*lease)->data(1), ts[1].bytes.data(), ts[1].bytes.size());
    CHECK((*lease)->MarkReceived(2, 0, 1).code() == absl::StatusCode::kInvalidArgument);
    CHECK((*lease)->MarkReceived(0, 399, 2).code() == absl::StatusCode::kOutOfRange);
    CHECK((*lease)->MarkReceived(0, UINT64_MAX, 2).code() == absl::StatusCode::kOutOfRange);
    // Tensor x in two ranges, y not yet: the commit names y's missing bytes.
    REQUIRE((*lease)->MarkReceived(0, 0, 150).ok());
    REQUIRE((*lease)->MarkReceived(0, 150, 250).ok());
  }
  auto missing = store->Commit(b->version, b->upload_token, true, &right);
  CHECK(missing.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(missing.status().message(), "'y' has 28 of 28 bytes missing"));
  REQUIRE((*store->OpenWriter(b->version, b->upload_token))->MarkReceived(1, 0, 28).ok());

  // A wrong count of checksums, then a wrong checksum: refused, the version stays staging.
  std::vector<uint64_t> one = {right[0]};
  CHECK(store->Commit(b->version, b->upload_token, true, &one).status().code() ==
        absl::StatusCode::kInvalidArgument);
  std::vector<uint64_t> wrong = {right[0], right[1] ^ 1};
  auto bad = store->Commit(b->version, b->upload_token, true, &wrong);
  CHECK(bad.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(bad.status().message(), "'y' has xxh3"));
  CHECK(Contains(bad.status().message(), "the trainer says"));
  CHECK(store->Get(b->version)->info().state() == v1::VERSION_STATE_STAGING);

  auto info = store->Commit(b->version, b->upload_token, true, &right);
  REQUIRE(info.ok());
  CHECK(info->transport() == "local");
  auto got = store->Get(b->version);
  CHECK(got->manifest().tensors(0).xxh3() == right[0]);
  CHECK(got->manifest().tensors(1).xxh3() == right[1]);
  CHECK(store->GetCounters().commits_local == 1);
  CHECK(store->GetCounters().bytes_local == 428);

  // Checksums at commit are only for versions begun without them.
  auto chunks = store->Begin(ManifestOf(ts), 0, "");
  REQUIRE(chunks.ok());
  CHECK(store->Get(chunks->version)->info().transport() == "grpc");
  PushAll(*store, *chunks, ts);
  CHECK(store->Commit(chunks->version, chunks->upload_token, true, &right).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(store->Commit(chunks->version, chunks->upload_token).ok());
  auto files = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(files.ok());
  CHECK(store->Get(files->version)->info().transport() == "files");
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

// Warm-up (issue 10 point 10): the daemon serves before the arena's memory is ready.

constexpr uint64_t kKiB = 1024;

// A store on a 1 MiB arena that is only mapped (HostArena::Populate::kLater); populating fails
// past `fail_beyond` bytes.
std::unique_ptr<VersionStore> NewWarmingStore(VersionStore::Options options,
                                              uint64_t fail_beyond = UINT64_MAX) {
  auto arena =
      HostArena::Create(HostArena::Kind::kShared, 1 << 20, {}, 1, HostArena::Populate::kLater);
  REQUIRE(arena.ok());
  (*arena)->FailPopulatingBeyondForTest(fail_beyond);
  return std::make_unique<VersionStore>(std::move(*arena), options);
}

// One float32 tensor of `kib` KiB.
std::vector<Tensor> OfKiB(uint64_t kib, uint64_t seed) {
  return {MakeTensor("t", {static_cast<int64_t>(kib * 256)}, seed)};
}

// Pushes and commits; CHECKs that every tensor lies below `ready` bytes of the arena.
uint64_t PushWithin(VersionStore& store, const VersionStore::Begun& b,
                    const std::vector<Tensor>& ts, uint64_t ready) {
  PushAll(store, b, ts, 64 * kKiB);
  REQUIRE(store.Commit(b.version, b.upload_token).ok());
  auto lease = store.Lease(b.version);
  REQUIRE(lease.ok());
  for (int i = 0; i < (*lease)->manifest().tensors_size(); ++i) {
    CHECK((*lease)->arena_offset(i) + (*lease)->manifest().tensors(i).byte_size() <= ready);
    CHECK(std::string(reinterpret_cast<const char*>((*lease)->data(i)), ts[i].bytes.size()) ==
          ts[i].bytes);
  }
  return b.version;
}

TEST_CASE("warm-up: versions are placed only in ready memory; before that Begin is UNAVAILABLE") {
  VersionStore::Options options;
  options.ready_wait = absl::ZeroDuration();  // refuse at once
  auto store = NewWarmingStore(options);
  VersionStore::Usage u = store->GetUsage();
  CHECK(u.budget_bytes == 1 << 20);
  CHECK(u.ready_bytes == 0);
  CHECK_FALSE(u.ready);
  CHECK(u.ready_error.empty());

  auto early = store->Begin(ManifestOf(OfKiB(200, 1)), 0, "");
  REQUIRE_FALSE(early.ok());
  CHECK(early.status().code() == absl::StatusCode::kUnavailable);
  CHECK(Contains(early.status().message(),
                 "the store is still getting memory ready: 0 B of 1.0 MiB ready"));
  CHECK(Contains(early.status().message(), "this version needs 200.0 KiB"));
  CHECK(Contains(early.status().message(), "; retry"));
  CHECK(store->List().empty());

  for (int i = 0; i < 4; ++i) CHECK_FALSE(store->WarmUpStep(64 * kKiB));
  CHECK(store->GetUsage().ready_bytes == 256 * kKiB);
  auto b1 = store->Begin(ManifestOf(OfKiB(200, 1)), 0, "");
  REQUIRE(b1.ok());
  PushWithin(*store, *b1, OfKiB(200, 1), 256 * kKiB);

  // 56 KiB of the ready memory is free: a second version waits for more (refused here), though a
  // small one fits now.
  auto second = store->Begin(ManifestOf(OfKiB(200, 2)), 0, "");
  CHECK(second.status().code() == absl::StatusCode::kUnavailable);
  CHECK(Contains(second.status().message(), "256.0 KiB of 1.0 MiB ready"));
  auto small = store->Begin(ManifestOf(OfKiB(40, 3)), 0, "");
  REQUIRE(small.ok());
  PushWithin(*store, *small, OfKiB(40, 3), 256 * kKiB);
  // What cannot fit even once everything is ready (and the older version retired) is
  // RESOURCE_EXHAUSTED, not "retry".
  auto huge = store->Begin(ManifestOf(OfKiB(1000, 4)), 0, "");
  CHECK(huge.status().code() == absl::StatusCode::kResourceExhausted);

  int steps = 0;
  while (!store->WarmUpStep(64 * kKiB)) REQUIRE(++steps < 100);
  u = store->GetUsage();
  CHECK(u.ready);
  CHECK(u.ready_bytes == 1 << 20);
  CHECK_FALSE(u.pinned);
  CHECK(u.ready_error.empty());
  CHECK(u.warmup_elapsed > absl::ZeroDuration());
  auto b2 = store->Begin(ManifestOf(OfKiB(200, 2)), 0, "");
  REQUIRE(b2.ok());
  PushWithin(*store, *b2, OfKiB(200, 2), 1 << 20);
  CHECK(store->WarmUpStep(64 * kKiB));  // ended: nothing more to do
}

TEST_CASE("warm-up: a Begin waits (bounded) for the memory it needs, then succeeds") {
  VersionStore::Options options;
  options.ready_wait = absl::Seconds(30);
  auto store = NewWarmingStore(options);
  VersionStore::WarmUpOptions warm;
  warm.piece_bytes = 64 * kKiB;
  warm.pause = absl::Milliseconds(20);  // about 0.3 s for the whole arena
  std::atomic<int> progress{0};
  warm.on_progress = [&](const VersionStore::Usage&) { ++progress; };
  store->StartWarmUp(warm);
  const absl::Time start = absl::Now();
  auto b = store->Begin(ManifestOf(OfKiB(900, 1)), 0, "");
  REQUIRE(b.ok());
  CHECK(absl::Now() - start < absl::Seconds(20));
  const uint64_t ready = store->GetUsage().ready_bytes;
  CHECK(ready >= 900 * kKiB);
  PushWithin(*store, *b, OfKiB(900, 1), ready);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!store->GetUsage().ready && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  CHECK(store->GetUsage().ready);
  CHECK(progress.load() >= 16);
}

TEST_CASE("warm-up: the caller's deadline ends the wait; nothing is left behind") {
  VersionStore::Options options;
  options.ready_wait = absl::Seconds(30);
  auto store = NewWarmingStore(options);
  VersionStore::WarmUpOptions warm;
  warm.piece_bytes = 64 * kKiB;
  warm.pause = absl::Milliseconds(100);  // about 1.6 s for the whole arena
  store->StartWarmUp(warm);
  const absl::Time start = absl::Now();
  auto b = store->Begin(ManifestOf(OfKiB(900, 1)), 0, "", "", true,
                        absl::Now() + absl::Milliseconds(200));
  CHECK(b.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(absl::Now() - start < absl::Seconds(1));  // not ready_wait
  CHECK(store->GetUsage().staging == 0);
  CHECK(store->GetUsage().used_bytes == 0);
}

TEST_CASE("warm-up: a Begin is refused at once when the memory would come later than it may wait") {
  VersionStore::Options options;
  options.ready_wait = absl::Seconds(1);
  auto store = NewWarmingStore(options);
  VersionStore::WarmUpOptions warm;
  warm.piece_bytes = 64 * kKiB;
  warm.pause = absl::Milliseconds(300);  // about 5 s for the whole arena
  store->StartWarmUp(warm);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  // Two pieces, so that the pace (one piece per 300 ms) shows.
  while (store->GetUsage().ready_bytes < 128 * kKiB && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  REQUIRE(store->GetUsage().ready_bytes >= 128 * kKiB);
  const absl::Time start = absl::Now();
  auto b = store->Begin(ManifestOf(OfKiB(900, 1)), 0, "");
  CHECK(absl::Now() - start < absl::Milliseconds(900));  // did not wait out ready_wait
  CHECK(b.status().code() == absl::StatusCode::kUnavailable);
  CHECK(Contains(b.status().message(), "enough for this version in about"));
}

TEST_CASE("warm-up: a failure stops the growth; the store serves with what is ready") {
  VersionStore::Options options;
  options.ready_wait = absl::Seconds(30);
  auto store = NewWarmingStore(options, /*fail_beyond=*/512 * kKiB);
  int steps = 0;
  while (!store->WarmUpStep(128 * kKiB)) REQUIRE(++steps < 100);
  VersionStore::Usage u = store->GetUsage();
  CHECK_FALSE(u.ready);
  CHECK(u.ready_bytes == 512 * kKiB);
  CHECK(Contains(u.ready_error,
                 "cannot make 128.0 KiB more of the 1.0 MiB host_memory_budget "
                 "ready at 512.0 KiB"));
  CHECK(Contains(u.ready_error, "out of memory"));
  auto b = store->Begin(ManifestOf(OfKiB(200, 1)), 0, "");
  REQUIRE(b.ok());
  PushWithin(*store, *b, OfKiB(200, 1), 512 * kKiB);
  // More than is usable: refused at once (no waiting for memory that will not come), naming why.
  const absl::Time start = absl::Now();
  auto big = store->Begin(ManifestOf(OfKiB(600, 2)), 0, "");
  CHECK(absl::Now() - start < absl::Seconds(5));
  CHECK(big.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(big.status().message(), "only 512.0 KiB of the budget could be made ready"));
}

TEST_CASE("warm-up: stopping is prompt and a Begin waiting for memory stops waiting") {
  VersionStore::Options options;
  options.ready_wait = absl::Seconds(30);
  auto store = NewWarmingStore(options);
  VersionStore::WarmUpOptions warm;
  warm.piece_bytes = 64 * kKiB;
  warm.pause = absl::Hours(1);  // one piece, then a long pause
  store->StartWarmUp(warm);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (store->GetUsage().ready_bytes == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  REQUIRE(store->GetUsage().ready_bytes == 64 * kKiB);
  absl::Status waited;
  absl::Duration waited_for;
  std::thread begin([&] {
    const absl::Time start = absl::Now();
    waited = store->Begin(ManifestOf(OfKiB(900, 1)), 0, "").status();
    waited_for = absl::Now() - start;
  });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time stop = absl::Now();
  store->StopWarmUp();
  CHECK(absl::Now() - stop < absl::Seconds(2));
  begin.join();
  CHECK(waited_for < absl::Seconds(10));
  CHECK(waited.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(waited.message(), "shutting down"));
  CHECK(store->GetUsage().ready_bytes == 64 * kKiB);
  store->StopWarmUp();  // idempotent
}

VersionStore::PartOf Part(uint32_t index, uint32_t count) { return {index, count}; }

// The bytes of tensor `name` of leased version `lease`.
std::string LeasedBytes(const VersionStore::ReadLease& lease, const std::string& name) {
  for (int i = 0; i < lease.manifest().tensors_size(); ++i) {
    if (lease.manifest().tensors(i).name() != name) continue;
    return std::string(reinterpret_cast<const char*>(lease.data(i)),
                       lease.manifest().tensors(i).byte_size());
  }
  return "<missing>";
}

TEST_CASE("parts: each stages on its own and merges into one version, in part order") {
  auto store = NewStore(1 << 20);
  std::vector<uint64_t> commits;
  store->SetCommitListener([&](uint64_t v) { commits.push_back(v); });
  // "norm" is replicated: both parts hold it with the same bytes.
  const Tensor norm = MakeTensor("norm", {8}, 9);
  std::vector<Tensor> p0 = {MakeTensor("a", {10}, 1), norm, MakeTensor("b", {3, 3}, 2)};
  std::vector<Tensor> p1 = {MakeTensor("c", {7}, 3), norm};
  auto b1 = store->Begin(ManifestOf(p1), 5, "step-5", "", true, absl::InfiniteFuture(), true, "",
                         Part(1, 2));
  REQUIRE(b1.ok());
  auto b0 = store->Begin(ManifestOf(p0), 5, "step-5", "", true, absl::InfiniteFuture(), true, "",
                         Part(0, 2));
  REQUIRE(b0.ok());
  CHECK(b0->upload_token != b1->upload_token);
  CHECK(store->GetUsage().staging == 2);
  // A token writes only its own part.
  CHECK(store->WriteChunk(5, b1->upload_token, "a", 0, p0[0].bytes.data(), 4).code() ==
        absl::StatusCode::kNotFound);
  PushAll(*store, *b1, p1);
  auto c1 = store->Commit(5, b1->upload_token);
  REQUIRE(c1.ok());
  CHECK(c1->part_count() == 2);
  CHECK(std::vector<uint32_t>(c1->parts().begin(), c1->parts().end()) == std::vector<uint32_t>{1});
  CHECK(commits.empty());  // not every part is here
  {
    auto lease = store->Lease(5);
    REQUIRE(lease.ok());
    CHECK_FALSE((*lease)->complete());
    // A lease of the version before the merge keeps working after it.
    PushAll(*store, *b0, p0);
    auto c0 = store->Commit(5, b0->upload_token);
    REQUIRE(c0.ok());
    CHECK(c0->tensor_count() == 4);  // norm once
    CHECK(std::vector<uint32_t>(c0->parts().begin(), c0->parts().end()) ==
          (std::vector<uint32_t>{0, 1}));
    CHECK(LeasedBytes(**lease, "c") == p1[0].bytes);
  }
  CHECK(commits == std::vector<uint64_t>{5});
  auto lease = store->Lease(5);
  REQUIRE(lease.ok());
  CHECK((*lease)->complete());
  const v1::Manifest& m = (*lease)->manifest();
  REQUIRE(m.tensors_size() == 4);
  // Part 0's tensors first in its order, then part 1's; the replicated one once, as part 0's (the
  // lower part, although part 1 came first): the order does not depend on the order of commits.
  CHECK(m.tensors(0).name() == "a");
  CHECK(m.tensors(1).name() == "norm");
  CHECK(m.tensors(2).name() == "b");
  CHECK(m.tensors(3).name() == "c");
  CHECK((*lease)->tensor_part(1) == 0);
  CHECK((*lease)->tensor_part(3) == 1);
  for (const Tensor& t : {p0[0], p0[1], p0[2], p1[0]})
    CHECK(LeasedBytes(**lease, t.name) == t.bytes);
  CHECK(store->GetUsage().staging == 0);
  CHECK(store->GetUsage().committed == 1);
}

TEST_CASE("parts: conflicts are refused naming the part, the tensor or the count") {
  auto store = NewStore(1 << 20);
  std::vector<Tensor> p0 = {MakeTensor("a", {10}, 1), MakeTensor("shared", {4}, 7)};
  auto begin = [&](const std::vector<Tensor>& ts, uint64_t id, VersionStore::PartOf part) {
    return store->Begin(ManifestOf(ts), id, "", "", true, absl::InfiniteFuture(), true, "", part);
  };
  // Bad declarations.
  CHECK(begin(p0, 0, Part(0, 2)).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(begin(p0, 3, Part(2, 2)).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(begin(p0, 3, Part(0, 1)).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(begin(p0, 3, Part(0, VersionStore::kMaxVersionParts + 1)).status().code() ==
        absl::StatusCode::kInvalidArgument);
  auto b0 = begin(p0, 3, Part(0, 3));
  REQUIRE(b0.ok());
  // The same part twice, another count, the id pushed whole.
  CHECK(begin(p0, 3, Part(0, 3)).status().code() == absl::StatusCode::kAlreadyExists);
  auto other = begin(p0, 3, Part(1, 4));
  CHECK(other.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(other.status().message(), "3 parts"));
  CHECK(store->Begin(ManifestOf(p0), 3, "").status().code() == absl::StatusCode::kAlreadyExists);
  PushAll(*store, *b0, p0);
  REQUIRE(store->Commit(3, b0->upload_token).ok());
  CHECK(begin(p0, 3, Part(0, 3)).status().code() == absl::StatusCode::kAlreadyExists);
  // A tensor part 0 holds, with other bytes: refused at Begin (the manifest has checksums)...
  std::vector<Tensor> clash = {MakeTensor("shared", {4}, 8)};
  auto at_begin = begin(clash, 3, Part(1, 3));
  CHECK(at_begin.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(at_begin.status().message(), "'shared'"));
  // ... and at commit when the checksums come only then (a local push).
  auto late = store->Begin(ManifestOf(clash), 3, "", "", false, absl::InfiniteFuture(), true,
                           "local", Part(1, 3));
  REQUIRE(late.ok());
  {
    auto w = store->OpenWriter(3, late->upload_token);
    REQUIRE(w.ok());
    std::memcpy((*w)->data(0), clash[0].bytes.data(), clash[0].bytes.size());
    REQUIRE((*w)->MarkAllReceived().ok());
  }
  const std::vector<uint64_t> sums = {XXH3_64bits(clash[0].bytes.data(), clash[0].bytes.size())};
  auto refused = store->Commit(3, late->upload_token, true, &sums);
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(refused.status().message(), "'shared'"));
  // The part stays staging (abort it); the version keeps part 0 alone.
  CHECK(store->Abort(3, late->upload_token, "test").ok());
  auto lease = store->Lease(3);
  REQUIRE(lease.ok());
  CHECK((*lease)->parts() == std::vector<uint32_t>{0});
  CHECK((*lease)->manifest().tensors_size() == 2);
}

TEST_CASE("parts: ids, drop and the staging reaper") {
  VersionStore::Options o;
  o.staging_timeout = absl::Seconds(10);
  auto store = NewStore(1 << 20, o);
  std::vector<Tensor> whole = {MakeTensor("w", {4}, 1)};
  auto w = store->Begin(ManifestOf(whole), 10, "");
  REQUIRE(w.ok());
  PushAll(*store, *w, whole);
  REQUIRE(store->Commit(10, w->upload_token).ok());
  auto begin = [&](uint64_t id, VersionStore::PartOf part, const std::string& name) {
    return store->Begin(ManifestOf({MakeTensor(name, {4}, part.index + 2)}), id, "", "", true,
                        absl::InfiniteFuture(), true, "", part);
  };
  // Ids still increase for a version with no part here...
  CHECK(begin(9, Part(0, 2), "x").status().code() == absl::StatusCode::kFailedPrecondition);
  // ... but a late part of an id held here as parts is taken although a newer id committed.
  auto p0 = begin(11, Part(0, 2), "x");
  REQUIRE(p0.ok());
  PushAll(*store, *p0, {MakeTensor("x", {4}, 2)});
  REQUIRE(store->Commit(11, p0->upload_token).ok());
  auto v12 = store->Begin(ManifestOf(whole), 12, "");
  REQUIRE(v12.ok());
  PushAll(*store, *v12, whole);
  REQUIRE(store->Commit(12, v12->upload_token).ok());
  auto p1 = begin(11, Part(1, 2), "y");
  REQUIRE(p1.ok());
  // Drop takes the committed parts and the staging ones.
  auto p1_write = store->WriteChunk(11, p1->upload_token, "y", 0, "abcd", 4);
  CHECK(p1_write.ok());
  REQUIRE(store->Drop(11).ok());
  CHECK(store->WriteChunk(11, p1->upload_token, "y", 0, "abcd", 4).code() ==
        absl::StatusCode::kNotFound);
  CHECK(store->GetUsage().staging == 0);
  // The reaper takes a stale part.
  auto p2 = begin(13, Part(0, 2), "z");
  REQUIRE(p2.ok());
  CHECK(store->List().size() == 2);  // 12 committed, 13 part 0 staging
  CHECK(store->Get(13)->info().parts_size() == 1);
  CHECK(store->AbortStale(absl::Now() + absl::Seconds(11)) == 1);
  CHECK(store->GetUsage().staging == 0);
  CHECK(store->LeaseStaging(13, p2->upload_token).status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("parts: no overlapped lease of a part; a part's memory returns when it is dropped") {
  auto store = NewStore(1 << 20);
  const uint64_t free_before = store->GetUsage().used_bytes;
  std::vector<Tensor> ts = {MakeTensor("a", {1000}, 1)};
  auto p =
      store->Begin(ManifestOf(ts), 4, "", "", true, absl::InfiniteFuture(), true, "", Part(0, 2));
  REQUIRE(p.ok());
  CHECK(store->LeaseStaging(4, p->upload_token).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  PushAll(*store, *p, ts);
  REQUIRE(store->Commit(4, p->upload_token).ok());
  CHECK(store->GetUsage().used_bytes > free_before);
  REQUIRE(store->Drop(4).ok());
  CHECK(store->GetUsage().used_bytes == free_before);
}

// A part of `ts` begun, pushed and committed.
absl::StatusOr<v1::VersionInfo> PushPart(VersionStore& store, uint64_t id, uint32_t index,
                                         uint32_t count, const std::vector<Tensor>& ts) {
  auto b = store.Begin(ManifestOf(ts), id, "", "", true, absl::InfiniteFuture(), true, "",
                       Part(index, count));
  if (!b.ok()) return b.status();
  PushAll(store, *b, ts);
  return store.Commit(id, b->upload_token);
}

TEST_CASE("parts: a replicated tensor's second copy returns to the arena at the merge") {
  auto store = NewStore(1 << 20);
  const uint64_t used0 = store->GetUsage().used_bytes;
  const Tensor big = MakeTensor("embed", {76800}, 9);  // 300 KiB, in both parts
  REQUIRE(PushPart(*store, 5, 0, 2, {big, MakeTensor("a", {4}, 1)}).ok());
  auto c = PushPart(*store, 5, 1, 2, {big, MakeTensor("b", {4}, 2)});
  REQUIRE(c.ok());
  // One copy of "embed" (rounded to 256 bytes per tensor), not two.
  CHECK(store->GetUsage().used_bytes - used0 == 307200 + 256 + 256);
  CHECK(c->total_bytes() == 307200 + 16 + 16);
  // So a version that fits once 5 is retired (6 is newer) is admitted.
  const std::vector<Tensor> tiny = {MakeTensor("tiny", {4}, 3)};
  auto six = store->Begin(ManifestOf(tiny), 6, "");
  REQUIRE(six.ok());
  PushAll(*store, *six, tiny);
  REQUIRE(store->Commit(6, six->upload_token).ok());
  auto w = store->Begin(ManifestOf({MakeTensor("new", {180000}, 4)}), 7, "");
  INFO(w.status().ToString());
  CHECK(w.ok());
}

TEST_CASE("parts: ids pushed in parts are kept from automatic ids after a restart (state_dir)") {
  char tmpl[] = "/tmp/parts-ledger-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  {
    auto ledger = IdLedger::Open(dir);
    REQUIRE(ledger.ok());
    VersionStore::Options o;
    o.ledger = ledger->get();
    auto store = NewStore(1 << 20, o);
    REQUIRE(PushPart(*store, 2, 0, 2, {MakeTensor("a", {4}, 1)}).ok());
    REQUIRE(PushPart(*store, 2, 1, 2, {MakeTensor("b", {4}, 2)}).ok());
  }
  auto ledger = IdLedger::Open(dir);
  REQUIRE(ledger.ok());
  VersionStore::Options o;
  o.ledger = ledger->get();
  auto store = NewStore(1 << 20, o);
  const std::vector<Tensor> x = {MakeTensor("x", {4}, 3)};
  auto b = store->Begin(ManifestOf(x), 0, "");
  REQUIRE(b.ok());
  CHECK(b->version > 2);
  std::remove((dir + "/" + IdLedger::kFileName).c_str());
  ::rmdir(dir.c_str());
}

TEST_CASE("parts: many parts of one id committed at once, read meanwhile, leave nothing behind") {
  VersionStore::Options o;
  o.max_staging = 64;
  o.max_staging_per_client = 64;
  auto store = NewStore(16 << 20, o);
  const uint64_t used0 = store->GetUsage().used_bytes;
  const Tensor shared = MakeTensor("shared", {64}, 77);
  for (int round = 0; round < 10; ++round) {
    const uint64_t id = 100 + static_cast<uint64_t>(round);
    constexpr uint32_t kParts = 12;
    std::atomic<int> ok{0};
    std::atomic<bool> stop{false};
    std::thread reader([&] {
      while (!stop) {
        auto l = store->Lease(id);
        if (!l.ok()) continue;
        for (int i = 0; i < (*l)->manifest().tensors_size(); ++i) {
          CHECK(XXH3_64bits((*l)->data(i), (*l)->manifest().tensors(i).byte_size()) ==
                (*l)->manifest().tensors(i).xxh3());
        }
      }
    });
    std::vector<std::thread> pushers;
    for (uint32_t p = 0; p < kParts; ++p) {
      pushers.emplace_back([&, p] {
        auto c = PushPart(*store, id, p, kParts,
                          {shared, MakeTensor("t" + std::to_string(p), {256}, 1000 + p)});
        if (c.ok()) ++ok;
      });
    }
    for (auto& t : pushers) t.join();
    stop = true;
    reader.join();
    CHECK(ok == static_cast<int>(kParts));
    auto l = store->Lease(id);
    REQUIRE(l.ok());
    CHECK((*l)->complete());
    CHECK((*l)->manifest().tensors_size() == static_cast<int>(kParts) + 1);
    CHECK((*l)->manifest().tensors(0).name() == "shared");
    l->reset();
    REQUIRE(store->Drop(id).ok());
  }
  CHECK(store->GetUsage().used_bytes == used0);
}
}  // namespace
}  // namespace ckpt::daemon
