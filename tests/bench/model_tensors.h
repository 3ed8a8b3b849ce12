// Tensor lists of published checkpoints, built from their configs (no weights), for the planner
// model (cluster_model.cc) and benchmarks: names, shapes and dtypes as the checkpoints' safetensors
// files hold them. Also a JSON form of such a list, and the planner's input for one.
//
// Each generator's header comment names the config values it uses and what is assumed where the
// config does not say (docs/benchmarks.md, "Model of scale (issue 13)", lists them too).
#ifndef CKPT_TESTS_BENCH_MODEL_TENSORS_H_
#define CKPT_TESTS_BENCH_MODEL_TENSORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "daemon/update/update_plan.h"

namespace ckpt::bench {

struct ModelTensor {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kBfloat16;
  std::vector<int> holders;  // members that hold it (JSON "holders"); empty: not given
};

// Qwen2.5-32B (update_bench's list): bf16, hidden 5120, MLP 27648, 40 heads / 8 KV heads of 128,
// q/k/v biases, vocab 152064, untied lm_head; `layers` decoder layers (64: the model);
// `embeddings`: with the embedding, final norm and lm_head (update_bench's latency version has
// none: one layer, 0.975 GB).
std::vector<ModelTensor> Qwen25_32B(int layers = 64, bool embeddings = true);

// GLM-4.5-Air (zai-org/GLM-4.5-Air, Glm4MoeForCausalLM), bf16: hidden 4096, 46 layers (layer 0
// dense, MLP 10944; 1-45 MoE), 96 heads / 8 KV heads of 128 with q/k/v biases and no QK norm, 128
// routed experts and 1 shared of 1408, a router (gate) with an fp32 e_score_correction_bias, vocab
// 151552, untied lm_head; plus the checkpoint's one MTP layer (model.layers.46: a MoE layer with
// eh_proj, enorm, hnorm and shared_head.norm; assumed to carry no copy of the embedding or head).
std::vector<ModelTensor> Glm45Air();

// Qwen3-235B-A22B(-Instruct-2507) (Qwen3MoeForCausalLM), bf16: hidden 4096, 94 layers, all MoE,
// 64 heads / 4 KV heads of 128, q_norm / k_norm, 128 experts of 1536, no shared expert, vocab
// 151936, untied lm_head.
std::vector<ModelTensor> Qwen3_235B_A22B();

// The DeepSeek-V3 architecture as Kimi-K2 and DeepSeek-V3.1 ship it: FP8 (e4m3) linear weights with
// a float32 weight_scale_inv per 128 x 128 block ([ceil(out/128), ceil(in/128)]); bf16 embedding,
// lm_head, norms and router weight; fp32 e_score_correction_bias; MLA attention.
struct DeepseekV3Config {
  int64_t hidden = 7168, layers = 61, dense_layers = 1, dense_intermediate = 18432;
  int64_t heads = 64, q_lora_rank = 1536, kv_lora_rank = 512;
  int64_t qk_nope_dim = 128, qk_rope_dim = 64, v_head_dim = 128;
  int64_t experts = 384, shared_experts = 1, moe_intermediate = 2048, vocab = 163840;
  // MTP layers after the last decoder layer (model.layers.<layers>...): a MoE layer with enorm,
  // hnorm, eh_proj (bf16), shared_head.norm, and its own embed_tokens and shared_head.head (bf16).
  int64_t mtp_layers = 0;
};
std::vector<ModelTensor> DeepseekV3Fp8(const DeepseekV3Config& c);

// Kimi-K2-Instruct (moonshotai, the FP8 block-quantized release): DeepseekV3Config's defaults
// (hidden 7168, 61 layers, 1 dense, 64 heads, 384 experts + 1 shared of 2048, vocab 163840, no
// MTP layer). 139,583 tensors.
std::vector<ModelTensor> KimiK2Fp8();

// DeepSeek-V3.1 (FP8 release): 61 layers, 3 dense, 128 heads, 256 experts + 1 shared of 2048, vocab
// 129280, one MTP layer (model.layers.61).
std::vector<ModelTensor> DeepseekV31Fp8();

// The built-in lists by name: "qwen2.5-32b", "glm-4.5-air", "qwen3-235b-a22b", "kimi-k2",
// "deepseek-v3.1". INVALID_ARGUMENT naming the known ones otherwise.
absl::StatusOr<std::vector<ModelTensor>> BuiltinModel(absl::string_view name);
std::vector<std::string> BuiltinModelNames();

// A JSON array of {"name": str, "shape": [int...], "dtype": str (ParseDType's spellings),
// optional "holders": [member...]}. INVALID_ARGUMENT naming the entry otherwise.
absl::StatusOr<std::vector<ModelTensor>> TensorsFromJson(absl::string_view text);

// Bytes of a tensor (product of the shape x element size).
absl::StatusOr<uint64_t> TensorBytes(const ModelTensor& t);

// The planner's input: tensors back to back in a host arena (256-byte aligned), each with its
// split unit for buckets of `bucket_bytes` (SplitUnit).
absl::StatusOr<std::vector<daemon::PlanTensor>> ToPlanTensors(
    const std::vector<ModelTensor>& tensors, uint64_t bucket_bytes);

}  // namespace ckpt::bench

#endif  // CKPT_TESTS_BENCH_MODEL_TENSORS_H_
