#include "daemon/api/local_push.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace ckpt::daemon {
namespace {

bool Contains(absl::string_view s, absl::string_view needle) {
  return s.find(needle) != absl::string_view::npos;
}

v1::Manifest TwoTensors() {
  v1::Manifest m;
  for (auto [name, bytes] : {std::pair<const char*, uint64_t>{"a", 4000}, {"b", 40}}) {
    v1::TensorSpec* t = m.add_tensors();
    t->set_name(name);
    t->set_dtype(v1::DTYPE_UINT8);
    t->add_shape(static_cast<int64_t>(bytes));
    t->set_byte_size(bytes);
  }
  return m;
}

v1::LocalPushWindow Window(std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> parts) {
  v1::LocalPushWindow w;
  w.set_fd_nonce("0123456789abcdef");
  for (auto [t, offset, bytes] : parts) {
    w.add_part_tensor(t);
    w.add_part_offset(offset);
    w.add_part_bytes(bytes);
  }
  return w;
}

ScopedFd Memfd(const std::string& bytes) {
  ScopedFd fd(::memfd_create("local-push-test", MFD_CLOEXEC));
  REQUIRE(fd.valid());
  REQUIRE(::write(fd.get(), bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  return fd;
}

TEST_CASE("WindowParts: parts back to back, each inside its tensor; bad lists refused") {
  const v1::Manifest m = TwoTensors();
  uint64_t bytes = 0;
  auto ok = WindowParts(Window({{0, 1000, 3000}, {1, 0, 40}, {0, 0, 1000}}), m, &bytes);
  REQUIRE(ok.ok());
  CHECK(bytes == 4040);
  REQUIRE(ok->size() == 3);
  CHECK((*ok)[1].tensor == 1);
  CHECK((*ok)[1].window_offset == 3000);
  CHECK((*ok)[2].offset == 0);
  CHECK((*ok)[2].window_offset == 3040);

  auto refused = [&](const v1::LocalPushWindow& w, absl::StatusCode code, const char* needle) {
    auto r = WindowParts(w, m, &bytes);
    INFO(r.status().ToString());
    CHECK(r.status().code() == code);
    CHECK(Contains(r.status().message(), needle));
  };
  refused(Window({}), absl::StatusCode::kInvalidArgument, "has 0 parts");
  refused(Window({{2, 0, 1}}), absl::StatusCode::kInvalidArgument, "names tensor #2");
  refused(Window({{0, 0, 0}}), absl::StatusCode::kInvalidArgument, "has 0 bytes");
  refused(Window({{1, 1, 40}}), absl::StatusCode::kOutOfRange, "past the end of tensor 'b'");
  refused(Window({{1, UINT64_MAX, 2}}), absl::StatusCode::kOutOfRange, "past the end");
  refused(Window({{1, 0, UINT64_MAX}}), absl::StatusCode::kOutOfRange, "past the end");
  v1::LocalPushWindow uneven = Window({{0, 0, 10}});
  uneven.add_part_bytes(5);
  refused(uneven, absl::StatusCode::kInvalidArgument, "part lists differ in length");
  v1::LocalPushWindow many;
  for (size_t k = 0; k <= kMaxWindowParts; ++k) {
    many.add_part_tensor(0);
    many.add_part_offset(0);
    many.add_part_bytes(1);
  }
  refused(many, absl::StatusCode::kInvalidArgument, "it needs 1 to 65536");
}

TEST_CASE("CheckWindowFd: only a memfd long enough is read") {
  ScopedFd memfd = Memfd(std::string(100, 'x'));
  CHECK(CheckWindowFd(memfd.get(), 100).ok());
  CHECK(CheckWindowFd(memfd.get(), 0).ok());
  absl::Status short_fd = CheckWindowFd(memfd.get(), 101);
  CHECK(short_fd.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(short_fd.message(), "has 100 bytes, fewer than its parts' 101"));

  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  ScopedFd r(pipe_fds[0]), w(pipe_fds[1]);
  CHECK(Contains(CheckWindowFd(r.get(), 1).message(), "not a memfd"));

  char path[] = "/tmp/local-push-test-XXXXXX";
  ScopedFd file(::mkstemp(path));
  REQUIRE(file.valid());
  ::unlink(path);
  REQUIRE(::ftruncate(file.get(), 4096) == 0);
  // A file on disk (or tmpfs without seals) is refused however long it is.
  CHECK(Contains(CheckWindowFd(file.get(), 1).message(), "not a memfd"));
  ScopedFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  CHECK(Contains(CheckWindowFd(null_fd.get(), 0).message(), "not a memfd"));
}

std::unique_ptr<VersionStore> NewStore(uint64_t budget = 1 << 20) {
  auto arena = HostArena::Create(HostArena::Kind::kShared, budget);
  REQUIRE(arena.ok());
  return std::make_unique<VersionStore>(std::move(*arena), VersionStore::Options{});
}

v1::Manifest Sized(const std::vector<uint64_t>& sizes) {
  v1::Manifest m;
  for (size_t i = 0; i < sizes.size(); ++i) {
    v1::TensorSpec* t = m.add_tensors();
    t->set_name("t" + std::to_string(i));
    t->set_dtype(v1::DTYPE_UINT8);
    t->add_shape(static_cast<int64_t>(sizes[i]));
    t->set_byte_size(sizes[i]);
  }
  return m;
}

std::string Random(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  std::mt19937 rng(seed);
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

TEST_CASE("LocalPushCopier: windows land bit-exact, hashed as they land, with any piece size") {
  const uint64_t piece = GENERATE(uint64_t{1}, uint64_t{4096}, uint64_t{1} << 20);
  const int threads = GENERATE(1, 4);
  auto store = NewStore();
  // A tensor over three windows (several pieces each), one whole in a window, one in two parts of
  // one window, and an empty one.
  const v1::Manifest m = Sized({100000, 40, 9000, 0});
  const std::string big = Random(100000, 1), small = Random(40, 2), mid = Random(9000, 3);
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  LocalPushCopier copier(m);
  CHECK_FALSE(copier.Complete());
  auto copy = [&](const std::string& bytes,
                  std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> layout) {
    ScopedFd fd = Memfd(bytes);
    uint64_t n = 0;
    auto parts = WindowParts(Window(std::move(layout)), m, &n);
    REQUIRE(parts.ok());
    REQUIRE(n == bytes.size());
    auto lease = store->OpenWriter(b->version, b->upload_token);
    REQUIRE(lease.ok());
    absl::Status s = copier.CopyWindow(fd.get(), *parts, **lease, threads, piece, {});
    INFO(s.ToString());
    REQUIRE(s.ok());
  };
  copy(big.substr(0, 30000) + small, {{0, 0, 30000}, {1, 0, 40}});
  CHECK_FALSE(copier.Complete());
  copy(mid.substr(0, 5000) + mid.substr(5000) + big.substr(30000, 50000),
       {{2, 0, 5000}, {2, 5000, 4000}, {0, 30000, 50000}});
  CHECK_FALSE(copier.Complete());
  copy(big.substr(80000), {{0, 80000, 20000}});
  REQUIRE(copier.Complete());
  const std::vector<uint64_t> want = {XXH3_64bits(big.data(), big.size()),
                                      XXH3_64bits(small.data(), 40), XXH3_64bits(mid.data(), 9000),
                                      XXH3_64bits("", 0)};
  CHECK(copier.Checksums() == want);
  // The store agrees (it hashes its bytes itself when not given the copier's checksums).
  auto info = store->Commit(b->version, b->upload_token, true, &want);
  INFO(info.status().ToString());
  CHECK(info.ok());
}

TEST_CASE("LocalPushCopier: bytes out of order, a shrunk window, a cancelled or aborted copy") {
  auto store = NewStore();
  const v1::Manifest m = TwoTensors();
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  uint64_t bytes = 0;
  auto parts = WindowParts(Window({{0, 0, 4000}}), m, &bytes);
  REQUIRE(parts.ok());
  auto lease = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(lease.ok());
  ScopedFd whole = Memfd(std::string(4000, 'y'));
  {
    LocalPushCopier copier(m);
    auto late = WindowParts(Window({{0, 10, 100}}), m, &bytes);
    absl::Status s = copier.CopyWindow(whole.get(), *late, **lease, 1, 1024, {});
    CHECK(Contains(s.message(), "tensor 'a' goes on at byte 0, not 10"));
  }
  {
    LocalPushCopier copier(m);
    ScopedFd shrunk = Memfd(std::string(3000, 'x'));  // 1000 bytes short
    absl::Status s = copier.CopyWindow(shrunk.get(), *parts, **lease, 2, 1024, {});
    CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
    CHECK(Contains(s.message(), "ended early"));
  }
  {
    LocalPushCopier copier(m);
    absl::Status s = copier.CopyWindow(whole.get(), *parts, **lease, 1, 1024, [] { return true; });
    CHECK(s.code() == absl::StatusCode::kCancelled);
  }
  // Nothing was marked received: the commit names the missing bytes.
  lease->reset();
  const std::vector<uint64_t> zeros = {0, 0};
  auto commit = store->Commit(b->version, b->upload_token, true, &zeros);
  CHECK(commit.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(commit.status().message(), "'a' has 4000 of 4000 bytes missing"));

  // Aborted under the copy: the lease says so and the copy stops.
  auto again = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(again.ok());
  REQUIRE(store->Abort(b->version, b->upload_token, "test").ok());
  LocalPushCopier copier(m);
  CHECK(copier.CopyWindow(whole.get(), *parts, **again, 1, 1024, {}).code() ==
        absl::StatusCode::kAborted);
}

TEST_CASE("LocalPushCopier: at most kMaxOpenTensors tensors partly sent at once") {
  std::vector<uint64_t> sizes(LocalPushCopier::kMaxOpenTensors + 1, 2);
  const v1::Manifest m = Sized(sizes);
  auto store = NewStore(4 << 20);
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> layout;
  for (uint32_t t = 0; t < sizes.size(); ++t) layout.emplace_back(t, 0, 1);
  uint64_t bytes = 0;
  auto parts = WindowParts(Window(layout), m, &bytes);
  REQUIRE(parts.ok());
  ScopedFd fd = Memfd(std::string(bytes, 'z'));
  auto lease = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(lease.ok());
  LocalPushCopier copier(m);
  absl::Status s = copier.CopyWindow(fd.get(), *parts, **lease, 2, 4096, {});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(s.message(), "tensors would be partly sent at once"));
  // One fewer is fine.
  layout.pop_back();
  auto fewer = WindowParts(Window(layout), m, &bytes);
  LocalPushCopier ok(m);
  absl::Status fine = ok.CopyWindow(fd.get(), *fewer, **lease, 2, 4096, {});
  INFO(fine.ToString());
  CHECK(fine.ok());
}

v1::LocalPushIpc Ipc(std::vector<std::tuple<uint32_t, std::string, uint64_t>> tensors) {
  v1::LocalPushIpc ipc;
  for (auto [t, gpu, offset] : tensors) {
    v1::IpcTensor* x = ipc.add_tensors();
    x->set_tensor(t);
    x->set_gpu(gpu);
    x->set_handle(std::string(64, 'h'));
    x->set_offset(offset);
  }
  return ipc;
}

TEST_CASE("IpcParts: tensors of the manifest on a GPU of the push; bad steps refused") {
  v1::Manifest m = TwoTensors();
  v1::TensorSpec* empty = m.add_tensors();
  empty->set_name("empty");
  empty->set_dtype(v1::DTYPE_UINT8);
  empty->add_shape(0);
  const std::map<std::string, int> gpus = {{"GPU-a", 0}, {"GPU-b", 3}};
  auto ok = IpcParts(Ipc({{1, "GPU-b", 512}, {0, "GPU-a", 0}}), m, gpus);
  REQUIRE(ok.ok());
  REQUIRE(ok->size() == 2);
  CHECK((*ok)[0].tensor == 1);
  CHECK((*ok)[0].device == 3);
  CHECK((*ok)[0].offset == 512);
  CHECK((*ok)[0].bytes == 40);
  CHECK((*ok)[1].bytes == 4000);
  CHECK((*ok)[1].handle == std::string(64, 'h'));

  auto refused = [&](const v1::LocalPushIpc& ipc, absl::StatusCode code, const std::string& needle,
                     const std::map<std::string, int>& accepted) {
    auto r = IpcParts(ipc, m, accepted);
    INFO(r.status().ToString());
    CHECK(r.status().code() == code);
    CHECK(Contains(r.status().message(), needle));
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  refused(v1::LocalPushIpc(), kInvalid, "has 0 tensors; it needs 1 to 65536", gpus);
  refused(Ipc({{0, "GPU-a", 0}}), absl::StatusCode::kFailedPrecondition,
          "copies from none of the trainer's GPUs", {});
  refused(Ipc({{3, "GPU-a", 0}}), kInvalid, "index 3 is past the manifest's 3 tensors", gpus);
  refused(Ipc({{0, "GPU-c", 0}}), kInvalid, "GPU 'GPU-c' is not one of begun.ipc_gpus", gpus);
  refused(Ipc({{2, "GPU-a", 0}}), kInvalid, "('empty') has no bytes to copy", gpus);
  refused(Ipc({{0, "GPU-a", ~uint64_t{0} - 100}}), kInvalid, "passes 2^64", gpus);
  v1::LocalPushIpc short_handle = Ipc({{0, "GPU-a", 0}});
  short_handle.mutable_tensors(0)->set_handle("x");
  refused(short_handle, kInvalid, "its handle has 1 bytes, not 64", gpus);
  v1::LocalPushIpc many;
  for (size_t i = 0; i <= kMaxIpcTensors; ++i)
    *many.add_tensors() = Ipc({{0, "GPU-a", 0}}).tensors(0);
  refused(many, kInvalid, "has 65537 tensors", gpus);
}

TEST_CASE(
    "LocalPushCopier::ClaimWhole: a tensor copied by the GPU path once, and never in windows") {
  auto store = NewStore();
  const v1::Manifest m = Sized({4000, 40, 0});
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  LocalPushCopier copier(m);
  auto refused = [&](const std::vector<uint32_t>& tensors, const std::string& needle) {
    absl::Status s = copier.ClaimWhole(tensors);
    INFO(s.ToString());
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(s.message(), needle));
  };
  refused({3}, "index 3 is past the manifest's 3 tensors");
  refused({2}, "has no bytes to copy");
  refused({1, 1}, "ipc tensor 1: 't1' is already sent");
  // Nothing of a refused claim stays: tensor 1 may still be claimed.
  REQUIRE(copier.ClaimWhole({1}).ok());
  CHECK(copier.Claimed(1));
  CHECK_FALSE(copier.Claimed(0));
  refused({1}, "'t1' is already sent");
  // A window may not carry a claimed tensor's bytes.
  ScopedFd fd = Memfd(Random(40, 7));
  uint64_t n = 0;
  auto parts = WindowParts(Window({{1, 0, 40}}), m, &n);
  REQUIRE(parts.ok());
  auto lease = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(lease.ok());
  CHECK(Contains(copier.CopyWindow(fd.get(), *parts, **lease, 1, 4096, {}).message(),
                 "goes on at byte 40, not 0"));
  // A tensor partly sent in windows cannot be claimed.
  const std::string a = Random(4000, 8);
  ScopedFd half = Memfd(a.substr(0, 1000));
  auto first = WindowParts(Window({{0, 0, 1000}}), m, &n);
  REQUIRE(first.ok());
  REQUIRE(copier.CopyWindow(half.get(), *first, **lease, 1, 4096, {}).ok());
  refused({0}, "'t0' is partly sent in windows");
  ScopedFd rest = Memfd(a.substr(1000));
  auto second = WindowParts(Window({{0, 1000, 3000}}), m, &n);
  REQUIRE(second.ok());
  REQUIRE(copier.CopyWindow(rest.get(), *second, **lease, 1, 4096, {}).ok());
  // Every byte is in, but the claimed tensor's checksum has not come: not complete until it does.
  CHECK_FALSE(copier.Complete());
  copier.CompleteClaimed(1, 1234);
  CHECK(copier.Complete());
  CHECK(copier.Checksums()[1] == 1234);
  CHECK(copier.Checksums()[0] == XXH3_64bits(a.data(), a.size()));
}

TEST_CASE("VerifyEnded: a window's ended tensors are final and carry the stored bytes' checksum") {
  auto store = NewStore();
  const v1::Manifest m = Sized({4000, 40, 40, 0});
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  auto lease = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(lease.ok());
  LocalPushCopier copier(m);
  REQUIRE(copier.ClaimWhole({2}).ok());
  const std::string a = Random(4000, 3), t1 = Random(40, 4);
  auto ended = [](std::vector<std::pair<uint32_t, uint64_t>> list) {
    v1::LocalPushWindow w;
    for (auto [t, x] : list) {
      w.add_ended_tensor(t);
      w.add_ended_xxh3(x);
    }
    return w;
  };
  const uint64_t xa = XXH3_64bits(a.data(), a.size()), x1 = XXH3_64bits(t1.data(), t1.size());
  // Before any window is in: nothing is final but the empty tensor.
  CHECK(copier.Final(3));
  CHECK_FALSE(copier.Final(0));
  CHECK_FALSE(copier.Final(2));  // claimed by an ipc step
  CHECK_FALSE(copier.Final(9));
  // The shape, checked before the copy.
  v1::LocalPushWindow uneven = ended({{0, xa}});
  uneven.add_ended_xxh3(1);
  CHECK(Contains(CheckEndedShape(uneven, m).message(), "names 1 ended tensors but carries 2"));
  CHECK(Contains(CheckEndedShape(ended({{4, 1}}), m).message(),
                 "ended tensor 0: index 4 is past the manifest's 4 tensors"));
  v1::LocalPushWindow many;
  for (size_t k = 0; k <= kMaxWindowParts; ++k) {
    many.add_ended_tensor(0);
    many.add_ended_xxh3(0);
  }
  CHECK(Contains(CheckEndedShape(many, m).message(), "at most 65536"));
  CHECK(CheckEndedShape(ended({{0, xa}, {1, x1}}), m).ok());

  ScopedFd first = Memfd(a.substr(0, 1000));
  uint64_t n = 0;
  auto parts = WindowParts(Window({{0, 0, 1000}}), m, &n);
  REQUIRE(parts.ok());
  REQUIRE(copier.CopyWindow(first.get(), *parts, **lease, 1, 4096, {}).ok());
  std::vector<std::pair<uint32_t, uint64_t>> verified;
  auto record = [&](uint32_t t, uint64_t x) { verified.push_back({t, x}); };
  absl::Status s = VerifyEnded(ended({{0, xa}}), m, copier, record);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(s.message(), "ended tensor 0: 't0' still has bytes to come"));
  s = VerifyEnded(ended({{2, 0}}), m, copier, record);
  CHECK(Contains(s.message(), "'t2' came by an ipc step"));
  ScopedFd rest = Memfd(a.substr(1000) + t1);
  auto more = WindowParts(Window({{0, 1000, 3000}, {1, 0, 40}}), m, &n);
  REQUIRE(more.ok());
  REQUIRE(copier.CopyWindow(rest.get(), *more, **lease, 2, 4096, {}).ok());
  CHECK(copier.Final(0));
  CHECK(copier.Final(1));
  // One wrong checksum: none of the list is reported verified.
  s = VerifyEnded(ended({{0, xa}, {1, x1 ^ 1}}), m, copier, record);
  CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(s.message(), "'t1' has xxh3"));
  CHECK(verified.empty());
  REQUIRE(VerifyEnded(ended({{0, xa}, {1, x1}, {3, XXH3_64bits("", 0)}}), m, copier, record).ok());
  CHECK(verified ==
        std::vector<std::pair<uint32_t, uint64_t>>{{0, xa}, {1, x1}, {3, XXH3_64bits("", 0)}});
  CHECK(VerifyEnded(ended({}), m, copier, {}).ok());
}

TEST_CASE("CheckPartsInOrder: each tensor's bytes once, in order, across windows") {
  const v1::Manifest m = TwoTensors();
  std::vector<uint64_t> next(2, 0);
  uint64_t bytes = 0;
  auto first = WindowParts(Window({{1, 0, 10}, {0, 0, 1000}, {0, 1000, 24}}), m, &bytes);
  REQUIRE(first.ok());
  REQUIRE(CheckPartsInOrder(*first, m, next).ok());
  CHECK(next == std::vector<uint64_t>{1024, 10});
  auto again = WindowParts(Window({{0, 0, 10}}), m, &bytes);
  absl::Status s = CheckPartsInOrder(*again, m, next);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(s.message(), "tensor 'a' goes on at byte 1024, not 0"));
  auto gap = WindowParts(Window({{1, 11, 1}}), m, &bytes);
  CHECK(Contains(CheckPartsInOrder(*gap, m, next).message(), "'b' goes on at byte 10, not 11"));
}

}  // namespace
}  // namespace ckpt::daemon
