#include "client/piece_assembler.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

namespace ckpt::client {
namespace {

std::string Bytes(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7);
  return s;
}

TEST_CASE("pieces in order give the whole tensor, bit-exact; buffers are reused and freed") {
  PieceAssembler p(-1);
  const std::string t = Bytes(10000, 'a');
  auto a = p.Add("w", t.size(), 0, t.data(), 4096);
  REQUIRE(a.ok());
  CHECK(*a == nullptr);
  CHECK(p.in_progress());
  auto b = p.Add("w", t.size(), 4096, t.data() + 4096, 4096);
  REQUIRE(b.ok());
  CHECK(*b == nullptr);
  auto c = p.Add("w", t.size(), 8192, t.data() + 8192, t.size() - 8192);
  REQUIRE(c.ok());
  REQUIRE(*c != nullptr);
  CHECK_FALSE(p.in_progress());
  CHECK(std::memcmp(*c, t.data(), t.size()) == 0);
  p.HandOut(1, 2);
  CHECK(p.held_bytes() == t.size());

  // A second split tensor while the first is still handed out gets its own buffer.
  const std::string u = Bytes(6000, 'z');
  auto d = p.Add("u", u.size(), 0, u.data(), 3000);
  REQUIRE(d.ok());
  CHECK(p.held_bytes() == t.size() + u.size());
  auto e = p.Add("u", u.size(), 3000, u.data() + 3000, 3000);
  REQUIRE(e.ok());
  REQUIRE(*e != nullptr);
  CHECK(*e != *c);
  CHECK(std::memcmp(*c, t.data(), t.size()) == 0);  // the first is untouched
  CHECK(std::memcmp(*e, u.data(), u.size()) == 0);
  p.HandOut(1, 3);
  p.Release(1, 2);
  p.Release(1, 3);
  // Idle buffers serve the next tensor that fits; FreeIdle frees them.
  auto f = p.Add("v", 5000, 0, u.data(), 2500);
  REQUIRE(f.ok());
  CHECK(p.held_bytes() == t.size() + u.size());
  p.Abandon();
  p.FreeIdle();
  CHECK(p.held_bytes() == 0);
}

TEST_CASE("pieces out of order, of another tensor or past the end are refused") {
  PieceAssembler p(-1);
  const std::string t = Bytes(1000, 'q');
  auto no_first = p.Add("w", 1000, 500, t.data(), 500);
  CHECK(no_first.status().code() == absl::StatusCode::kInternal);
  CHECK(std::string(no_first.status().message()).find("without its first piece") !=
        std::string::npos);

  REQUIRE(p.Add("w", 1000, 0, t.data(), 400).ok());
  auto gap = p.Add("w", 1000, 500, t.data() + 500, 500);
  CHECK(gap.status().code() == absl::StatusCode::kInternal);
  CHECK(std::string(gap.status().message()).find("'w' was incomplete (400 bytes in)") !=
        std::string::npos);
  CHECK_FALSE(p.in_progress());

  REQUIRE(p.Add("w", 1000, 0, t.data(), 400).ok());
  auto other = p.Add("x", 1000, 400, t.data(), 400);
  CHECK(other.status().code() == absl::StatusCode::kInternal);
  CHECK_FALSE(p.in_progress());

  REQUIRE(p.Add("w", 1000, 0, t.data(), 800).ok());
  auto past = p.Add("w", 1000, 800, t.data(), 400);
  CHECK(past.status().code() == absl::StatusCode::kInternal);
  CHECK(std::string(past.status().message()).find("past its end at 1000") != std::string::npos);
}

TEST_CASE("two split tensors completed in one bucket are refused (no view is freed)") {
  PieceAssembler p(-1);
  const std::string t = Bytes(100, 'k');
  REQUIRE(p.Add("a", 100, 0, t.data(), 60).ok());
  auto a = p.Add("a", 100, 60, t.data() + 60, 40);
  REQUIRE(a.ok());
  REQUIRE(*a != nullptr);
  // No HandOut between: "b" completes while "a" still waits to be handed out.
  REQUIRE(p.Add("b", 100, 0, t.data(), 60).ok());
  auto b = p.Add("b", 100, 60, t.data() + 60, 40);
  CHECK(b.status().code() == absl::StatusCode::kInternal);
}

TEST_CASE("a buffer that cannot be allocated is RESOURCE_EXHAUSTED naming the tensor") {
  PieceAssembler p(-1);
  const char byte = 0;
  auto r = p.Add("model.embed_tokens.weight", uint64_t{1} << 62, 0, &byte, 1);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(r.status().message()).find("'model.embed_tokens.weight'") != std::string::npos);
  CHECK(std::string(r.status().message()).find("in host memory") != std::string::npos);
  CHECK_FALSE(p.in_progress());
}

}  // namespace
}  // namespace ckpt::client
