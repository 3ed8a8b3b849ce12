// LoadFiles: the daemon reads safetensors files itself into one new version of the store.
#ifndef CKPT_DAEMON_FILE_LOADER_H_
#define CKPT_DAEMON_FILE_LOADER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/scoped_fd.h"
#include "daemon/version_store.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

// At most this many files in one LoadFiles, each path at most this long.
inline constexpr size_t kMaxLoadFiles = 4096;
inline constexpr size_t kMaxLoadPathBytes = 4096;

// INVALID_ARGUMENT unless there are 1..kMaxLoadFiles paths, each absolute, without a NUL byte and
// at most kMaxLoadPathBytes long.
absl::Status CheckLoadPaths(const std::vector<std::string>& paths);

// A file to load: its name (for errors and logs) and its open descriptor.
struct LoadFile {
  std::string path;
  ScopedFd fd;
};

// FAILED_PRECONDITION naming the file unless its descriptor is a regular file open for reading.
absl::Status CheckPassedFile(const LoadFile& file);

// Loads already open files (descriptors a local client passed, or ones LoadSafetensorsFiles
// opened): checks each (CheckPassedFile), parses every file's header, begins a version
// holding all their tensors for `client` (names must be unique across the files: INVALID_ARGUMENT
// naming both files otherwise), reads the data with `threads` parallel preads straight into the
// store while holding the version (VersionStore::WriteLease: an Abort or Drop meanwhile stops the
// reads and frees the memory only after them), and commits (checksums computed from what was
// read). Any failure aborts the version: nothing is left behind. The whole load must end by
// `deadline`. The paths must pass CheckLoadPaths.
absl::StatusOr<v1::VersionInfo> LoadSafetensorsFds(VersionStore& store, std::vector<LoadFile> files,
                                                   uint64_t version, const std::string& label,
                                                   const std::string& client, int threads,
                                                   absl::Time deadline);

// Checks the paths (CheckLoadPaths), opens each one only if it is a regular file (OpenRegularFile:
// a FIFO or device node is never opened for reading; `allowed_dirs` not empty: only below them,
// OpenRegularFileBeneath, for remote callers), then LoadSafetensorsFds.
absl::StatusOr<v1::VersionInfo> LoadSafetensorsFiles(
    VersionStore& store, const std::vector<std::string>& paths, uint64_t version,
    const std::string& label, const std::string& client, int threads, absl::Time deadline,
    const std::vector<std::string>& allowed_dirs = {});

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_FILE_LOADER_H_
