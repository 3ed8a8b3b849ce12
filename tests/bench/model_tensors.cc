#include "tests/bench/model_tensors.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ckpt::bench {
namespace {

class Builder {
 public:
  void Add(std::string name, std::vector<int64_t> shape, DType dtype = DType::kBfloat16) {
    out_.push_back({std::move(name), std::move(shape), dtype, {}});
  }
  // An FP8 linear weight [out, in] and its block scales.
  void Fp8Linear(const std::string& prefix, int64_t out, int64_t in) {
    Add(prefix + ".weight", {out, in}, DType::kFloat8E4m3fn);
    Add(prefix + ".weight_scale_inv", {(out + 127) / 128, (in + 127) / 128}, DType::kFloat32);
  }
  std::vector<ModelTensor> Take() { return std::move(out_); }

 private:
  std::vector<ModelTensor> out_;
};

// gate/up [inter, hidden], down [hidden, inter], bf16.
void Bf16Mlp(Builder* b, const std::string& p, int64_t hidden, int64_t inter) {
  b->Add(p + "gate_proj.weight", {inter, hidden});
  b->Add(p + "up_proj.weight", {inter, hidden});
  b->Add(p + "down_proj.weight", {hidden, inter});
}

void Fp8Mlp(Builder* b, const std::string& p, int64_t hidden, int64_t inter) {
  b->Fp8Linear(p + "gate_proj", inter, hidden);
  b->Fp8Linear(p + "up_proj", inter, hidden);
  b->Fp8Linear(p + "down_proj", hidden, inter);
}

// One GLM-4.5-Air decoder layer (dense or MoE).
void Glm45AirLayer(Builder* b, int l, bool moe) {
  const int64_t h = 4096, heads = 96, kv_heads = 8, head_dim = 128;
  const std::string p = absl::StrCat("model.layers.", l, ".");
  b->Add(p + "input_layernorm.weight", {h});
  b->Add(p + "post_attention_layernorm.weight", {h});
  b->Add(p + "self_attn.q_proj.weight", {heads * head_dim, h});
  b->Add(p + "self_attn.q_proj.bias", {heads * head_dim});
  b->Add(p + "self_attn.k_proj.weight", {kv_heads * head_dim, h});
  b->Add(p + "self_attn.k_proj.bias", {kv_heads * head_dim});
  b->Add(p + "self_attn.v_proj.weight", {kv_heads * head_dim, h});
  b->Add(p + "self_attn.v_proj.bias", {kv_heads * head_dim});
  b->Add(p + "self_attn.o_proj.weight", {h, heads * head_dim});
  if (!moe) {
    Bf16Mlp(b, p + "mlp.", h, 10944);
    return;
  }
  const int64_t experts = 128, inter = 1408;
  b->Add(p + "mlp.gate.weight", {experts, h});
  b->Add(p + "mlp.gate.e_score_correction_bias", {experts}, DType::kFloat32);
  for (int e = 0; e < experts; ++e) Bf16Mlp(b, absl::StrCat(p, "mlp.experts.", e, "."), h, inter);
  Bf16Mlp(b, p + "mlp.shared_experts.", h, inter);
}

void DeepseekV3Layer(Builder* b, const DeepseekV3Config& c, int64_t l) {
  const int64_t h = c.hidden;
  const std::string p = absl::StrCat("model.layers.", l, ".");
  b->Add(p + "input_layernorm.weight", {h});
  b->Add(p + "post_attention_layernorm.weight", {h});
  b->Fp8Linear(p + "self_attn.q_a_proj", c.q_lora_rank, h);
  b->Add(p + "self_attn.q_a_layernorm.weight", {c.q_lora_rank});
  b->Fp8Linear(p + "self_attn.q_b_proj", c.heads * (c.qk_nope_dim + c.qk_rope_dim), c.q_lora_rank);
  b->Fp8Linear(p + "self_attn.kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_dim, h);
  b->Add(p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank});
  b->Fp8Linear(p + "self_attn.kv_b_proj", c.heads * (c.qk_nope_dim + c.v_head_dim), c.kv_lora_rank);
  b->Fp8Linear(p + "self_attn.o_proj", h, c.heads * c.v_head_dim);
  if (l < c.dense_layers) {
    Fp8Mlp(b, p + "mlp.", h, c.dense_intermediate);
    return;
  }
  b->Add(p + "mlp.gate.weight", {c.experts, h});
  b->Add(p + "mlp.gate.e_score_correction_bias", {c.experts}, DType::kFloat32);
  for (int64_t e = 0; e < c.experts; ++e) {
    Fp8Mlp(b, absl::StrCat(p, "mlp.experts.", e, "."), h, c.moe_intermediate);
  }
  Fp8Mlp(b, p + "mlp.shared_experts.", h, c.shared_experts * c.moe_intermediate);
}

}  // namespace

