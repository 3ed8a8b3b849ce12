#include "daemon/store/host_arena.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstring>

namespace ckpt::daemon {
namespace {

TEST_CASE("a shared arena is writable and visible through its memfd") {
  auto arena = HostArena::Create(HostArena::Kind::kShared, 1 << 20);
  REQUIRE(arena.ok());
  HostArena& a = **arena;
  CHECK(a.size() == 1 << 20);
  REQUIRE(a.memfd() >= 0);
  std::memset(a.data(), 0xab, a.size());
  // A second mapping of the fd (what a worker will do) sees the same bytes.
  void* p = ::mmap(nullptr, a.size(), PROT_READ, MAP_SHARED, a.memfd(), 0);
  REQUIRE(p != MAP_FAILED);
  CHECK(static_cast<uint8_t*>(p)[12345] == 0xab);
  ::munmap(p, a.size());
}

TEST_CASE("an arena larger than the machine can hold fails with a clear status") {
  auto arena = HostArena::Create(HostArena::Kind::kShared, 1ull << 50);
  REQUIRE_FALSE(arena.ok());
  CHECK(arena.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(arena.status().message()).find("host_memory_budget") != std::string::npos);
  CHECK(HostArena::Create(HostArena::Kind::kShared, 0).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("a lazily populated arena becomes ready piece by piece, oldest offset first") {
  const uint64_t kPiece = 64 << 10;
  auto arena = HostArena::Create(HostArena::Kind::kShared, (1 << 20) + 100, {}, 2,
                                 HostArena::Populate::kLater);
  REQUIRE(arena.ok());
  HostArena& a = **arena;
  CHECK(a.ready_bytes() == 0);
  CHECK_FALSE(a.populated());
  // Nothing is reserved yet: the memfd has no blocks.
  struct stat st;
  REQUIRE(::fstat(a.memfd(), &st) == 0);
  CHECK(st.st_blocks == 0);
  uint64_t last = 0;
  int steps = 0;
  while (!a.populated()) {
    REQUIRE(a.PopulateNext(kPiece).ok());
    ++steps;
    REQUIRE(a.ready_bytes() > last);
    CHECK(a.ready_bytes() <= last + kPiece);
    // What is ready is real and writable; writing it does not disturb what comes later.
    std::memset(a.data() + last, 0x5a, a.ready_bytes() - last);
    last = a.ready_bytes();
  }
  CHECK(a.ready_bytes() == a.size());
  CHECK(steps == 17);  // 16 whole pieces, then the last page-rounded bit
  REQUIRE(::fstat(a.memfd(), &st) == 0);
  CHECK(static_cast<uint64_t>(st.st_blocks) * 512 >= a.size());
  CHECK(a.PopulateNext(kPiece).ok());  // nothing left: a no-op
  CHECK(a.Pin().ok());                 // shared memory is never pinned
  CHECK_FALSE(a.pinned());
  CHECK(a.data()[a.size() - 1] == 0x5a);
}

TEST_CASE("a failure to populate stops at the ready mark and names the offset") {
  auto arena =
      HostArena::Create(HostArena::Kind::kShared, 1 << 20, {}, 1, HostArena::Populate::kLater);
  REQUIRE(arena.ok());
  HostArena& a = **arena;
  a.FailPopulatingBeyondForTest(256 << 10);
  REQUIRE(a.PopulateNext(128 << 10).ok());
  REQUIRE(a.PopulateNext(128 << 10).ok());
  absl::Status s = a.PopulateNext(128 << 10);
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(s.message()).find("ready at 256.0 KiB") != std::string::npos);
  CHECK(a.ready_bytes() == 256 << 10);
  std::memset(a.data(), 1, a.ready_bytes());  // what is ready stays usable
}

}  // namespace
}  // namespace ckpt::daemon
