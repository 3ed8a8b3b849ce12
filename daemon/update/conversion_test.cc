#include "daemon/update/conversion.h"

#include <catch2/catch.hpp>

#include "common/dtype.h"

namespace ckpt::daemon {
namespace {

void Add(v1::Manifest* m, const std::string& name, DType dtype, std::vector<int64_t> shape) {
  v1::TensorSpec* t = m->add_tensors();
  t->set_name(name);
  t->set_dtype(static_cast<v1::DType>(dtype));
  uint64_t n = 1;
  for (int64_t d : shape) {
    t->add_shape(d);
    n *= static_cast<uint64_t>(d);
  }
  t->set_byte_size(n * static_cast<uint64_t>(DTypeSize(dtype)));
  t->set_xxh3(0x1234);
}

v1::Manifest Model() {
  v1::Manifest m;
  Add(&m, "model.embed_tokens.weight", DType::kBfloat16, {1000, 64});
  Add(&m, "model.layers.0.self_attn.q_proj.weight", DType::kBfloat16, {300, 257});
  Add(&m, "model.layers.0.input_layernorm.weight", DType::kBfloat16, {64});
  Add(&m, "model.layers.0.mlp.down_proj.weight", DType::kFloat32, {64, 64});
  Add(&m, "model.layers.0.mlp.up_proj.weight", DType::kBfloat16, {128, 128});
  return m;
}

TEST_CASE("matching 2-D bfloat16 tensors become e4m3 plus their block scales, in place") {
  Fp8Rules rules{{"model.layers.*.weight"}, {"*.up_proj.*"}};
  auto c = ConvertManifest(Model(), rules);
  REQUIRE(c.ok());
  CHECK(c->converted == 1);
  CHECK(c->skipped == 2);  // the 1-D layernorm and the float32 down_proj
  REQUIRE(c->manifest.tensors_size() == 6);
  CHECK(c->manifest.tensors(0).name() == "model.embed_tokens.weight");
  CHECK(c->manifest.tensors(0).xxh3() == 0x1234);
  const v1::TensorSpec& w = c->manifest.tensors(1);
  CHECK(w.name() == "model.layers.0.self_attn.q_proj.weight");
  CHECK(static_cast<DType>(w.dtype()) == DType::kFloat8E4m3fn);
  CHECK(w.byte_size() == 300 * 257);
  CHECK(w.xxh3() == 0);
  const v1::TensorSpec& s = c->manifest.tensors(2);
  CHECK(s.name() == "model.layers.0.self_attn.q_proj.weight_scale_inv");
  CHECK(static_cast<DType>(s.dtype()) == DType::kFloat32);
  REQUIRE(s.shape_size() == 2);
  CHECK(s.shape(0) == 3);
  CHECK(s.shape(1) == 3);
  CHECK(s.byte_size() == 36);
  CHECK(c->scale_bytes == 36);
  CHECK(c->source_bytes == 300 * 257 * 2);
  CHECK(c->converted_bytes == 300 * 257 + 36);
  CHECK(c->sources[1].transform == Transform::kFp8Weight);
  CHECK(c->sources[1].tensor == 1);
  CHECK(c->sources[2].transform == Transform::kFp8Scale);
  CHECK(c->sources[5].tensor == 4);  // up_proj excluded: as it is
}

TEST_CASE("a scale name the version has already is refused, naming it") {
  v1::Manifest m = Model();
  Add(&m, "model.layers.0.self_attn.q_proj.weight_scale_inv", DType::kFloat32, {3, 3});
  auto c = ConvertManifest(m, Fp8Rules{{"*"}, {}});
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(c.status().message()).find("q_proj.weight_scale_inv") != std::string::npos);
  CHECK_FALSE(ConvertManifest(m, Fp8Rules{{""}, {}}).ok());
}

TEST_CASE("no rules: every tensor as it is") {
  auto c = ConvertManifest(Model(), Fp8Rules{});
  REQUIRE(c.ok());
  CHECK(c->converted == 0);
  CHECK(c->manifest.SerializeAsString() == Model().SerializeAsString());
}

TEST_CASE("plans cut converted weights at block rows and split them in 128-row pieces") {
  v1::Manifest m;
  Add(&m, "a.weight", DType::kBfloat16, {1000, 100});  // 100,000 e4m3 bytes: split in 64 KiB
  Add(&m, "b.bias", DType::kFloat32, {10});
  auto c = ConvertManifest(m, Fp8Rules{{"*.weight"}, {}});
  REQUIRE(c.ok());
  const uint64_t bucket = 64 * 1024;
  std::vector<PlanTensor> tensors = ConvertedPlanTensors(
      *c, [](int i) { return i == 0 ? 4096 : 1 << 20; }, bucket);
  REQUIRE(tensors.size() == 3);
  CHECK(tensors[0].split_unit == 12800);
  CHECK(tensors[1].transform == Transform::kFp8Scale);
  auto plan = PlanUpdate(tensors, bucket, 3);
  REQUIRE(plan.ok());
  CHECK(plan->converts);
  // 100,000 bytes in pieces of 5 x 12,800 = 64,000: two buckets, the scales after the last piece.
  REQUIRE(plan->buckets.size() == 2);
  uint64_t weight_bytes = 0;
  bool scale_seen = false;
  for (const Bucket& b : plan->buckets) {
    uint64_t end = 0;
    for (const Segment& s : b.segments) {
      CHECK(s.slot_offset == end);  // contiguous
      end = s.slot_offset + s.bytes;
      for (const Copy& copy : s.copies) {
        if (copy.transform == Transform::kFp8Weight) {
          // Every weight copy starts at a block row: its tensor byte is a multiple of 128 x 100.
          const uint64_t tensor_byte = (copy.host_offset - 4096) / 2;
          CHECK(tensor_byte % 12800 == 0);
          CHECK(copy.cols == 100);
          CHECK(copy.scale_offset == tensor_byte / 12800 * sizeof(float));
          weight_bytes += copy.bytes;
        } else if (copy.transform == Transform::kFp8Scale) {
          CHECK(copy.host_offset == 0);
          CHECK(copy.bytes == 8 * sizeof(float));
          scale_seen = true;
        }
      }
    }
    CHECK(end == b.used_bytes);
  }
  CHECK(weight_bytes == 100000);
  CHECK(scale_seen);
  // Each uploader of the first bucket (64,000 bytes) got whole block rows: 2, 2 and 1.
  const Bucket& first = plan->buckets[0];
  for (const Segment& s : first.segments) CHECK(s.bytes % 12800 == 0);
  CHECK(plan->upload_bytes[0] + plan->upload_bytes[1] + plan->upload_bytes[2] ==
        2 * 100000 + 32 + 40);
}

TEST_CASE("a converted weight of fewer than 128 rows is one block row: it fits a small bucket") {
  v1::Manifest m;
  Add(&m, "row.weight", DType::kBfloat16, {1, 200});     // 200 bytes of e4m3
  Add(&m, "few.weight", DType::kBfloat16, {4, 4000});    // 16,000 bytes: one block row
  Add(&m, "tall.weight", DType::kBfloat16, {129, 128});  // 2 block rows of 16,384 and 128 bytes
  auto c = ConvertManifest(m, Fp8Rules{{"*"}, {}});
  REQUIRE(c.ok());
  const uint64_t bucket = 16 * 1024;
  std::vector<PlanTensor> tensors = ConvertedPlanTensors(*c, nullptr, bucket);
  REQUIRE(tensors.size() == 6);
  CHECK(tensors[0].split_unit == 200);
  CHECK(tensors[2].split_unit == 16000);
  CHECK(tensors[4].split_unit == 128 * 128);
  for (int uploaders : {1, 3}) {
    auto plan = PlanUpdate(tensors, bucket, uploaders);
    REQUIRE(plan.ok());
    uint64_t weight_bytes = 0;
    for (const Bucket& b : plan->buckets) {
      for (const Segment& s : b.segments) {
        for (const Copy& copy : s.copies) {
          if (copy.transform != Transform::kFp8Weight) continue;
          weight_bytes += copy.bytes;
          // A weight of fewer than 128 rows is never cut between uploaders or buckets.
          if (copy.cols == 200) CHECK(copy.bytes == 200);
          if (copy.cols == 4000) CHECK(copy.bytes == 16000);
          if (copy.cols == 128) CHECK((copy.bytes == 128 * 128 || copy.bytes == 128));
        }
      }
    }
    CHECK(weight_bytes == 200 + 16000 + 129 * 128);
  }
}

TEST_CASE("a converted weight whose 128 rows exceed a bucket is refused, naming it") {
  v1::Manifest m;
  Add(&m, "wide.weight", DType::kBfloat16, {256, 1024});  // 128 rows = 128 KiB of e4m3
  auto c = ConvertManifest(m, Fp8Rules{{"*"}, {}});
  REQUIRE(c.ok());
  auto plan = PlanUpdate(ConvertedPlanTensors(*c, nullptr, 64 * 1024), 64 * 1024, 1);
  REQUIRE_FALSE(plan.ok());
  CHECK(std::string(plan.status().message()).find("'wide.weight'") != std::string::npos);
  CHECK(std::string(plan.status().message()).find("raise bucket_bytes") != std::string::npos);
}

}  // namespace
}  // namespace ckpt::daemon
