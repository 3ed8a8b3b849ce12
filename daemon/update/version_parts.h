// Versions pushed in parts across a cluster (docs/cluster.md, "Versions in parts"): what the
// coordinator of an update knows of each member's parts, and the version they make together.
//
// Trainer rank r of N pushes the whole tensors it owns as part r of N under one version id, to the
// daemon of its choice; a member's store merges the parts it holds (VersionStore). A cluster update
// needs every part 0..N-1 held by a member that takes part, and every tensor name held with the
// same dtype, shape and checksum wherever it is held (a tensor replicated over ranks is in several
// parts). ComposeParts checks both and builds the version's manifest: by part, each part's tensors
// in its own order, a replicated tensor once (in its lowest part), so that every coordinator
// composes the same manifest from the same parts.
#ifndef CKPT_DAEMON_UPDATE_VERSION_PARTS_H_
#define CKPT_DAEMON_UPDATE_VERSION_PARTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

// What one member holds (or held, when last seen) of a version pushed in parts.
struct PartHolding {
  std::string member;    // node_name
  std::string instance;  // its process (Hello), when known
  // "self" or "up" (it can take part: `usable`), or what it was when last seen ("unreachable",
  // "left", ...): its tensors name what is missing.
  std::string state;
  bool usable = false;
  uint32_t part_count = 0;
  std::vector<uint32_t> parts;  // ascending
  // Its tensors (of every part it holds), with checksums, and each one's part.
  v1::Manifest manifest;
  std::vector<uint32_t> tensor_part;
};

struct ComposedVersion {
  v1::Manifest manifest;
  std::vector<uint32_t> tensor_part;  // per tensor of `manifest`
  // Per tensor: the usable holdings (indices into ComposeParts' input) that hold it.
  std::vector<std::vector<int>> holders;
};

// The version `version` that the usable holdings make together. FAILED_PRECONDITION, naming
// members and tensors: holdings that disagree on the part count; a part no usable member holds
// (with its tensors and where they were, when a holding that is not usable lists them); a tensor
// held with another dtype, shape or checksum by two members; a part two members hold with other
// tensors. INVALID_ARGUMENT for a holding that is not well-formed (tensor_part's length, a part
// not in `parts`).
absl::StatusOr<ComposedVersion> ComposeParts(uint64_t version,
                                             const std::vector<PartHolding>& holdings);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_VERSION_PARTS_H_
