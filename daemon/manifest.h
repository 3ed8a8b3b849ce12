// Validation of a version's manifest (the tensor list a trainer announces at BeginVersion).
#ifndef CKPT_DAEMON_MANIFEST_H_
#define CKPT_DAEMON_MANIFEST_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

// Longest tensor name accepted (bytes).
inline constexpr size_t kMaxTensorNameBytes = 1024;

// OK when the manifest has at least one tensor, every name is non-empty, unique and at most
// kMaxTensorNameBytes, every dtype is known, and every byte_size equals product(shape) x element
// size. Otherwise INVALID_ARGUMENT naming the first offending tensor. `total_bytes` (if not null)
// receives the sum of byte sizes.
absl::Status ValidateManifest(const v1::Manifest& manifest, uint64_t* total_bytes = nullptr);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_MANIFEST_H_
