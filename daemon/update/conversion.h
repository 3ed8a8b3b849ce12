// Version-to-engine conversion (docs/conversion.md): which tensors of a version an update delivers
// as FP8 (float8_e4m3fn with 128 x 128 block scales, the DeepSeek-V3 / Kimi-K2 checkpoint form),
// chosen by name patterns, and the plan tensors that make the slot bytes from the host store.
//
// A converted tensor `X.weight` (BF16, two dimensions) becomes `X.weight` (float8_e4m3fn, the
// same shape) followed by `X.weight_scale_inv` (float32, ceil(rows / 128) x ceil(cols / 128)).
// Every other tensor goes as it is. One update converts the same way for all its workers (one
// broadcast feeds every GPU the same bytes).
#ifndef CKPT_DAEMON_UPDATE_CONVERSION_H_
#define CKPT_DAEMON_UPDATE_CONVERSION_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/update/update_plan.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

// Config fp8_weights / fp8_exclude: shell patterns (fnmatch, `*` also matches dots) on tensor
// names. A tensor is converted when it matches a pattern of `include`, none of `exclude`, is
// bfloat16 and has two dimensions; other matching tensors go as they are (counted in
// Conversion::skipped).
struct Fp8Rules {
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  bool empty() const { return include.empty(); }
  bool operator==(const Fp8Rules& other) const {
    return include == other.include && exclude == other.exclude;
  }
};

// The engine's view of a version: its manifest (what workers receive) and, per tensor of it, how
// the slot bytes are made.
struct Conversion {
  v1::Manifest manifest;
  struct Source {
    int tensor = -1;  // in the version's manifest
    Transform transform = Transform::kCopy;
    uint64_t cols = 0;          // kFp8Weight
    uint64_t scale_offset = 0;  // kFp8Weight, kFp8Scale: bytes into the scale buffer
  };
  std::vector<Source> sources;
  uint64_t scale_bytes = 0;      // the scale buffer an update needs
  uint32_t converted = 0;        // weights converted
  uint32_t skipped = 0;          // tensors a pattern matched that are not 2-D bfloat16
  uint64_t source_bytes = 0;     // of the converted weights, in BF16
  uint64_t converted_bytes = 0;  // of them in FP8 with their scales
};

// The conversion of `manifest` by `rules`. FAILED_PRECONDITION when a scale's name is a tensor of
// the version already (it would be sent twice), naming it; INVALID_ARGUMENT for a bad pattern.
absl::StatusOr<Conversion> ConvertManifest(const v1::Manifest& manifest, const Fp8Rules& rules);

// Plan tensors of a conversion: host_offset(i) is where tensor i of the version lies in the host
// store. The result plans with PlanUpdate as any other.
std::vector<PlanTensor> ConvertedPlanTensors(const Conversion& conversion,
                                             const std::function<uint64_t(int)>& host_offset,
                                             uint64_t bucket_bytes);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_CONVERSION_H_
