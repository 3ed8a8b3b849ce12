#include "common/dtype.h"

#include <catch2/catch.hpp>

namespace ckpt {
namespace {

TEST_CASE("every dtype has a size, a name and round-trips through its spellings") {
  int known = 0;
  for (int v = 0; v < 64; ++v) {
    auto d = DTypeFromWire(v);
    if (!d.has_value()) continue;
    ++known;
    INFO(DTypeName(*d));
    CHECK(DTypeSize(*d) > 0);
    CHECK(*ParseDType(DTypeName(*d)) == *d);
    CHECK(*ParseDType(DTypeSafetensorsName(*d)) == *d);
    CHECK(*ParseDType(std::string("torch.") + DTypeName(*d)) == *d);
  }
  CHECK(known == 12);
  CHECK(DTypeSize(DType::kBfloat16) == 2);
  CHECK(DTypeSize(DType::kFloat8E4m3fn) == 1);
  CHECK(DTypeSize(DType::kInt64) == 8);
  CHECK_FALSE(DTypeFromWire(0).has_value());
  CHECK_FALSE(DTypeFromWire(13).has_value());
}

TEST_CASE("unknown dtype names fail naming the text") {
  auto r = ParseDType("complex64");
  REQUIRE_FALSE(r.ok());
  CHECK(std::string(r.status().message()).find("'complex64'") != std::string::npos);
}

TEST_CASE("TensorByteSize multiplies and refuses overflow and negatives") {
  CHECK(*TensorByteSize(DType::kBfloat16, {4096, 4096}) == 4096ull * 4096 * 2);
  CHECK(*TensorByteSize(DType::kFloat32, {}) == 4);  // a scalar
  CHECK(*TensorByteSize(DType::kFloat32, {0, 7}) == 0);
  CHECK_FALSE(TensorByteSize(DType::kFloat32, {-1}).ok());
  CHECK_FALSE(TensorByteSize(DType::kFloat64, {1ll << 40, 1ll << 40}).ok());
  CHECK_FALSE(TensorByteSize(DType::kUnspecified, {1}).ok());
}

}  // namespace
}  // namespace ckpt
