// Validation of a version's manifest (the tensor list a trainer announces at BeginVersion).
#ifndef CKPT_DAEMON_STORE_MANIFEST_H_
#define CKPT_DAEMON_STORE_MANIFEST_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

// Longest tensor name accepted (bytes).
inline constexpr size_t kMaxTensorNameBytes = 1024;
// Longest version label accepted (bytes).
inline constexpr size_t kMaxLabelBytes = 1024;
// Most dimensions of one tensor.
inline constexpr int kMaxTensorRank = 64;
// Default of max_tensors_per_version: DeepSeek-V3 / Kimi-K2 checkpoints with unfused experts have
// ~10^5 tensors.
inline constexpr uint64_t kDefaultMaxTensors = uint64_t{1} << 18;

// What one version may hold at most. Sizes are exact bytes (before the store's 256-byte rounding).
struct ManifestLimits {
  uint64_t max_tensors = kDefaultMaxTensors;
  // Bytes of all tensors together, and hence of any one tensor: the host_memory_budget.
  uint64_t max_total_bytes = UINT64_MAX;
};

// OK when the manifest has 1..limits.max_tensors tensors, every name is non-empty, unique and at
// most kMaxTensorNameBytes, every dtype is known, every shape has at most kMaxTensorRank
// non-negative dimensions, every byte_size equals product(shape) x element size (computed without
// overflow), and the sum of byte sizes fits in limits.max_total_bytes. Errors:
// INVALID_ARGUMENT naming the first offending tensor (names are escaped and cut for the message);
// RESOURCE_EXHAUSTED when one tensor or the sum is larger than max_total_bytes (the budget).
// `total_bytes` (if not null) receives the sum of byte sizes.
absl::Status ValidateManifest(const v1::Manifest& manifest, const ManifestLimits& limits,
                              uint64_t* total_bytes = nullptr);

// Whether `a` and `b` have the same dtype, shape, byte size and XXH3-64 (names aside): the same
// tensor held twice (parts of a version, members holding one version).
bool SameTensor(const v1::TensorSpec& a, const v1::TensorSpec& b);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_STORE_MANIFEST_H_
