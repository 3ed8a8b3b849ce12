#include "common/dtype.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace ckpt {
namespace {

struct Info {
  DType dtype;
  int size;
  const char* name;
  const char* safetensors;
};

constexpr Info kInfos[] = {
    {DType::kBool, 1, "bool", "BOOL"},
    {DType::kUint8, 1, "uint8", "U8"},
    {DType::kInt8, 1, "int8", "I8"},
    {DType::kInt16, 2, "int16", "I16"},
    {DType::kInt32, 4, "int32", "I32"},
    {DType::kInt64, 8, "int64", "I64"},
    {DType::kFloat16, 2, "float16", "F16"},
    {DType::kBfloat16, 2, "bfloat16", "BF16"},
    {DType::kFloat32, 4, "float32", "F32"},
    {DType::kFloat64, 8, "float64", "F64"},
    {DType::kFloat8E4m3fn, 1, "float8_e4m3fn", "F8_E4M3"},
    {DType::kFloat8E5m2, 1, "float8_e5m2", "F8_E5M2"},
};

const Info* Find(DType dtype) {
  for (const Info& i : kInfos) {
    if (i.dtype == dtype) return &i;
  }
  return nullptr;
}

}  // namespace

int DTypeSize(DType dtype) {
  const Info* i = Find(dtype);
  return i ? i->size : 0;
}

const char* DTypeName(DType dtype) {
  const Info* i = Find(dtype);
  return i ? i->name : "unspecified";
}

const char* DTypeSafetensorsName(DType dtype) {
  const Info* i = Find(dtype);
  return i ? i->safetensors : "?";
}

std::optional<DType> DTypeFromWire(int value) {
  for (const Info& i : kInfos) {
    if (static_cast<int>(i.dtype) == value) return i.dtype;
  }
  return std::nullopt;
}

absl::StatusOr<DType> ParseDType(absl::string_view text) {
  absl::string_view t = text;
  absl::ConsumePrefix(&t, "torch.");
  std::string lower = absl::AsciiStrToLower(t);
  for (const Info& i : kInfos) {
    if (lower == i.name || lower == absl::AsciiStrToLower(i.safetensors)) return i.dtype;
  }
  // Common aliases.
  if (lower == "half") return DType::kFloat16;
  if (lower == "float" || lower == "fp32") return DType::kFloat32;
  if (lower == "double") return DType::kFloat64;
  if (lower == "bf16") return DType::kBfloat16;
  if (lower == "fp16") return DType::kFloat16;
  std::vector<std::string> names;
  for (const Info& i : kInfos) names.push_back(i.name);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", text, "' (supported: ", absl::StrJoin(names, ", "), ")"));
}

absl::StatusOr<uint64_t> TensorByteSize(DType dtype, const std::vector<int64_t>& shape) {
  int size = DTypeSize(dtype);
  if (size == 0) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dtype ", static_cast<int>(dtype)));
  }
  unsigned __int128 total = static_cast<unsigned>(size);
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative dimension ", d));
    total *= static_cast<uint64_t>(d);
    if (total > UINT64_MAX) return absl::InvalidArgumentError("tensor size overflows 64 bits");
  }
  return static_cast<uint64_t>(total);
}

}  // namespace ckpt
