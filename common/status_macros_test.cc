#include "common/status_macros.h"

#include <catch2/catch.hpp>
#include <string>

namespace ckpt {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Chain(int x, int* out) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(*out, Half(h));
  return absl::OkStatus();
}

absl::Status Check(bool fail, int* calls) {
  RETURN_IF_ERROR([&] {
    ++*calls;
    return fail ? absl::NotFoundError("gone") : absl::OkStatus();
  }());
  return absl::InternalError("reached the end");
}

TEST_CASE("ASSIGN_OR_RETURN assigns values and forwards errors") {
  int out = -1;
  REQUIRE(Chain(8, &out).ok());
  CHECK(out == 2);
  out = -1;
  absl::Status s = Chain(6, &out);  // 6 -> 3 -> odd
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(out == -1);
}

TEST_CASE("RETURN_IF_ERROR returns the first error and evaluates once") {
  int calls = 0;
  CHECK(Check(true, &calls).code() == absl::StatusCode::kNotFound);
  CHECK(calls == 1);
  CHECK(Check(false, &calls).code() == absl::StatusCode::kInternal);
  CHECK(calls == 2);
}

TEST_CASE("Annotate prepends context and keeps the code") {
  absl::Status s = Annotate(absl::NotFoundError("no file"), "loading config");
  CHECK(s.code() == absl::StatusCode::kNotFound);
  CHECK(std::string(s.message()) == "loading config: no file");
  CHECK(Annotate(absl::OkStatus(), "x").ok());
}

}  // namespace
}  // namespace ckpt
