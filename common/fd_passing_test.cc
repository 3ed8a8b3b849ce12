#include "common/fd_passing.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

namespace ckpt {
namespace {

struct Pair {
  Pair() {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    a.reset(sv[0]);
    b.reset(sv[1]);
  }
  ScopedFd a, b;
};

absl::Time Soon() { return absl::Now() + absl::Seconds(5); }

TEST_CASE("a memfd travels and maps the same pages on the other side") {
  Pair p;
  ScopedFd mem(::memfd_create("slot", MFD_CLOEXEC));
  REQUIRE(mem.valid());
  REQUIRE(::ftruncate(mem.get(), 4096) == 0);
  auto* w =
      static_cast<char*>(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0));
  REQUIRE(w != MAP_FAILED);
  std::strcpy(w, "weights");
  REQUIRE(SendWithFds(p.a.get(), "slot 0", {mem.get()}, Soon()).ok());
  auto got = ReceiveWithFds(p.b.get(), Soon());
  REQUIRE(got.ok());
  CHECK(got->payload == "slot 0");
  REQUIRE(got->fds.size() == 1);
  CHECK(got->fds[0].get() != mem.get());
  auto* r = static_cast<char*>(::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, got->fds[0].get(), 0));
  REQUIRE(r != MAP_FAILED);
  CHECK(std::string(r) == "weights");
  w[0] = 'W';  // a write on one side is seen on the other: shared pages, not a copy
  CHECK(r[0] == 'W');
  ::munmap(r, 4096);
  ::munmap(w, 4096);
}

TEST_CASE("several descriptors, none, and the peer's credentials") {
  Pair p;
  ScopedFd x(::memfd_create("x", MFD_CLOEXEC)), y(::memfd_create("y", MFD_CLOEXEC));
  REQUIRE(SendWithFds(p.a.get(), "two", {x.get(), y.get()}, Soon()).ok());
  REQUIRE(SendWithFds(p.a.get(), "none", {}, Soon()).ok());
  auto two = ReceiveWithFds(p.b.get(), Soon());
  REQUIRE(two.ok());
  CHECK(two->fds.size() == 2);
  auto none = ReceiveWithFds(p.b.get(), Soon());
  REQUIRE(none.ok());
  CHECK(none->payload == "none");
  CHECK(none->fds.empty());
  auto cred = GetPeerCredentials(p.b.get());
  REQUIRE(cred.ok());
  CHECK(cred->pid == ::getpid());
  CHECK(cred->uid == ::getuid());
}

TEST_CASE("deadlines, a closed peer and bad arguments") {
  Pair p;
  auto nothing = ReceiveWithFds(p.b.get(), absl::Now() + absl::Milliseconds(50));
  CHECK(nothing.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(SendWithFds(p.a.get(), "", {}, Soon()).code() == absl::StatusCode::kInvalidArgument);
  CHECK(SendWithFds(p.a.get(), std::string(70000, 'x'), {}, Soon()).code() ==
        absl::StatusCode::kInvalidArgument);
  p.a.reset();
  auto closed = ReceiveWithFds(p.b.get(), Soon());
  CHECK(closed.status().code() == absl::StatusCode::kUnavailable);
}

TEST_CASE("a payload longer than the receiver allows is reported, not silently cut") {
  Pair p;
  REQUIRE(SendWithFds(p.a.get(), std::string(100, 'x'), {}, Soon()).ok());
  auto got = ReceiveWithFds(p.b.get(), Soon(), 10);
  CHECK(got.status().code() == absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace ckpt
