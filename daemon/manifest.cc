#include "daemon/manifest.h"

#include <unordered_set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"

namespace ckpt::daemon {

absl::Status ValidateManifest(const v1::Manifest& manifest, uint64_t* total_bytes) {
  if (manifest.tensors_size() == 0) {
    return absl::InvalidArgumentError("manifest has no tensors");
  }
  std::unordered_set<std::string> names;
  names.reserve(manifest.tensors_size());
  uint64_t total = 0;
  for (int i = 0; i < manifest.tensors_size(); ++i) {
    const v1::TensorSpec& t = manifest.tensors(i);
    if (t.name().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor #", i, " has an empty name"));
    }
    if (t.name().size() > kMaxTensorNameBytes) {
      return absl::InvalidArgumentError(absl::StrCat("tensor #", i, " has a name of ",
                                                     t.name().size(), " bytes (at most ",
                                                     kMaxTensorNameBytes, ")"));
    }
    if (!names.insert(t.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name(), "'"));
    }
    std::optional<DType> dtype = DTypeFromWire(t.dtype());
    if (!dtype.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name(), "': unknown dtype ", t.dtype()));
    }
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    auto size = TensorByteSize(*dtype, shape);
    if (!size.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name(), "': ", size.status().message()));
    }
    if (*size != t.byte_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.name(), "': byte_size ", t.byte_size(), " does not match shape [",
          absl::StrJoin(shape, ", "), "] of ", DTypeName(*dtype), " (", *size, " bytes)"));
    }
    total += *size;
  }
  if (total_bytes != nullptr) *total_bytes = total;
  return absl::OkStatus();
}

}  // namespace ckpt::daemon
