#include "daemon/update/version_parts.h"

#include <catch2/catch.hpp>

namespace ckpt::daemon {
namespace {

bool Contains(const std::string& s, const std::string& needle) {
  return s.find(needle) != std::string::npos;
}

v1::TensorSpec Spec(const std::string& name, uint64_t xxh3, uint64_t bytes = 16) {
  v1::TensorSpec t;
  t.set_name(name);
  t.set_dtype(v1::DTYPE_FLOAT32);
  t.add_shape(static_cast<int64_t>(bytes / 4));
  t.set_byte_size(bytes);
  t.set_xxh3(xxh3);
  return t;
}

// A member holding `parts` of `count`, with tensors (name, part, xxh3) in that order.
PartHolding Holding(const std::string& member, bool usable, uint32_t count,
                    std::vector<uint32_t> parts,
                    const std::vector<std::tuple<std::string, uint32_t, uint64_t>>& tensors) {
  PartHolding h;
  h.member = member;
  h.usable = usable;
  h.state = usable ? "up" : "unreachable";
  h.part_count = count;
  h.parts = std::move(parts);
  for (const auto& [name, part, xxh3] : tensors) {
    *h.manifest.add_tensors() = Spec(name, xxh3);
    h.tensor_part.push_back(part);
  }
  return h;
}

std::vector<std::string> Names(const ComposedVersion& c) {
  std::vector<std::string> out;
  for (const auto& t : c.manifest.tensors()) out.push_back(t.name());
  return out;
}

TEST_CASE("parts held by several members compose one version, by part, replicated ones once") {
  // a holds parts 0 and 2; b holds part 1 and part 2 again; "norm" is in every part.
  std::vector<PartHolding> h = {
      Holding("b", true, 3, {1, 2},
              {{"l1", 1, 11}, {"norm", 1, 99}, {"l2", 2, 12}, {"head", 2, 13}}),
      Holding("a", true, 3, {0, 2},
              {{"l0", 0, 10}, {"norm", 0, 99}, {"l2", 2, 12}, {"head", 2, 13}}),
  };
  auto c = ComposeParts(7, h);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  CHECK(Names(*c) == std::vector<std::string>{"l0", "norm", "l1", "l2", "head"});
  CHECK(c->tensor_part == std::vector<uint32_t>{0, 0, 1, 2, 2});
  CHECK(c->holders[0] == std::vector<int>{1});     // l0: a
  CHECK(c->holders[1] == std::vector<int>{0, 1});  // norm: both
  CHECK(c->holders[2] == std::vector<int>{0});     // l1: b
  CHECK(c->holders[3] == std::vector<int>{0, 1});  // l2: both
  // The same manifest whichever order the holdings come in.
  std::swap(h[0], h[1]);
  auto again = ComposeParts(7, h);
  REQUIRE(again.ok());
  CHECK(Names(*again) == Names(*c));
}

TEST_CASE("a missing part is named with its tensors and where they were") {
  std::vector<PartHolding> h = {
      Holding("a", true, 2, {0}, {{"l0", 0, 10}}),
      Holding("b", false, 2, {1}, {{"l1", 1, 11}, {"l1.bias", 1, 12}}),
  };
  auto c = ComposeParts(7, h);
  REQUIRE(c.status().code() == absl::StatusCode::kFailedPrecondition);
  const std::string m(c.status().message());
  INFO(m);
  CHECK(Contains(m, "part 1: its 2 tensors ('l1', 'l1.bias') were on member 'b', now unreachable"));
  // Never seen: said so.
  h.pop_back();
  auto unseen = ComposeParts(7, h);
  REQUIRE(unseen.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(std::string(unseen.status().message()), "part 1: no member was seen holding it"));
}

TEST_CASE("two members holding one name with other bytes are refused naming both") {
  std::vector<PartHolding> h = {
      Holding("a", true, 2, {0}, {{"l0", 0, 10}, {"norm", 0, 99}}),
      Holding("b", true, 2, {1}, {{"l1", 1, 11}, {"norm", 1, 98}}),
  };
  auto c = ComposeParts(7, h);
  REQUIRE(c.status().code() == absl::StatusCode::kFailedPrecondition);
  const std::string m(c.status().message());
  INFO(m);
  CHECK(Contains(m, "tensor 'norm' differs between member 'a'"));
  CHECK(Contains(m, "and member 'b'"));
  CHECK(Contains(m, "0000000000000062"));  // 98
}

TEST_CASE(
    "a member holding the version whole holds every tensor, and stands in for missing parts") {
  const std::vector<std::tuple<std::string, uint32_t, uint64_t>> all = {
      {"l0", 0, 10}, {"norm", 0, 99}, {"l1", 0, 11}};
  SECTION("beside complete parts: a holder of every tensor") {
    auto c = ComposeParts(7, {Holding("a", true, 2, {0}, {{"l0", 0, 10}, {"norm", 0, 99}}),
                              Holding("b", true, 2, {1}, {{"l1", 1, 11}, {"norm", 1, 99}}),
                              Holding("copy", true, 0, {}, all)});
    INFO(c.status().ToString());
    REQUIRE(c.ok());
    CHECK(Names(*c) == std::vector<std::string>{"l0", "norm", "l1"});
    CHECK(c->holders[0] == std::vector<int>{0, 2});
    CHECK(c->holders[1] == std::vector<int>{0, 1, 2});
    CHECK(c->holders[2] == std::vector<int>{1, 2});
  }
  SECTION("a part's member gone: the whole holding makes the version") {
    auto c = ComposeParts(
        7, {Holding("a", true, 2, {0}, {{"l0", 0, 10}, {"norm", 0, 99}}),
            Holding("b", false, 2, {1}, {{"l1", 1, 11}}), Holding("copy", true, 0, {}, all)});
    INFO(c.status().ToString());
    REQUIRE(c.ok());
    CHECK(Names(*c) == std::vector<std::string>{"l0", "norm", "l1"});
    CHECK(c->holders[0] == std::vector<int>{0, 2});  // l0: a's part and the copy
    CHECK(c->holders[2] == std::vector<int>{2});     // l1: the copy alone
  }
}

TEST_CASE("counts, whole holders and parts with other tensors are refused") {
  SECTION("another count") {
    auto c = ComposeParts(
        7, {Holding("a", true, 2, {0}, {{"x", 0, 1}}), Holding("b", true, 3, {1}, {{"y", 1, 2}})});
    REQUIRE(c.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(Contains(std::string(c.status().message()), "as 2 parts and member 'b' as 3"));
  }
  SECTION("held whole by one with other tensors than the parts") {
    auto c = ComposeParts(7, {Holding("a", true, 0, {}, {{"x", 0, 1}, {"y", 0, 9}}),
                              Holding("b", true, 2, {0, 1}, {{"x", 0, 1}, {"y", 1, 2}})});
    REQUIRE(c.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(Contains(std::string(c.status().message()), "held whole by member 'a' with other"));
  }
  SECTION("one part, two contents") {
    auto c = ComposeParts(7, {Holding("a", true, 2, {0, 1}, {{"x", 0, 1}, {"y", 1, 2}}),
                              Holding("b", true, 2, {1}, {{"y", 1, 2}, {"z", 1, 3}})});
    REQUIRE(c.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(Contains(std::string(c.status().message()), "part 1 differs between members"));
    CHECK(Contains(std::string(c.status().message()), "'z'"));
    auto fewer = ComposeParts(7, {Holding("a", true, 2, {0, 1}, {{"x", 0, 1}, {"y", 1, 2}}),
                                  Holding("b", true, 2, {1}, {})});
    REQUIRE(fewer.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(Contains(std::string(fewer.status().message()),
                   "'y' is in it on member 'a' but not on "
                   "member 'b'"));
  }
  SECTION("malformed holdings") {
    PartHolding bad = Holding("a", true, 2, {0}, {{"x", 1, 1}});
    CHECK(ComposeParts(7, {bad}).status().code() == absl::StatusCode::kInvalidArgument);
    bad.tensor_part.clear();
    CHECK(ComposeParts(7, {bad}).status().code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("no usable holder") {
    auto c = ComposeParts(7, {Holding("a", false, 2, {0}, {{"x", 0, 1}})});
    REQUIRE(c.status().code() == absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace ckpt::daemon
