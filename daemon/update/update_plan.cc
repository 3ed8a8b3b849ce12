#include "daemon/update/update_plan.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/fp8_block.h"
#include "common/units.h"

namespace ckpt::daemon {
namespace {

uint64_t AlignUp(uint64_t v) { return (v + kSlotAlignment - 1) / kSlotAlignment * kSlotAlignment; }

// Fills the segments of `b`: [0, used) cut into `uploaders` aligned pieces, each turned into
// copies (runs of tensor bytes contiguous in both the host store and the slot).
void CutSegments(const std::vector<PlanTensor>& tensors, int uploaders, size_t bucket_index,
                 Bucket* b) {
  const uint64_t units = b->used_bytes / kSlotAlignment;
  // Cut points: cuts[u] is where uploader u's segment starts; cuts[uploaders] = used_bytes.
  std::vector<uint64_t> cuts(static_cast<size_t>(uploaders) + 1, 0);
  for (int u = 0; u < uploaders; ++u) {
    // Units split as evenly as possible; the (units % uploaders) spare units go to uploaders in
    // turn across buckets, starting after the previous bucket's, so no uploader gets all of them.
    uint64_t rank = (static_cast<uint64_t>(u) + uploaders - bucket_index % uploaders) % uploaders;
    uint64_t n = units / uploaders + (rank < units % uploaders ? 1 : 0);
    cuts[static_cast<size_t>(u) + 1] = cuts[static_cast<size_t>(u)] + n * kSlotAlignment;
  }
  // A cut inside a block row of a converted weight moves to the nearer edge of that block row.
  for (int u = 1; u < uploaders; ++u) {
    uint64_t& x = cuts[static_cast<size_t>(u)];
    for (const TensorPlacement& p : b->tensors) {
      const PlanTensor& t = tensors[static_cast<size_t>(p.tensor)];
      if (t.transform != Transform::kFp8Weight || x <= p.slot_offset ||
          x >= p.slot_offset + p.bytes) {
        continue;
      }
      // One block row (Fp8SplitUnit: 128 x cols, or all of a weight with fewer rows); pieces start
      // at multiples of it.
      const uint64_t unit = t.split_unit;
      const uint64_t rel = x - p.slot_offset;
      x = p.slot_offset + std::min(p.bytes, (rel + unit / 2) / unit * unit);
    }
    x = std::max(x, cuts[static_cast<size_t>(u) - 1]);
  }
  size_t t = 0;  // first placement that may overlap the current segment
  for (int u = 0; u < uploaders; ++u) {
    Segment s;
    s.uploader = u;
    const uint64_t start = cuts[static_cast<size_t>(u)];
    const uint64_t end = cuts[static_cast<size_t>(u) + 1];
    s.slot_offset = start;
    s.bytes = end - start;
    // Copies: the parts of tensors (not of alignment padding) inside [start, end).
    while (t < b->tensors.size() && b->tensors[t].slot_offset + b->tensors[t].bytes <= start) ++t;
    for (size_t k = t; k < b->tensors.size() && b->tensors[k].slot_offset < end; ++k) {
      const TensorPlacement& p = b->tensors[k];
      uint64_t lo = std::max(start, p.slot_offset);
      uint64_t hi = std::min(end, p.slot_offset + p.bytes);
      if (lo >= hi) continue;
      const PlanTensor& pt = tensors[static_cast<size_t>(p.tensor)];
      const uint64_t within = p.tensor_offset + (lo - p.slot_offset);  // byte of the tensor
      if (pt.transform == Transform::kFp8Weight) {
        // `within` starts a block row (pieces and cuts are at multiples of Fp8SplitUnit).
        Copy c;
        c.host_offset = pt.host_offset + 2 * within;
        c.slot_offset = lo;
        c.bytes = hi - lo;
        c.transform = Transform::kFp8Weight;
        c.cols = pt.cols;
        c.scale_offset = pt.scale_offset +
                         (within / pt.cols / kFp8Block) * Fp8ScaleBlocks(pt.cols) * sizeof(float);
        c.tensor = p.tensor;
        s.copies.push_back(c);
        continue;
      }
      if (pt.transform == Transform::kFp8Scale) {
        Copy c;
        c.host_offset = pt.host_offset + within;
        c.slot_offset = lo;
        c.bytes = hi - lo;
        c.transform = Transform::kFp8Scale;
        c.tensor = p.tensor;
        s.copies.push_back(c);
        continue;
      }
      const uint64_t host = pt.host_offset + within;
      // Tensors that follow each other without a gap both in the host store and in the slot (sizes
      // that are multiples of the alignment) become one copy: one cudaMemcpyAsync instead of one
      // per tensor, which matters for checkpoints of many small tensors.
      if (!s.copies.empty()) {
        Copy& last = s.copies.back();
        if (last.transform == Transform::kCopy && last.host_offset + last.bytes == host &&
            last.slot_offset + last.bytes == lo) {
          last.bytes += hi - lo;
          continue;
        }
      }
      Copy c;
      c.host_offset = host;
      c.slot_offset = lo;
      c.bytes = hi - lo;
      s.copies.push_back(c);
    }
    b->segments.push_back(std::move(s));
  }
}

}  // namespace

uint64_t SplitUnit(const std::vector<int64_t>& shape, uint64_t element_bytes, uint64_t bytes,
                   uint64_t bucket_bytes) {
  const uint64_t element = std::max<uint64_t>(1, element_bytes);
  if (shape.size() < 2 || shape[0] <= 0) return element;
  const uint64_t row = bytes / static_cast<uint64_t>(shape[0]);
  if (row == 0) return element;
  if (row <= bucket_bytes / kSplitRows) return row * kSplitRows;
  if (row <= bucket_bytes) return row;
  return element;
}

absl::StatusOr<UpdatePlan> PlanUpdate(const std::vector<PlanTensor>& tensors, uint64_t bucket_bytes,
                                      int uploaders) {
  if (uploaders < 1) return absl::InvalidArgumentError("an update needs at least one uploader GPU");
  if (bucket_bytes == 0 || bucket_bytes % kSlotAlignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bucket_bytes ", bucket_bytes, " must be a positive multiple of ", kSlotAlignment));
  }
  for (const PlanTensor& t : tensors) {
    if (t.transform != Transform::kFp8Weight) continue;
    if (t.cols == 0 || t.bytes % t.cols != 0 || t.split_unit != Fp8SplitUnit(t.bytes, t.cols) ||
        t.scale_offset % sizeof(float) != 0) {
      return absl::InternalError(
          absl::StrCat("converted tensor '", t.name, "' planned without its shape (a daemon bug)"));
    }
    if (t.split_unit > bucket_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.name, "': FP8 conversion quantizes 128 rows at once (", t.split_unit,
          " bytes in e4m3), more than a bucket of ", bucket_bytes, " (raise bucket_bytes)"));
    }
  }
  UpdatePlan plan;
  plan.bucket_bytes = bucket_bytes;
  plan.uploaders = uploaders;
  plan.upload_bytes.assign(uploaders, 0);
  Bucket current;
  uint32_t group = tensors.empty() ? 0 : tensors[0].group;
  for (int i = 0; i < static_cast<int>(tensors.size()); ++i) {
    const PlanTensor& t = tensors[i];
    if (t.group != group) {
      if (!current.tensors.empty()) plan.buckets.push_back(std::exchange(current, Bucket()));
      group = t.group;
    }
    if (AlignUp(t.bytes) > bucket_bytes) {
      // Pieces of `piece` bytes, each starting a bucket; the last stays open for what follows.
      const uint64_t unit = std::max<uint64_t>(1, t.split_unit);
      if (unit > bucket_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': split unit of ",
                                                       unit, " bytes is larger than a bucket of ",
                                                       bucket_bytes));
      }
      const uint64_t piece = bucket_bytes / unit * unit;
      for (uint64_t off = 0; off < t.bytes; off += piece) {
        if (!current.tensors.empty()) plan.buckets.push_back(std::exchange(current, Bucket()));
        const uint64_t n = std::min(piece, t.bytes - off);
        current.tensors.push_back({i, 0, n, off});
        current.used_bytes = AlignUp(n);
      }
      plan.total_tensor_bytes += t.bytes;
      continue;
    }
    uint64_t offset = current.used_bytes;
    if (offset + t.bytes > bucket_bytes) {
      plan.buckets.push_back(std::move(current));
      current = Bucket();
      offset = 0;
    }
    current.tensors.push_back({i, offset, t.bytes});
    current.used_bytes = AlignUp(offset + t.bytes);
    plan.total_tensor_bytes += t.bytes;
  }
  if (!current.tensors.empty()) plan.buckets.push_back(std::move(current));
  for (size_t i = 0; i < plan.buckets.size(); ++i) {
    Bucket& b = plan.buckets[i];
    CutSegments(tensors, uploaders, i, &b);
    for (const Segment& s : b.segments) {
      for (const Copy& c : s.copies) {
        plan.upload_bytes[s.uploader] +=
            c.transform == Transform::kFp8Weight ? 2 * c.bytes : c.bytes;
        plan.converts = plan.converts || c.transform != Transform::kCopy;
      }
    }
  }
  return plan;
}

}  // namespace ckpt::daemon
