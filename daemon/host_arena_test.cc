#include "daemon/host_arena.h"

#include <sys/mman.h>

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

}  // namespace
}  // namespace ckpt::daemon
