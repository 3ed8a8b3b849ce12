// What a LoadFiles path may name besides a safetensors file: a directory of them, or a Hugging Face
// sharded-checkpoint index (model.safetensors.index.json), both expanded here to the safetensors
// files they stand for. One implementation for both sides: the trainer client expands on the Unix
// socket (where it opens the files itself and passes their descriptors), the daemon for TCP
// callers (where it opens paths itself, only under load_files_dirs: every look at the file system
// goes through the caller's PathOpener, so the daemon's no-escape resolution applies to the
// directory, the index and each shard alike).
#ifndef CKPT_COMMON_LOAD_PATHS_H_
#define CKPT_COMMON_LOAD_PATHS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/scoped_fd.h"

namespace ckpt {

// At most this many files in one LoadFiles (after expansion), each path at most this long.
inline constexpr size_t kMaxLoadFiles = 4096;
inline constexpr size_t kMaxLoadPathBytes = 4096;
// Index files are small (a few hundred KiB for the largest models); larger ones are refused.
inline constexpr uint64_t kMaxIndexFileBytes = uint64_t{64} << 20;
// The index a directory is loaded by when it has one.
inline constexpr char kDefaultIndexName[] = "model.safetensors.index.json";

// True when the last component of `path` ends in ".index.json": such a file is read as an index,
// never as safetensors.
bool IsIndexFileName(absl::string_view path);

// The shard file names of an index (its JSON text): the values of its "weight_map" object,
// deduplicated and sorted. `index_path` is used only in messages. Never throws.
// INVALID_ARGUMENT "safetensors index PATH: ...": not JSON, not an object, nesting deeper than 8
// levels, no "weight_map" or one that is not an object of strings, an empty weight_map, or a shard
// name that is not a plain file name ending in ".safetensors" (empty, with '/', "..", or a NUL
// byte), naming the tensor that maps to it.
absl::StatusOr<std::vector<std::string>> ParseIndexShards(absl::string_view json,
                                                          const std::string& index_path);

// Opens `path` without reading it: an O_PATH descriptor (which never blocks on a FIFO and never
// runs a device driver's open), following symlinks as far as the caller allows.
using PathOpener = std::function<absl::StatusOr<ScopedFd>(const std::string& path)>;

// PathOpener for a caller that may look anywhere it has permission to: open(O_PATH). Errors name
// the path: NOT_FOUND (ENOENT), PERMISSION_DENIED (EACCES, EPERM), else FAILED_PRECONDITION.
absl::StatusOr<ScopedFd> OpenPath(const std::string& path);

// Expands the absolute `paths` of a LoadFiles, each in its place:
// - a directory: when it holds kDefaultIndexName, or else exactly one "*.safetensors.index.json",
//   the shards that index names (as for an index file below); otherwise every "*.safetensors" file
//   directly in it, sorted by name (names starting with '.' are skipped). FAILED_PRECONDITION
//   naming the directory when it has neither; INVALID_ARGUMENT naming them when it has several
//   indexes and none is kDefaultIndexName.
// - a file whose name ends in ".index.json" (IsIndexFileName): the shards it names
//   (ParseIndexShards), each in the index's directory (the one `path` names, not where a symlink
//   to the index leads). The index must be a regular file of at most kMaxIndexFileBytes.
// - anything else: itself (the loader opens it and checks that it is a regular safetensors file).
// Every shard found through a directory or an index must be a regular file (symlinks followed,
// as `open_path` allows): errors name the shard, and the index that named it; the opener's code
// is kept (e.g. NOT_FOUND for a missing shard, PERMISSION_DENIED outside load_files_dirs).
// Trailing slashes of a directory are dropped. INVALID_ARGUMENT when the result has more than
// `max_files` paths. Every access to the file system goes through `open_path` (and the descriptors
// it returns); nothing is left open.
absl::StatusOr<std::vector<std::string>> ExpandLoadPaths(const std::vector<std::string>& paths,
                                                         const PathOpener& open_path,
                                                         size_t max_files = kMaxLoadFiles);

}  // namespace ckpt

#endif  // CKPT_COMMON_LOAD_PATHS_H_
