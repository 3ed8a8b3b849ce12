// The plan of one update: how a committed version travels from the host store to every GPU's slot.
//
// Tensors are packed, in manifest order, into buckets of at most `bucket_bytes` (each tensor at a
// 256-byte aligned offset of its bucket). A tensor that fits a bucket is never split: it goes whole
// into the current bucket or the next. A tensor larger than a bucket is split into pieces, each at
// offset 0 of a bucket of its own (the last piece may share its bucket with the tensors after it),
// every piece but the last a multiple of the tensor's split unit (SplitUnit: 128 rows of a 2-D or
// larger tensor, so that a 128 x 128 block never straddles two pieces), so any tensor goes through
// any bucket size. Each bucket's used bytes are cut into one contiguous segment per uploader (the
// GPUs whose PCIe links read the host store), of equal size up to alignment, so every uploader
// copies the same bytes per bucket and all links work at once. A segment becomes a list of copies
// (host offset -> slot offset), split where it crosses tensor boundaries unless the tensors lie
// back to back both in the host store and in the slot (then one copy covers them). After the
// uploads, a grouped broadcast per segment (root: its uploader) gives every GPU the whole bucket;
// the broadcast group may later include GPUs of other nodes without changing the plan.
//
// The plan is a pure function of its inputs: the same version and settings give the same plan on
// every node.
#ifndef CKPT_DAEMON_UPDATE_UPDATE_PLAN_H_
#define CKPT_DAEMON_UPDATE_UPDATE_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ckpt::daemon {

// How a tensor's slot bytes are made (FP8 conversion, docs/conversion.md).
enum class Transform : uint8_t {
  kCopy,       // copied from the host store
  kFp8Weight,  // float8_e4m3fn, quantized from a BF16 matrix in the host store
  kFp8Scale,   // the float32 block scales the weight's quantization wrote (the scale buffer)
};

// One tensor as the planner sees it: where its bytes lie in the host store.
struct PlanTensor {
  std::string name;
  uint64_t host_offset = 0;  // in the host arena
  uint64_t bytes = 0;
  // Pieces of a tensor larger than a bucket are multiples of this many bytes (except the last);
  // 0 or 1: any byte count. SplitUnit computes it from the tensor's shape.
  uint64_t split_unit = 0;
  // Tensors of different groups never share a bucket (a version in parts: the part, so that each
  // bucket can be uploaded by any member holding its part). Consecutive tensors of one group pack
  // as usual.
  uint32_t group = 0;
  // kFp8Weight: `bytes` = rows x cols e4m3 bytes, host_offset is the BF16 source's (2 x bytes),
  // split_unit must be 128 x cols, and scale_offset says where its block scales go in the scale
  // buffer. kFp8Scale: host_offset is its offset in the scale buffer (its weight comes before it).
  Transform transform = Transform::kCopy;
  uint64_t cols = 0;
  uint64_t scale_offset = 0;
};

// A tensor, or one piece of a tensor larger than a bucket, in a bucket.
struct TensorPlacement {
  int tensor = 0;              // index into the planner's input
  uint64_t slot_offset = 0;    // in the bucket's slot, 256-byte aligned
  uint64_t bytes = 0;          // of this placement (the whole tensor unless it was split)
  uint64_t tensor_offset = 0;  // where these bytes start in the tensor (0 unless split)
};

struct Copy {
  uint64_t host_offset = 0;
  uint64_t slot_offset = 0;
  uint64_t bytes = 0;
  // kFp8Weight: rows (bytes / cols, the first one starting a block row) of `cols` columns are
  // quantized from the BF16 at host_offset; their block scales go to scale_offset of the scale
  // buffer. kFp8Scale: bytes copied from host_offset of the scale buffer, after every weight
  // quantization of the bucket and the ones before.
  Transform transform = Transform::kCopy;
  uint64_t cols = 0;
  uint64_t scale_offset = 0;
  int tensor = -1;  // the planner's input index (converted copies, for errors)
};

struct Segment {
  int uploader = 0;          // index into the uploaders (also the broadcast root)
  uint64_t slot_offset = 0;  // start of the segment in the slot (aligned, unless moved to a block
                             // row of a converted weight)
  uint64_t bytes = 0;  // may be 0 when a bucket is smaller than one alignment unit per uploader
  std::vector<Copy> copies;  // host -> slot copies that fill [slot_offset, slot_offset + bytes)
};

struct Bucket {
  std::vector<TensorPlacement> tensors;
  uint64_t used_bytes = 0;        // end of the last tensor (aligned); what the broadcasts move
  std::vector<Segment> segments;  // one per uploader, covering [0, used_bytes) in order
};

struct UpdatePlan {
  uint64_t bucket_bytes = 0;
  int uploaders = 0;
  uint64_t total_tensor_bytes = 0;
  std::vector<Bucket> buckets;
  // Bytes each uploader copies from the host (equal up to alignment within every bucket, or up to
  // a block row of a converted weight). A converted weight counts its BF16 source bytes.
  std::vector<uint64_t> upload_bytes;
  // Some copy is a conversion (Transform other than kCopy).
  bool converts = false;
};

inline constexpr uint64_t kSlotAlignment = 256;

// Rows cut together when a tensor of two or more dimensions is split (FP8 block quantization
// works on 128 x 128 blocks).
inline constexpr uint64_t kSplitRows = 128;

// The split unit of a tensor of `bytes` with `shape` and `element_bytes` per element, for buckets
// of `bucket_bytes`: 128 rows (shape[0] is the row count) when 128 rows fit a bucket, else one row
// when a row fits, else one element; one element for 0-D and 1-D tensors.
uint64_t SplitUnit(const std::vector<int64_t>& shape, uint64_t element_bytes, uint64_t bytes,
                   uint64_t bucket_bytes);

// The split unit of a weight converted to FP8 (`bytes` of e4m3 in rows of `cols`): one block row,
// 128 rows, or the whole weight when it has fewer rows (its only block row; one row when empty).
inline uint64_t Fp8SplitUnit(uint64_t bytes, uint64_t cols) {
  if (cols == 0) return 0;
  const uint64_t rows = bytes / cols;
  return (rows == 0 ? 1 : rows < kSplitRows ? rows : kSplitRows) * cols;
}

// Plans `tensors` for `uploaders` (>= 1) GPUs and slots of `bucket_bytes` (a multiple of 256).
// INVALID_ARGUMENT for bad settings (also a split unit larger than a bucket). A segment boundary
// that would fall inside a block row of a converted weight moves to the nearest block row's edge
// (each block's rows are quantized by one uploader); converted copies are never merged.
absl::StatusOr<UpdatePlan> PlanUpdate(const std::vector<PlanTensor>& tensors, uint64_t bucket_bytes,
                                      int uploaders);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_UPDATE_PLAN_H_
