#include "tests/bench/model_tensors.h"

#include <catch2/catch.hpp>
#include <map>
#include <set>
#include <string>

namespace ckpt::bench {
namespace {

struct Totals {
  size_t tensors = 0;
  uint64_t elements = 0;
  uint64_t bytes = 0;
  std::map<DType, uint64_t> bytes_by_dtype;
};

Totals Sum(const std::vector<ModelTensor>& ts) {
  Totals t;
  std::set<std::string> names;
  for (const auto& x : ts) {
    REQUIRE(names.insert(x.name).second);  // no name twice
    uint64_t n = 1;
    for (int64_t d : x.shape) n *= static_cast<uint64_t>(d);
    auto b = TensorBytes(x);
    REQUIRE(b.ok());
    ++t.tensors;
    t.elements += n;
    t.bytes += *b;
    t.bytes_by_dtype[x.dtype] += *b;
  }
  return t;
}

TEST_CASE("Qwen2.5-32B: update_bench's 771 tensors, 65.5 GB") {
  const uint64_t h = 5120, mlp = 27648, kv = 1024, vocab = 152064;
  // Per layer: q, o (h x h), k, v (kv x h), gate, up, down (mlp x h), biases h + 2 kv, 2 norms.
  const uint64_t layer = 2 * h * h + 2 * kv * h + 3 * mlp * h + h + 2 * kv + 2 * h;
  Totals t = Sum(Qwen25_32B());
  CHECK(t.tensors == 1 + 64 * 12 + 2);
  CHECK(t.elements == 64 * layer + 2 * vocab * h + h);
  CHECK(t.bytes == 2 * t.elements);
  CHECK(t.bytes / 100000000 == 655);  // 65.5 GB (docs/benchmarks.md)
  CHECK(Sum(Qwen25_32B(16)).tensors == 1 + 16 * 12 + 2);
  // update_bench's latency version: one layer without embeddings, 0.975 GB.
  const Totals one = Sum(Qwen25_32B(1, false));
  CHECK(one.tensors == 12);
  CHECK(one.bytes == 2 * layer);
  CHECK(one.bytes / 1000000 == 975);
}

TEST_CASE("GLM-4.5-Air: 106B parameters and the MTP layer") {
  const uint64_t h = 4096, q = 96 * 128, kv = 8 * 128, e = 128, moe = 1408, vocab = 151552;
  const uint64_t attn = q * h + q + 2 * (kv * h + kv) + h * q + 2 * h;  // with the two norms
  const uint64_t dense = attn + 3 * 10944 * h;
  const uint64_t moe_layer = attn + e * h + e + (e + 1) * 3 * moe * h;
  const uint64_t mtp = moe_layer + h * 2 * h + 3 * h;
  Totals t = Sum(Glm45Air());
  CHECK(t.elements == 2 * vocab * h + h + dense + 45 * moe_layer + mtp);
  // The model card: 106B parameters (the MTP layer comes on top).
  CHECK(t.elements - mtp > 106000000000ull);
  CHECK(t.elements - mtp < 107000000000ull);
  // Tensors: layer 0 has 9 + 3, a MoE layer 9 + 2 + 129 x 3, the MTP layer 4 more.
  CHECK(t.tensors == 1 + 12 + 45 * 398 + 402 + 2);
  CHECK(t.bytes_by_dtype[DType::kFloat32] == 46 * 128 * 4);  // the routers' biases
}

TEST_CASE("Qwen3-235B-A22B: 235B parameters, 94 MoE layers of 128 experts") {
  const uint64_t h = 4096, e = 128, moe = 1536, vocab = 151936;
  const uint64_t layer =
      8192 * h + 2 * 512 * h + h * 8192 + 2 * 128 + 2 * h + e * h + e * 3 * moe * h;
  Totals t = Sum(Qwen3_235B_A22B());
  CHECK(t.tensors == 1 + 94 * (9 + 128 * 3) + 2);
  CHECK(t.elements == 94 * layer + 2 * vocab * h + h);
  CHECK(t.elements / 1000000000 == 235);
  CHECK(t.bytes == 2 * t.elements);
}

TEST_CASE("Kimi-K2 FP8: 139,583 tensors, 1.03T parameters, block scales") {
  Totals t = Sum(KimiK2Fp8());
  // update_bench's Kimi-K2-sized tensor count: per MoE layer 14 attention + norm tensors, the
  // router and its bias, 385 x 3 FP8 weights with their scales; layer 0: 14 + 6.
  CHECK(t.tensors == 139583);
  CHECK(t.tensors == 3 + 20 + 60 * (14 + 2 + 385 * 6));
  // Routed experts: 60 layers x 384 x 3 x 2048 x 7168 FP8 bytes.
  const uint64_t experts = 60ull * 384 * 3 * 2048 * 7168;
  CHECK(t.bytes_by_dtype[DType::kFloat8E4m3fn] > experts);
  // Every element by hand: MLA attention (q_a 1536 x 7168, q_b 12288 x 1536, kv_a 576 x 7168,
  // kv_b 16384 x 512, o 7168 x 8192) with their scales and norms; experts 2048 x 7168 x 3 with
  // 3 x 16 x 56 scales; the dense MLP 18432 x 7168 x 3 with 3 x 144 x 56 scales.
  const uint64_t h = 7168;
  const uint64_t attn = 1536 * h + 12 * 56 + 1536 + 12288 * 1536 + 96 * 12 + 576 * h + 5 * 56 +
                        512 + 16384 * 512 + 128 * 4 + h * 8192 + 56 * 64 + 2 * h;
  const uint64_t expert = 3 * 2048 * h + 3 * 16 * 56;
  const uint64_t dense = attn + 3 * 18432 * h + 3 * 144 * 56;
  const uint64_t moe_layer = attn + 384 * h + 384 + 385 * expert;
  CHECK(t.elements == 2 * 163840 * h + h + dense + 60 * moe_layer);
  CHECK(t.elements / 10000000000ull == 102);  // 1.026T: the model card's "1T total parameters"
  // One scale per 128 x 128 block of every FP8 weight, rounded up at the edges: kv_a_proj_with_mqa
  // is 576 x 7168, so 5 x 56 scales.
  bool found = false;
  for (const auto& x : KimiK2Fp8()) {
    if (x.name == "model.layers.3.self_attn.kv_a_proj_with_mqa.weight_scale_inv") {
      CHECK(x.shape == std::vector<int64_t>{5, 56});
      CHECK(x.dtype == DType::kFloat32);
      found = true;
    }
    if (x.name == "model.embed_tokens.weight") CHECK(x.dtype == DType::kBfloat16);
  }
  CHECK(found);
  // bf16: embedding and lm_head (163840 x 7168 each), norms, routers.
  CHECK(t.bytes_by_dtype[DType::kBfloat16] > 2ull * 163840 * 7168 * 2);
}

TEST_CASE("DeepSeek-V3.1 FP8: 3 dense layers, 256 experts, one MTP layer") {
  Totals t = Sum(DeepseekV31Fp8());
  // 3 dense layers of 20, 58 MoE layers of 14 + 2 + 257 x 6, the MTP layer (a MoE layer and 6
  // more), embed, norm, lm_head.
  CHECK(t.tensors == 3 + 3 * 20 + 58 * (16 + 257 * 6) + (16 + 257 * 6 + 6));
  CHECK(t.elements / 1000000000 >= 671);  // 671B + the MTP layer's 14B
  CHECK(t.elements / 1000000000 <= 690);
}

TEST_CASE("built-in lists by name") {
  for (const std::string& name : BuiltinModelNames()) {
    auto m = BuiltinModel(name);
    REQUIRE(m.ok());
    CHECK(!m->empty());
  }
  auto bad = BuiltinModel("llama");
  REQUIRE(!bad.ok());
  CHECK(std::string(bad.status().message()).find("kimi-k2") != std::string::npos);
}

TEST_CASE("JSON tensor lists") {
  auto ts = TensorsFromJson(R"([
    {"name": "a", "shape": [4, 8], "dtype": "bf16"},
    {"name": "b", "shape": [], "dtype": "F8_E4M3", "holders": [1, 0]},
    {"name": "c", "shape": [3], "dtype": "float32"}])");
  REQUIRE(ts.ok());
  REQUIRE(ts->size() == 3);
  CHECK((*ts)[0].shape == std::vector<int64_t>{4, 8});
  CHECK(*TensorBytes((*ts)[0]) == 64);
  CHECK((*ts)[1].dtype == DType::kFloat8E4m3fn);
  CHECK((*ts)[1].holders == std::vector<int>{1, 0});
  CHECK(*TensorBytes((*ts)[1]) == 1);  // 0-d: one element
  for (const char* bad :
       {"{}", "[1]", R"([{"shape": [1], "dtype": "bf16"}])",
        R"([{"name": "x", "shape": [-1], "dtype": "bf16"}])",
        R"([{"name": "x", "shape": [1], "dtype": "bf17"}])",
        R"([{"name": "x", "shape": [1], "dtype": "bf16", "holders": [-2]}])", "not json"}) {
    INFO(bad);
    CHECK(!TensorsFromJson(bad).ok());
  }
}

TEST_CASE("the planner's input: aligned host offsets, split units") {
  auto ts = TensorsFromJson(R"([
    {"name": "a", "shape": [100], "dtype": "bf16"},
    {"name": "b", "shape": [1000, 64], "dtype": "bf16"}])");
  REQUIRE(ts.ok());
  auto p = ToPlanTensors(*ts, 64 << 10);
  REQUIRE(p.ok());
  CHECK((*p)[0].bytes == 200);
  CHECK((*p)[1].host_offset == 256);
  CHECK((*p)[1].bytes == 128000);
  CHECK((*p)[1].split_unit == 128 * 128);  // 128 rows of 128 bytes fit 64 KiB
}

}  // namespace
}  // namespace ckpt::bench
