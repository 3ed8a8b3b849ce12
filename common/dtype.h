// Tensor element types: sizes, names, and conversions between the wire enum (ckpt.v1.DType),
// safetensors
// ("BF16") and PyTorch/numpy ("bfloat16") spellings.
#ifndef CKPT_COMMON_DTYPE_H_
#define CKPT_COMMON_DTYPE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckpt {

// Values equal ckpt.v1.DType's wire numbers.
enum class DType : int {
  kUnspecified = 0,
  kBool = 1,
  kUint8 = 2,
  kInt8 = 3,
  kInt16 = 4,
  kInt32 = 5,
  kInt64 = 6,
  kFloat16 = 7,
  kBfloat16 = 8,
  kFloat32 = 9,
  kFloat64 = 10,
  kFloat8E4m3fn = 11,
  kFloat8E5m2 = 12,
};

// Bytes per element; 0 for kUnspecified or an unknown value.
int DTypeSize(DType dtype);

// "bfloat16", "float8_e4m3fn", ... (PyTorch's names); "unspecified" for kUnspecified.
const char* DTypeName(DType dtype);

// Known wire number -> DType; nullopt otherwise.
std::optional<DType> DTypeFromWire(int value);

// "bfloat16", "bf16", "BF16", "float32", "F32", "torch.float16", ... -> DType (case-insensitive for
// the safetensors spellings). INVALID_ARGUMENT naming the text otherwise.
absl::StatusOr<DType> ParseDType(absl::string_view text);

// The safetensors header spelling ("BF16", "F8_E4M3", ...).
const char* DTypeSafetensorsName(DType dtype);

// product(shape) * DTypeSize(dtype); INVALID_ARGUMENT for a negative dimension, an unknown dtype or
// an overflow of 64 bits.
absl::StatusOr<uint64_t> TensorByteSize(DType dtype, const std::vector<int64_t>& shape);

}  // namespace ckpt

#endif  // CKPT_COMMON_DTYPE_H_
