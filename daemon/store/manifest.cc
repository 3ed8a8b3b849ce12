#include "daemon/store/manifest.h"

#include <algorithm>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checked_math.h"
#include "common/dtype.h"
#include "common/message_text.h"
#include "common/units.h"

namespace ckpt::daemon {

absl::Status ValidateManifest(const v1::Manifest& manifest, const ManifestLimits& limits,
                              uint64_t* total_bytes) {
  if (manifest.tensors_size() == 0) {
    return absl::InvalidArgumentError("manifest has no tensors");
  }
  if (static_cast<uint64_t>(manifest.tensors_size()) > limits.max_tensors) {
    return absl::InvalidArgumentError(
        absl::StrCat("manifest has ", manifest.tensors_size(), " tensors; at most ",
                     limits.max_tensors, " are accepted (config key max_tensors_per_version)"));
  }
  std::unordered_set<std::string_view> names;  // views of the manifest's own strings
  names.reserve(manifest.tensors_size());
  CheckedSum total;
  for (int i = 0; i < manifest.tensors_size(); ++i) {
    const v1::TensorSpec& t = manifest.tensors(i);
    if (t.name().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor #", i, " has an empty name"));
    }
    if (t.name().find('\0') != std::string::npos) {
      // Workers read names as C strings too (the C ABI): "w\0x" would come out as a second "w".
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor #", i, " has a NUL byte in its name: ", QuoteForMessage(t.name(), 64)));
    }
    if (t.name().size() > kMaxTensorNameBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor #", i, " has a name of ", t.name().size(), " bytes (at most ",
                       kMaxTensorNameBytes, "): ", QuoteForMessage(t.name(), 64)));
    }
    // Quoted only for an error message (this loop runs for every tensor of every push).
    auto quoted = [&t] { return QuoteForMessage(t.name()); };
    if (!names.insert(t.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name ", quoted()));
    }
    std::optional<DType> dtype = DTypeFromWire(t.dtype());
    if (!dtype.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", quoted(), ": unknown dtype ", t.dtype()));
    }
    if (t.shape_size() > kMaxTensorRank) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", quoted(), ": shape has ",
                                                     t.shape_size(), " dimensions (at most ",
                                                     kMaxTensorRank, ")"));
    }
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    auto size = TensorByteSize(*dtype, shape);
    if (!size.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", quoted(), ": ", size.status().message()));
    }
    if (*size != t.byte_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", quoted(), ": byte_size ", t.byte_size(), " does not match shape [",
          absl::StrJoin(shape, ", "), "] of ", DTypeName(*dtype), " (", *size, " bytes)"));
    }
    if (*size > limits.max_total_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "tensor ", quoted(), " has ", *size, " bytes (", FormatBytes(*size),
          "), more than the whole host_memory_budget of ", FormatBytes(limits.max_total_bytes)));
    }
    if (!total.Add(*size) || total.total() > limits.max_total_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the version's tensors need more than the whole host_memory_budget of ",
          FormatBytes(limits.max_total_bytes), " (exceeded at tensor #", i, " ", quoted(), ")"));
    }
  }
  if (total_bytes != nullptr) *total_bytes = total.total();
  return absl::OkStatus();
}

bool SameTensor(const v1::TensorSpec& a, const v1::TensorSpec& b) {
  return a.dtype() == b.dtype() && a.byte_size() == b.byte_size() && a.xxh3() == b.xxh3() &&
         std::equal(a.shape().begin(), a.shape().end(), b.shape().begin(), b.shape().end());
}

}  // namespace ckpt::daemon
