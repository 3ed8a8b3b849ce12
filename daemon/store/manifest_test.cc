#include "daemon/store/manifest.h"

#include <catch2/catch.hpp>
#include <string>

namespace ckpt::daemon {
namespace {

v1::TensorSpec* Add(v1::Manifest& m, const std::string& name, v1::DType dtype,
                    std::vector<int64_t> shape, uint64_t byte_size) {
  v1::TensorSpec* t = m.add_tensors();
  t->set_name(name);
  t->set_dtype(dtype);
  for (int64_t d : shape) t->add_shape(d);
  t->set_byte_size(byte_size);
  return t;
}

bool Contains(absl::string_view s, absl::string_view needle) {
  return s.find(needle) != absl::string_view::npos;
}

TEST_CASE("a valid manifest passes and reports its total") {
  v1::Manifest m;
  Add(m, "a", v1::DTYPE_FLOAT32, {2, 3}, 24);
  Add(m, "b", v1::DTYPE_BFLOAT16, {}, 2);
  uint64_t total = 0;
  REQUIRE(ValidateManifest(m, ManifestLimits{}, &total).ok());
  CHECK(total == 26);
}

TEST_CASE("sums that would wrap 64 bits are refused, not wrapped") {
  ManifestLimits unlimited;
  unlimited.max_total_bytes = UINT64_MAX;
  v1::Manifest m;
  for (int i = 0; i < 3; ++i) {
    Add(m, "t" + std::to_string(i), v1::DTYPE_UINT8, {int64_t{1} << 62}, uint64_t{1} << 62);
  }
  Add(m, "t3", v1::DTYPE_UINT8, {(int64_t{1} << 62) + 5}, (uint64_t{1} << 62) + 5);
  absl::Status s = ValidateManifest(m, unlimited);
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(s.message(), "tensor #3"));
}

TEST_CASE("one tensor over the budget is named; the sum over the budget too") {
  ManifestLimits limits;
  limits.max_total_bytes = 1 << 20;
  v1::Manifest huge;
  Add(huge, "huge", v1::DTYPE_FLOAT16, {INT64_MAX}, UINT64_MAX - 1);
  absl::Status s = ValidateManifest(huge, limits);
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(s.message(), "'huge' has 18446744073709551614 bytes"));
  v1::Manifest i8;
  Add(i8, "i8", v1::DTYPE_INT8, {(int64_t{1} << 32) - 1, (int64_t{1} << 32) + 1}, UINT64_MAX);
  CHECK(ValidateManifest(i8, limits).code() == absl::StatusCode::kResourceExhausted);
  v1::Manifest two;
  Add(two, "a", v1::DTYPE_UINT8, {1 << 19}, 1 << 19);
  Add(two, "b", v1::DTYPE_UINT8, {(1 << 19) + 1}, (1 << 19) + 1);
  CHECK(ValidateManifest(two, limits).code() == absl::StatusCode::kResourceExhausted);
}

TEST_CASE("bounds: tensor count, rank, name length; names in messages are escaped and cut") {
  ManifestLimits limits;
  limits.max_tensors = 2;
  v1::Manifest three;
  for (const char* n : {"a", "b", "c"}) Add(three, n, v1::DTYPE_UINT8, {1}, 1);
  CHECK(ValidateManifest(three, limits).code() == absl::StatusCode::kInvalidArgument);

  v1::Manifest rank;
  Add(rank, "r", v1::DTYPE_UINT8, std::vector<int64_t>(kMaxTensorRank + 1, 1), 1);
  CHECK(ValidateManifest(rank, ManifestLimits{}).code() == absl::StatusCode::kInvalidArgument);

  v1::Manifest long_name;
  Add(long_name, std::string(16 << 20, 'n'), v1::DTYPE_UINT8, {1}, 1);
  absl::Status s = ValidateManifest(long_name, ManifestLimits{});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().size() < 400);

  v1::Manifest dup;
  Add(dup, "x\ny", v1::DTYPE_UINT8, {1}, 1);
  Add(dup, "x\ny", v1::DTYPE_UINT8, {1}, 1);
  absl::Status d = ValidateManifest(dup, ManifestLimits{});
  CHECK(d.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(d.message(), "'x\\ny'"));
}

}  // namespace
}  // namespace ckpt::daemon
