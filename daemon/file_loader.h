// LoadFiles: the daemon reads safetensors files itself into one new version of the store.
#ifndef CKPT_DAEMON_FILE_LOADER_H_
#define CKPT_DAEMON_FILE_LOADER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/version_store.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

// Parses every file's header, begins a version holding all their tensors (names must be unique
// across the files: INVALID_ARGUMENT naming both files otherwise), reads the data with `threads`
// parallel preads straight into the store, and commits (checksums computed from what was read).
// Any failure aborts the version: nothing is left behind. The whole load must end by `deadline`.
absl::StatusOr<v1::VersionInfo> LoadSafetensorsFiles(VersionStore& store,
                                                     const std::vector<std::string>& paths,
                                                     uint64_t version, const std::string& label,
                                                     int threads, absl::Time deadline);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_FILE_LOADER_H_
