#include "daemon/update/conversion.h"

#include <fnmatch.h>

#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/fp8_block.h"
#include "common/message_text.h"

namespace ckpt::daemon {
namespace {

bool Matches(const std::vector<std::string>& patterns, const std::string& name) {
  for (const std::string& p : patterns) {
    if (::fnmatch(p.c_str(), name.c_str(), 0) == 0) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<Conversion> ConvertManifest(const v1::Manifest& manifest, const Fp8Rules& rules) {
  for (const auto* list : {&rules.include, &rules.exclude}) {
    for (const std::string& p : *list) {
      if (p.empty() || p.size() > 1024) {
        return absl::InvalidArgumentError(
            absl::StrCat("an FP8 name pattern of ", p.size(), " characters (1..1024)"));
      }
    }
  }
  std::unordered_set<std::string> names;
  for (const v1::TensorSpec& t : manifest.tensors()) names.insert(t.name());
  Conversion c;
  for (int i = 0; i < manifest.tensors_size(); ++i) {
    const v1::TensorSpec& t = manifest.tensors(i);
    const bool wanted = Matches(rules.include, t.name()) && !Matches(rules.exclude, t.name());
    const bool convertible = static_cast<DType>(t.dtype()) == DType::kBfloat16 &&
                             t.shape_size() == 2 && t.shape(0) > 0 && t.shape(1) > 0;
    if (!wanted || !convertible) {
      c.skipped += wanted ? 1 : 0;
      *c.manifest.add_tensors() = t;
      c.sources.push_back({i, Transform::kCopy, 0, 0});
      continue;
    }
    const uint64_t rows = static_cast<uint64_t>(t.shape(0));
    const uint64_t cols = static_cast<uint64_t>(t.shape(1));
    const std::string scale_name = t.name() + "_scale_inv";
    if (names.count(scale_name) > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "FP8 conversion of ", QuoteForMessage(t.name(), 128), " would add ",
          QuoteForMessage(scale_name, 128),
          ", a tensor of the version already (is it FP8 already? exclude it with fp8_exclude)"));
    }
    v1::TensorSpec* w = c.manifest.add_tensors();
    w->set_name(t.name());
    w->set_dtype(static_cast<v1::DType>(DType::kFloat8E4m3fn));
    *w->mutable_shape() = t.shape();
    w->set_byte_size(rows * cols);
    // The converted bytes' checksum is not known before they are made: 0 (workers skip it).
    w->set_xxh3(0);
    const uint64_t row_blocks = Fp8ScaleBlocks(rows), col_blocks = Fp8ScaleBlocks(cols);
    v1::TensorSpec* s = c.manifest.add_tensors();
    s->set_name(scale_name);
    s->set_dtype(static_cast<v1::DType>(DType::kFloat32));
    s->add_shape(static_cast<int64_t>(row_blocks));
    s->add_shape(static_cast<int64_t>(col_blocks));
    s->set_byte_size(row_blocks * col_blocks * sizeof(float));
    s->set_xxh3(0);
    c.sources.push_back({i, Transform::kFp8Weight, cols, c.scale_bytes});
    c.sources.push_back({i, Transform::kFp8Scale, 0, c.scale_bytes});
    c.scale_bytes += s->byte_size();
    c.converted += 1;
    c.source_bytes += t.byte_size();
    c.converted_bytes += w->byte_size() + s->byte_size();
  }
  return c;
}

std::vector<PlanTensor> ConvertedPlanTensors(const Conversion& conversion,
                                             const std::function<uint64_t(int)>& host_offset,
                                             uint64_t bucket_bytes) {
  std::vector<PlanTensor> out;
  out.reserve(conversion.sources.size());
  for (size_t i = 0; i < conversion.sources.size(); ++i) {
    const v1::TensorSpec& spec = conversion.manifest.tensors(static_cast<int>(i));
    const Conversion::Source& src = conversion.sources[i];
    PlanTensor t;
    t.name = spec.name();
    t.bytes = spec.byte_size();
    t.transform = src.transform;
    const std::vector<int64_t> shape(spec.shape().begin(), spec.shape().end());
    switch (src.transform) {
      case Transform::kCopy:
        t.host_offset = host_offset ? host_offset(src.tensor) : 0;
        t.split_unit = SplitUnit(
            shape, static_cast<uint64_t>(std::max(1, DTypeSize(static_cast<DType>(spec.dtype())))),
            spec.byte_size(), bucket_bytes);
        break;
      case Transform::kFp8Weight:
        t.host_offset = host_offset ? host_offset(src.tensor) : 0;
        t.cols = src.cols;
        t.split_unit = Fp8SplitUnit(spec.byte_size(), src.cols);
        t.scale_offset = src.scale_offset;
        break;
      case Transform::kFp8Scale:
        t.host_offset = src.scale_offset;
        t.split_unit = sizeof(float);
        break;
    }
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace ckpt::daemon
