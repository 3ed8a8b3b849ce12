#include "daemon/api/local_pull.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace ckpt::daemon {
namespace {

bool Contains(absl::string_view s, absl::string_view needle) {
  return s.find(needle) != absl::string_view::npos;
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
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (char& c : s) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  return s;
}

uint64_t Address(const void* p) { return reinterpret_cast<uint64_t>(p); }

// A child process holding its own copy of each of `bytes` (not pages shared with this process), as
// a trainer holds its tensors: addresses()[i] is where copy i lies in the child. Release (or the
// destructor) lets the child exit and reaps it.
class Holder {
 public:
  explicit Holder(const std::vector<std::string>& bytes) : count_(bytes.size()) {
    shared_bytes_ = 8 * (count_ + 1);
    shared_ = static_cast<uint64_t*>(
        ::mmap(nullptr, shared_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    REQUIRE(shared_ != MAP_FAILED);
    int go[2];
    REQUIRE(::pipe(go) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      for (size_t i = 0; i < count_; ++i) shared_[i] = Address((new std::string(bytes[i]))->data());
      __atomic_store_n(&shared_[count_], 1, __ATOMIC_SEQ_CST);
      char x;
      (void)!::read(go[0], &x, 1);
      ::_exit(0);
    }
    ::close(go[0]);
    go_ = go[1];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (__atomic_load_n(&shared_[count_], __ATOMIC_SEQ_CST) == 0 &&
           std::chrono::steady_clock::now() < deadline) {
      ::usleep(1000);
    }
    REQUIRE(__atomic_load_n(&shared_[count_], __ATOMIC_SEQ_CST) == 1);
    addresses_.assign(shared_, shared_ + count_);
  }
  ~Holder() {
    Release();
    ::munmap(shared_, shared_bytes_);
  }
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;

  pid_t pid() const { return pid_; }
  const std::vector<uint64_t>& addresses() const { return addresses_; }
  // The child exits; returns once it is reaped (its pid may then be reused).
  void Release() {
    if (go_ < 0) return;
    (void)!::write(go_, "x", 1);
    ::close(go_);
    go_ = -1;
    int status = 0;
    (void)::waitpid(pid_, &status, 0);
  }

 private:
  size_t count_;
  size_t shared_bytes_ = 0;
  uint64_t* shared_ = nullptr;
  pid_t pid_ = -1;
  int go_ = -1;
  std::vector<uint64_t> addresses_;
};

TEST_CASE("MayPull: only a caller of the daemon's own uid, and never past CAP_SYS_PTRACE") {
  std::string why;
  CHECK_FALSE(MayPull(::geteuid() + 1, &why));
  CHECK(Contains(why, "is not the daemon's"));
  // Root reads root; a non-root daemon only without CAP_SYS_PTRACE (a test runner has none).
  why.clear();
  const bool same = MayPull(::geteuid(), &why);
  INFO(why);
  CHECK(same == (::geteuid() == 0 || why.empty()));
  if (::geteuid() == 0) CHECK(same);
}

TEST_CASE("PullParts: tensors of the manifest with bytes, addresses below 2^64") {
  const v1::Manifest m = Sized({100, 0, 50});
  auto refused = [&](std::vector<std::pair<uint32_t, uint64_t>> list, const std::string& needle) {
    v1::LocalPushPull pull;
    for (auto [t, a] : list) {
      v1::PullTensor* p = pull.add_tensors();
      p->set_tensor(t);
      p->set_address(a);
    }
    auto parts = PullParts(pull, m);
    INFO(parts.status().ToString());
    CHECK(parts.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(parts.status().message(), needle));
  };
  refused({{3, 0}}, "pull tensor 0: index 3 is past the manifest's 3 tensors");
  refused({{0, 8}, {1, 8}}, "pull tensor 1 ('t1') has no bytes to read");
  refused({{2, ~uint64_t{0} - 10}}, "passes 2^64");
  v1::LocalPushPull many;
  for (size_t k = 0; k <= kMaxPullTensors; ++k) many.add_tensors()->set_tensor(0);
  CHECK(Contains(PullParts(many, m).status().message(), "has 65537 tensors"));
  v1::LocalPushPull ok;
  ok.add_tensors()->set_tensor(2);
  ok.mutable_tensors(0)->set_address(4096);
  auto parts = PullParts(ok, m);
  REQUIRE(parts.ok());
  REQUIRE(parts->size() == 1);
  CHECK((*parts)[0].tensor == 2);
  CHECK((*parts)[0].address == 4096);
  CHECK((*parts)[0].bytes == 50);
  CHECK(PullParts(v1::LocalPushPull(), m)->empty());  // a probe
}

TEST_CASE("TrainerMemory reads another process's memory bit-exact, and names what it cannot") {
  // A child holds the tensors; the parent reads them as the daemon would.
  const std::string a = Random(5 << 20, 1), b = Random(1000, 2), nonce = "0123456789abcdef";
  Holder child({a, b, nonce});
  const std::vector<uint64_t>& addresses = child.addresses();

  auto memory = TrainerMemory::Open(child.pid());
  REQUIRE(memory.ok());
  CHECK((*memory)->Alive().ok());
  CHECK((*memory)->CheckNonce(addresses[2], nonce).ok());
  CHECK((*memory)->CheckNonce(addresses[2], "fedcba9876543210").code() ==
        absl::StatusCode::kPermissionDenied);
  // An address nothing is mapped at.
  char byte;
  absl::Status s = (*memory)->Read(8, &byte, 1);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(s.message(), "are not mapped readable"));

  const v1::Manifest m = Sized({a.size(), b.size()});
  std::vector<PullPart> parts = {{0, addresses[0], a.size()}, {1, addresses[1], b.size()}};
  std::string got_a(a.size(), '\0'), got_b(b.size(), '\0');
  std::vector<uint8_t*> dst = {reinterpret_cast<uint8_t*>(got_a.data()),
                               reinterpret_cast<uint8_t*>(got_b.data())};
  for (int threads : {1, 2}) {
    INFO("threads " << threads);
    std::fill(got_a.begin(), got_a.end(), '\0');
    std::vector<uint64_t> xxh3;
    std::atomic<size_t> done{0};  // called from the lanes, concurrently
    REQUIRE(
        PullTensors(**memory, parts, dst, m, threads, 1 << 20, {}, &xxh3, [&](size_t, uint64_t) {
          ++done;
        }).ok());
    CHECK(got_a == a);
    CHECK(got_b == b);
    CHECK(xxh3[0] == XXH3_64bits(a.data(), a.size()));
    CHECK(xxh3[1] == XXH3_64bits(b.data(), b.size()));
    CHECK(done.load() == 2);
  }
  // A tensor running past the child's mapping: refused naming it.
  std::vector<PullPart> past = {{0, addresses[1], a.size()}};
  std::vector<uint64_t> xxh3;
  s = PullTensors(**memory, past, {dst[0]}, m, 1, 1 << 20, {}, &xxh3, {});
  CHECK_FALSE(s.ok());
  CHECK(Contains(s.message(), "pulling tensor 't0'"));
  // Cancelled between pieces.
  s = PullTensors(**memory, parts, dst, m, 1, 1 << 20, [] { return true; }, &xxh3, {});
  CHECK(s.code() == absl::StatusCode::kCancelled);

  // The child exits: nothing more is read from that pid.
  child.Release();
  CHECK((*memory)->Alive().code() == absl::StatusCode::kAborted);
  CHECK_FALSE((*memory)->CheckNonce(addresses[2], nonce).ok());
  CHECK(TrainerMemory::Open(child.pid()).status().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("PullTensors reads many small tensors in batches, bit-exact, naming one that fails") {
  constexpr size_t kCount = 1100;  // more than two batches of 512
  std::vector<std::string> want;
  for (size_t i = 0; i < kCount; ++i) want.push_back(Random(1 + (i * 37) % 3000, 10 + i));
  Holder child(want);
  auto memory = TrainerMemory::Open(child.pid());
  REQUIRE(memory.ok());
  std::vector<uint64_t> sizes;
  for (const std::string& w : want) sizes.push_back(w.size());
  const v1::Manifest m = Sized(sizes);
  std::vector<PullPart> parts;
  std::vector<std::string> got(kCount);
  std::vector<uint8_t*> dst;
  for (size_t i = 0; i < kCount; ++i) {
    parts.push_back({static_cast<uint32_t>(i), child.addresses()[i], want[i].size()});
    got[i].assign(want[i].size(), '\0');
    dst.push_back(reinterpret_cast<uint8_t*>(got[i].data()));
  }
  std::vector<uint64_t> xxh3;
  std::atomic<size_t> done{0};  // called from the lanes, concurrently
  REQUIRE(PullTensors(**memory, parts, dst, m, 2, 1 << 20, {}, &xxh3, [&](size_t, uint64_t) {
            ++done;
          }).ok());
  CHECK(done.load() == kCount);
  size_t exact = 0;
  for (size_t i = 0; i < kCount; ++i) {
    exact += got[i] == want[i] && xxh3[i] == XXH3_64bits(want[i].data(), want[i].size());
  }
  CHECK(exact == kCount);
  // One tensor of a batch at an address nothing is mapped at: the error names it.
  parts[700].address = 4096;
  absl::Status s = PullTensors(**memory, parts, dst, m, 1, 1 << 20, {}, &xxh3, {});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(s.message(), "pulling tensor 't700'"));
}

}  // namespace
}  // namespace ckpt::daemon
