#include "daemon/update/version_parts.h"

#include <algorithm>
#include <map>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/message_text.h"
#include "common/status_macros.h"
#include "daemon/store/manifest.h"

namespace ckpt::daemon {
namespace {

std::string Name(const std::string& name) { return QuoteForMessage(name, 128); }

std::string Member(const PartHolding& h) { return absl::StrCat("member '", h.member, "'"); }

// Up to `most` of `names`, then how many more.
std::string SomeNames(const std::vector<std::string>& names, size_t most) {
  std::vector<std::string> shown;
  for (size_t i = 0; i < names.size() && i < most; ++i) shown.push_back(Name(names[i]));
  std::string out = absl::StrJoin(shown, ", ");
  if (names.size() > most) absl::StrAppend(&out, " and ", names.size() - most, " more");
  return out;
}

}  // namespace

absl::StatusOr<ComposedVersion> ComposeParts(uint64_t version,
                                             const std::vector<PartHolding>& holdings) {
  const std::string what = absl::StrCat("version ", version);
  uint32_t count = 0;
  const PartHolding* counted = nullptr;
  std::vector<int> wholes;  // usable holdings of the version whole (a host copy, a pull)
  for (const PartHolding& h : holdings) {
    if (h.tensor_part.size() != static_cast<size_t>(h.manifest.tensors_size())) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", Member(h), " lists a part for ",
                                                     h.tensor_part.size(), " of its ",
                                                     h.manifest.tensors_size(), " tensors"));
    }
    for (uint32_t p : h.tensor_part) {
      if (h.part_count == 0 ? p != 0 : !std::binary_search(h.parts.begin(), h.parts.end(), p)) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": ", Member(h),
                                                       " lists a tensor of part ", p,
                                                       ", which is not among the parts it holds"));
      }
    }
    if (!h.usable) continue;
    if (h.part_count == 0) {
      wholes.push_back(static_cast<int>(&h - holdings.data()));  // checked against the others below
      continue;
    }
    if (counted != nullptr && h.part_count != count) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": ", Member(*counted), " holds it as ", count, " parts and ",
                       Member(h), " as ", h.part_count, " (the trainers disagree)"));
    }
    count = h.part_count;
    counted = &h;
  }
  // Holdings of the whole version: each must hold exactly the tensors the version has; each is
  // then a holder of every tensor.
  auto add_wholes = [&](ComposedVersion& out) -> absl::Status {
    std::unordered_map<std::string, int> index;
    for (int t = 0; t < out.manifest.tensors_size(); ++t) index[out.manifest.tensors(t).name()] = t;
    for (int k : wholes) {
      const PartHolding& h = holdings[static_cast<size_t>(k)];
      bool same = h.manifest.tensors_size() == out.manifest.tensors_size();
      std::string which;
      for (int i = 0; same && i < h.manifest.tensors_size(); ++i) {
        auto it = index.find(h.manifest.tensors(i).name());
        same = it != index.end() &&
               SameTensor(out.manifest.tensors(it->second), h.manifest.tensors(i));
        if (!same) which = h.manifest.tensors(i).name();
      }
      if (!same) {
        return absl::FailedPreconditionError(absl::StrCat(
            what, " is held whole by ", Member(h), " with other tensors than its parts",
            which.empty() ? std::string(" (another count)") : absl::StrCat(" (", Name(which), ")"),
            ": drop it on one of them"));
      }
      for (auto& holders : out.holders) holders.push_back(k);
    }
    return absl::OkStatus();
  };
  // Only whole holdings, or parts missing where a whole holding has them all: the version as the
  // first whole holding has it (one group), its tensors also uploadable by the members holding
  // parts of them.
  auto from_whole = [&]() -> absl::StatusOr<ComposedVersion> {
    const PartHolding& w = holdings[static_cast<size_t>(wholes.front())];
    ComposedVersion out;
    out.manifest = w.manifest;
    out.tensor_part.assign(static_cast<size_t>(w.manifest.tensors_size()), 0);
    out.holders.resize(static_cast<size_t>(w.manifest.tensors_size()));
    std::unordered_map<std::string, int> index;
    for (int t = 0; t < w.manifest.tensors_size(); ++t) index[w.manifest.tensors(t).name()] = t;
    for (size_t k = 0; k < holdings.size(); ++k) {
      const PartHolding& h = holdings[k];
      if (!h.usable || h.part_count == 0) continue;
      for (const v1::TensorSpec& t : h.manifest.tensors()) {
        auto it = index.find(t.name());
        if (it == index.end() || !SameTensor(out.manifest.tensors(it->second), t)) {
          return absl::FailedPreconditionError(
              absl::StrCat(what, ": tensor ", Name(t.name()), " of ", Member(h),
                           "'s parts is not in it as ", Member(w), " holds it whole"));
        }
        out.holders[static_cast<size_t>(it->second)].push_back(static_cast<int>(k));
      }
    }
    RETURN_IF_ERROR(add_wholes(out));
    return out;
  };
  if (counted == nullptr) {
    if (!wholes.empty()) return from_whole();
    return absl::FailedPreconditionError(
        absl::StrCat("no member that takes part holds any part of ", what));
  }

  // The parts no usable member holds, with what the others last showed of them.
  std::vector<std::string> missing;
  for (uint32_t p = 0; p < count; ++p) {
    bool held = false;
    for (const PartHolding& h : holdings) {
      held = held || (h.usable && std::binary_search(h.parts.begin(), h.parts.end(), p));
    }
    if (held) continue;
    std::string where;
    for (const PartHolding& h : holdings) {
      if (h.usable || !std::binary_search(h.parts.begin(), h.parts.end(), p)) continue;
      std::vector<std::string> names;
      for (int i = 0; i < h.manifest.tensors_size(); ++i) {
        if (h.tensor_part[static_cast<size_t>(i)] == p)
          names.push_back(h.manifest.tensors(i).name());
      }
      where = absl::StrCat(": its ", names.size(), " tensors (", SomeNames(names, 8), ") were on ",
                           Member(h), ", now ", h.state);
      break;
    }
    if (where.empty()) where = ": no member was seen holding it";
    missing.push_back(absl::StrCat("part ", p, where));
  }
  if (!missing.empty() && !wholes.empty()) return from_whole();
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " is pushed in ", count, " parts and ", missing.size() == 1 ? "one is" : "some are",
        " held by no member that is up: ", absl::StrJoin(missing, "; "),
        " (push the missing parts to any member, or bring their member back)"));
  }

  ComposedVersion out;
  std::unordered_map<std::string, int> index;  // name -> position in out.manifest
  std::vector<int> first_holder;               // per tensor: the holding it was taken from
  for (uint32_t p = 0; p < count; ++p) {
    int source = -1;
    for (size_t k = 0; k < holdings.size() && source < 0; ++k) {
      const PartHolding& h = holdings[k];
      if (h.usable && std::binary_search(h.parts.begin(), h.parts.end(), p)) {
        source = static_cast<int>(k);
      }
    }
    const PartHolding& h = holdings[static_cast<size_t>(source)];
    for (int i = 0; i < h.manifest.tensors_size(); ++i) {
      if (h.tensor_part[static_cast<size_t>(i)] != p) continue;
      const v1::TensorSpec& t = h.manifest.tensors(i);
      if (index.count(t.name()) != 0) continue;  // replicated into a lower part
      index[t.name()] = out.manifest.tensors_size();
      *out.manifest.add_tensors() = t;
      out.tensor_part.push_back(p);
      first_holder.push_back(source);
    }
  }
  out.holders.resize(static_cast<size_t>(out.manifest.tensors_size()));
  // Every usable holding against the composed version: the same bytes for every name, and every
  // tensor of a part it holds.
  for (size_t k = 0; k < holdings.size(); ++k) {
    const PartHolding& h = holdings[k];
    if (!h.usable || h.part_count == 0) continue;  // whole holdings: add_wholes
    std::unordered_map<std::string, int> mine;
    for (int i = 0; i < h.manifest.tensors_size(); ++i) {
      const v1::TensorSpec& t = h.manifest.tensors(i);
      mine[t.name()] = i;
      auto it = index.find(t.name());
      if (it == index.end()) {
        // Another member holds this tensor's part without it.
        const uint32_t p = h.tensor_part[static_cast<size_t>(i)];
        return absl::FailedPreconditionError(
            absl::StrCat(what, ": part ", p, " differs between members: tensor ", Name(t.name()),
                         " is in it on ", Member(h),
                         " but not on the member its other tensors came from (two trainers pushed "
                         "part ",
                         p, " with other tensors?): drop the version on one of them"));
      }
      const v1::TensorSpec& composed = out.manifest.tensors(it->second);
      if (!SameTensor(composed, t)) {
        const PartHolding& other = holdings[static_cast<size_t>(first_holder[it->second])];
        return absl::FailedPreconditionError(absl::StrCat(
            what, ": tensor ", Name(t.name()), " differs between ", Member(other), " (xxh3 ",
            absl::Hex(composed.xxh3(), absl::kZeroPad16), ", part ",
            out.tensor_part[static_cast<size_t>(it->second)], ") and ", Member(h), " (xxh3 ",
            absl::Hex(t.xxh3(), absl::kZeroPad16), ", part ", h.tensor_part[static_cast<size_t>(i)],
            "): two trainers pushed other weights under one id; drop it on one member and push "
            "that part again (to another member: ids must increase on each)"));
      }
      out.holders[static_cast<size_t>(it->second)].push_back(static_cast<int>(k));
    }
    // A part it holds must have all of that part's tensors here too.
    for (int t = 0; t < out.manifest.tensors_size(); ++t) {
      const uint32_t p = out.tensor_part[static_cast<size_t>(t)];
      if (!std::binary_search(h.parts.begin(), h.parts.end(), p)) continue;
      if (mine.count(out.manifest.tensors(t).name()) != 0) continue;
      const PartHolding& other = holdings[static_cast<size_t>(first_holder[t])];
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": part ", p, " differs between members: tensor ",
                       Name(out.manifest.tensors(t).name()), " is in it on ", Member(other),
                       " but not on ", Member(h), " (two trainers pushed part ", p,
                       " with other tensors?): drop the version on one of them"));
    }
  }
  RETURN_IF_ERROR(add_wholes(out));
  return out;
}

}  // namespace ckpt::daemon
