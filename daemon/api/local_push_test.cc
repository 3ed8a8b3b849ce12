#include "daemon/api/local_push.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

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

std::unique_ptr<VersionStore> NewStore() {
  auto arena = HostArena::Create(HostArena::Kind::kShared, 1 << 20);
  REQUIRE(arena.ok());
  return std::make_unique<VersionStore>(std::move(*arena), VersionStore::Options{});
}

TEST_CASE("CopyWindow: every part lands in its tensor, bit-exact, with any piece size") {
  const uint64_t piece = GENERATE(uint64_t{1}, uint64_t{4096}, uint64_t{1} << 20);
  const int threads = GENERATE(1, 4);
  auto store = NewStore();
  const v1::Manifest m = TwoTensors();
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  std::string a(4000, '\0'), bb(40, '\0');
  std::mt19937 rng(3);
  for (char& c : a) c = static_cast<char>(rng());
  for (char& c : bb) c = static_cast<char>(rng());
  // Window: a[1000..4000), b, a[0..1000) (what a client may send for pieces of tensors).
  ScopedFd fd = Memfd(a.substr(1000) + bb + a.substr(0, 1000));
  uint64_t bytes = 0;
  auto parts = WindowParts(Window({{0, 1000, 3000}, {1, 0, 40}, {0, 0, 1000}}), m, &bytes);
  REQUIRE(parts.ok());
  REQUIRE(CheckWindowFd(fd.get(), bytes).ok());
  {
    auto lease = store->OpenWriter(b->version, b->upload_token);
    REQUIRE(lease.ok());
    REQUIRE(CopyWindow(fd.get(), *parts, **lease, threads, piece, {}).ok());
  }
  std::vector<uint64_t> sums = {XXH3_64bits(a.data(), a.size()), XXH3_64bits(bb.data(), 40)};
  auto info = store->Commit(b->version, b->upload_token, true, &sums);
  INFO(info.status().ToString());
  CHECK(info.ok());
}

TEST_CASE("CopyWindow: a window shrunk under the copy, or a cancelled copy, fails") {
  auto store = NewStore();
  const v1::Manifest m = TwoTensors();
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  uint64_t bytes = 0;
  auto parts = WindowParts(Window({{0, 0, 4000}}), m, &bytes);
  REQUIRE(parts.ok());
  auto lease = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(lease.ok());
  ScopedFd shrunk = Memfd(std::string(3000, 'x'));  // 1000 bytes short
  absl::Status s = CopyWindow(shrunk.get(), *parts, **lease, 2, 1024, {});
  CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(s.message(), "ended early"));

  ScopedFd whole = Memfd(std::string(4000, 'y'));
  s = CopyWindow(whole.get(), *parts, **lease, 1, 1024, [] { return true; });
  CHECK(s.code() == absl::StatusCode::kCancelled);
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
  s = CopyWindow(whole.get(), *parts, **again, 1, 1024, {});
  CHECK(s.code() == absl::StatusCode::kAborted);
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

TEST_CASE("TensorHasher: the checksum of every tensor added, with any thread count") {
  const int threads = GENERATE(0, 1, 3);
  auto store = NewStore();
  const v1::Manifest m = TwoTensors();
  auto b = store->Begin(m, 0, "", "test", /*verify_checksums=*/false);
  REQUIRE(b.ok());
  auto lease = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(lease.ok());
  std::memset((*lease)->data(0), 7, 4000);
  std::memset((*lease)->data(1), 9, 40);
  const std::string a(4000, 7), bb(40, 9);
  {
    TensorHasher hasher(*std::move(lease), 2, threads);
    hasher.Add(1, 40);
    hasher.Add(0, 4000);
    std::vector<uint64_t> sums = hasher.Finish();
    CHECK(sums == std::vector<uint64_t>{XXH3_64bits(a.data(), 4000), XXH3_64bits(bb.data(), 40)});
    // Finish released the lease: the commit is not held up by it.
    auto info = store->Commit(b->version, b->upload_token, true, &sums);
    CHECK(info.status().code() == absl::StatusCode::kFailedPrecondition);  // nothing marked
    CHECK(Contains(info.status().message(), "missing"));
  }
  // Destroyed without Finish: stops and joins.
  auto other = store->OpenWriter(b->version, b->upload_token);
  REQUIRE(other.ok());
  TensorHasher dropped(*std::move(other), 2, threads);
  dropped.Add(0, 4000);
}

}  // namespace
}  // namespace ckpt::daemon