std::vector<ModelTensor> Qwen25_32B(int layers, bool embeddings) {
  const int64_t h = 5120, mlp = 27648, kv = 1024, vocab = 152064;
  Builder b;
  if (embeddings) b.Add("model.embed_tokens.weight", {vocab, h});
  for (int l = 0; l < layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    b.Add(p + "self_attn.q_proj.weight", {h, h});
    b.Add(p + "self_attn.q_proj.bias", {h});
    b.Add(p + "self_attn.k_proj.weight", {kv, h});
    b.Add(p + "self_attn.k_proj.bias", {kv});
    b.Add(p + "self_attn.v_proj.weight", {kv, h});
    b.Add(p + "self_attn.v_proj.bias", {kv});
    b.Add(p + "self_attn.o_proj.weight", {h, h});
    Bf16Mlp(&b, p + "mlp.", h, mlp);
    b.Add(p + "input_layernorm.weight", {h});
    b.Add(p + "post_attention_layernorm.weight", {h});
  }
  if (embeddings) {
    b.Add("model.norm.weight", {h});
    b.Add("lm_head.weight", {vocab, h});
  }
  return b.Take();
}

std::vector<ModelTensor> Glm45Air() {
  const int64_t h = 4096, vocab = 151552;
  Builder b;
  b.Add("model.embed_tokens.weight", {vocab, h});
  for (int l = 0; l < 46; ++l) Glm45AirLayer(&b, l, /*moe=*/l >= 1);
  // The MTP layer.
  Glm45AirLayer(&b, 46, /*moe=*/true);
  b.Add("model.layers.46.eh_proj.weight", {h, 2 * h});
  b.Add("model.layers.46.enorm.weight", {h});
  b.Add("model.layers.46.hnorm.weight", {h});
  b.Add("model.layers.46.shared_head.norm.weight", {h});
  b.Add("model.norm.weight", {h});
  b.Add("lm_head.weight", {vocab, h});
  return b.Take();
}

std::vector<ModelTensor> Qwen3_235B_A22B() {
  const int64_t h = 4096, heads = 64, kv_heads = 4, head_dim = 128, experts = 128, inter = 1536;
  const int64_t vocab = 151936;
  Builder b;
  b.Add("model.embed_tokens.weight", {vocab, h});
  for (int l = 0; l < 94; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    b.Add(p + "input_layernorm.weight", {h});
    b.Add(p + "post_attention_layernorm.weight", {h});
    b.Add(p + "self_attn.q_proj.weight", {heads * head_dim, h});
    b.Add(p + "self_attn.k_proj.weight", {kv_heads * head_dim, h});
    b.Add(p + "self_attn.v_proj.weight", {kv_heads * head_dim, h});
    b.Add(p + "self_attn.o_proj.weight", {h, heads * head_dim});
    b.Add(p + "self_attn.q_norm.weight", {head_dim});
    b.Add(p + "self_attn.k_norm.weight", {head_dim});
    b.Add(p + "mlp.gate.weight", {experts, h});
    for (int e = 0; e < experts; ++e)
      Bf16Mlp(&b, absl::StrCat(p, "mlp.experts.", e, "."), h, inter);
  }
  b.Add("model.norm.weight", {h});
  b.Add("lm_head.weight", {vocab, h});
  return b.Take();
}

std::vector<ModelTensor> DeepseekV3Fp8(const DeepseekV3Config& c) {
  Builder b;
  b.Add("model.embed_tokens.weight", {c.vocab, c.hidden});
  for (int64_t l = 0; l < c.layers; ++l) DeepseekV3Layer(&b, c, l);
  for (int64_t m = 0; m < c.mtp_layers; ++m) {
    const int64_t l = c.layers + m;
    const std::string p = absl::StrCat("model.layers.", l, ".");
    b.Add(p + "embed_tokens.weight", {c.vocab, c.hidden});
    b.Add(p + "enorm.weight", {c.hidden});
    b.Add(p + "hnorm.weight", {c.hidden});
    b.Add(p + "eh_proj.weight", {c.hidden, 2 * c.hidden});
    DeepseekV3Layer(&b, c, l);
    b.Add(p + "shared_head.norm.weight", {c.hidden});
    b.Add(p + "shared_head.head.weight", {c.vocab, c.hidden});
  }
  b.Add("model.norm.weight", {c.hidden});
  b.Add("lm_head.weight", {c.vocab, c.hidden});
  return b.Take();
}

std::vector<ModelTensor> KimiK2Fp8() { return DeepseekV3Fp8(DeepseekV3Config{}); }

std::vector<ModelTensor> DeepseekV31Fp8() {
  DeepseekV3Config c;
  c.dense_layers = 3;
  c.heads = 128;
  c.experts = 256;
  c.vocab = 129280;
  c.mtp_layers = 1;
  return DeepseekV3Fp8(c);
}

std::vector<std::string> BuiltinModelNames() {
  return {"qwen2.5-32b", "glm-4.5-air", "qwen3-235b-a22b", "kimi-k2", "deepseek-v3.1"};
}

absl::StatusOr<std::vector<ModelTensor>> BuiltinModel(absl::string_view name) {
  if (name == "qwen2.5-32b") return Qwen25_32B();
  if (name == "glm-4.5-air") return Glm45Air();
  if (name == "qwen3-235b-a22b") return Qwen3_235B_A22B();
  if (name == "kimi-k2") return KimiK2Fp8();
  if (name == "deepseek-v3.1") return DeepseekV31Fp8();
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown model '", name, "' (built in: ", absl::StrJoin(BuiltinModelNames(), ", "), ")"));
}

absl::StatusOr<std::vector<ModelTensor>> TensorsFromJson(absl::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("the tensor list is not valid JSON");
  if (!j.is_array()) {
    return absl::InvalidArgumentError("the tensor list must be a JSON array of tensors");
  }
  std::vector<ModelTensor> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& e = j[i];
    auto bad = [&](const std::string& what) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", i, ": ", what));
    };
    if (!e.is_object()) return bad("not an object");
    if (!e.contains("name") || !e["name"].is_string()) return bad("needs a string \"name\"");
    ModelTensor t;
    t.name = e["name"].get<std::string>();
    if (!e.contains("shape") || !e["shape"].is_array()) {
      return bad(absl::StrCat("'", t.name, "' needs a \"shape\" array"));
    }
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return bad(absl::StrCat("'", t.name, "': dimensions must be integers >= 0"));
      }
      t.shape.push_back(d.get<int64_t>());
    }
    if (!e.contains("dtype") || !e["dtype"].is_string()) {
      return bad(absl::StrCat("'", t.name, "' needs a string \"dtype\""));
    }
    auto dtype = ParseDType(e["dtype"].get<std::string>());
    if (!dtype.ok()) return bad(absl::StrCat("'", t.name, "': ", dtype.status().message()));
    t.dtype = *dtype;
    if (e.contains("holders")) {
      if (!e["holders"].is_array())
        return bad(absl::StrCat("'", t.name, "': holders not an array"));
      for (const auto& m : e["holders"]) {
        if (!m.is_number_integer() || m.get<int64_t>() < 0 || m.get<int64_t>() > 1 << 20) {
          return bad(absl::StrCat("'", t.name, "': holders must be member indices >= 0"));
        }
        t.holders.push_back(m.get<int>());
      }
    }
    auto bytes = TensorBytes(t);
    if (!bytes.ok()) return bad(absl::StrCat("'", t.name, "': ", bytes.status().message()));
    out.push_back(std::move(t));
  }
  return out;
}

absl::StatusOr<uint64_t> TensorBytes(const ModelTensor& t) {
  return TensorByteSize(t.dtype, t.shape);
}

absl::StatusOr<std::vector<daemon::PlanTensor>> ToPlanTensors(
    const std::vector<ModelTensor>& tensors, uint64_t bucket_bytes) {
  std::vector<daemon::PlanTensor> out;
  out.reserve(tensors.size());
  uint64_t host = 0;
  for (const ModelTensor& t : tensors) {
    auto bytes = TensorBytes(t);
    if (!bytes.ok()) return bytes.status();
    daemon::PlanTensor p;
    p.name = t.name;
    p.host_offset = host;
    p.bytes = *bytes;
    p.split_unit = daemon::SplitUnit(t.shape, DTypeSize(t.dtype), *bytes, bucket_bytes);
    host += (*bytes + daemon::kSlotAlignment - 1) / daemon::kSlotAlignment * daemon::kSlotAlignment;
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace ckpt::bench
