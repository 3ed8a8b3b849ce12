// Safetensors files, as the daemon's LoadFiles RPC reads them: the header is parsed and validated
// here, and the tensors' bytes are read with many threads straight into their destination (the
// pinned store), without a second copy.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N, N
// bytes of JSON (an object; the writer may pad it with spaces), then the data section. Each key of
// the object is a tensor name mapped to {"dtype", "shape", "data_offsets": [begin, end]}, offsets
// relative to the start of the data section; the optional key "__metadata__" maps to an object of
// strings.
#ifndef CKPT_DAEMON_STORE_SAFETENSORS_H_
#define CKPT_DAEMON_STORE_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/dtype.h"
#include "common/scoped_fd.h"

namespace ckpt::daemon {

// Headers longer than this are refused (safetensors itself refuses 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kUnspecified;
  std::vector<int64_t> shape;
  uint64_t file_offset = 0;  // absolute offset of the first byte in the file
  uint64_t byte_size = 0;    // product(shape) * DTypeSize(dtype); 0 for an empty tensor
};

struct SafetensorsFile {
  std::string path;
  uint64_t file_size = 0;
  uint64_t data_start = 0;  // 8 + header length
  // Ordered by file_offset, then size: empty tensors at an offset come before the tensor that
  // starts there, and keep the header's order among themselves. For
  // files written by the safetensors library this is also the header's order. The order does not
  // depend on how the JSON library stores objects, so it is deterministic.
  std::vector<SafetensorsEntry> tensors;
  // "__metadata__", in the header's order.
  std::vector<std::pair<std::string, std::string>> metadata;
};

// Parses and validates a header (the JSON text after the 8-byte length) of a file of `file_size`
// bytes; `path` is used only in messages. Never throws.
//
// Strictness follows the safetensors format as its reference implementation reads it (the Rust
// crate: UTF-8 JSON, offsets that pack the data section exactly) and is stricter where the format
// defines nothing:
// - accepted: dtypes spelled as safetensors spells them (BOOL, U8, I8, I16, I32, I64, F16, BF16,
//   F32, F64, F8_E4M3, F8_E5M2; exact case), empty tensors, no tensors at all, JSON whitespace
//   around the object (writers pad with spaces), "__metadata__" as an object of strings;
// - refused: text that is not UTF-8, a NUL byte anywhere, text before the object's '{', anything
//   after it but whitespace, nesting deeper than 8 levels (checked before parsing; a valid header
//   needs 3), a key other than dtype/shape/data_offsets in an entry, a byte of the data section
//   that belongs to no tensor (a gap), bytes after the last tensor, overlapping tensors.
//
// Errors are INVALID_ARGUMENT with a one-line message "safetensors file PATH: ..." that names the
// tensor where there is one (names escaped and cut): header not JSON or not an object, an entry
// that is not an object or lacks dtype/shape/data_offsets or has them with the wrong JSON type, an
// unknown dtype, offsets that are not [begin, end] with begin <= end, an end beyond the data
// section (out of range: a truncated file), a byte count that differs from product(shape) *
// element size, two tensors whose byte ranges overlap (both named), a gap or a tail (the bytes
// named), the same key twice, "__metadata__" not an object of strings, and every refusal above.
// No message quotes bytes of the file that are not part of a valid header's structure.
absl::StatusOr<SafetensorsFile> ParseSafetensorsHeader(absl::string_view header_json,
                                                       uint64_t file_size, const std::string& path);

// Opens `path` (OpenRegularFile: never a FIFO or device), reads the 8-byte little-endian length and
// the header, validates and parses (see ParseSafetensorsHeader). FAILED_PRECONDITION naming the
// path and strerror when the file cannot be opened or read or is not a regular file;
// INVALID_ARGUMENT when it is shorter than 8 bytes, its header length is over
// kMaxSafetensorsHeaderBytes or larger than the file, or the header is bad. A header length that
// cannot be one is reported as "not a safetensors file", with what the file looks like when its
// first bytes are a known signature ("it starts with '{': a JSON file, ...", a zip archive, a
// pickle, a Git LFS pointer, ...); the length itself and the file's bytes are never quoted (for a
// file that is not safetensors they are its first 8 bytes).
absl::StatusOr<SafetensorsFile> ReadSafetensorsHeader(const std::string& path);

// The same on an open descriptor (read with pread; its file position is unused). Lets a caller
// read the header and then the data from the same open file, so that a file replaced in between
// cannot mix two versions. `fd` stays owned by the caller.
absl::StatusOr<SafetensorsFile> ReadSafetensorsHeaderFd(int fd, const std::string& path);

struct ReadRange {
  int fd = -1;               // owned by the caller; read with pread only
  uint64_t file_offset = 0;  // absolute
  uint64_t size = 0;
  void* dest = nullptr;  // size bytes; may be null when size is 0
  std::string what;      // "file X tensor Y", for messages
};

// Copies every range into its destination: `threads` threads (the caller's included) pread pieces
// of at most `piece_bytes` straight into `dest`. Ranges are cut into pieces so that the threads
// balance: below 4 pieces per thread, pieces shrink (not under 1 MiB, or under piece_bytes when
// that is smaller). Ranges may share a file; destinations must not overlap.
//
// Errors (the first one wins; the other threads stop after their current piece):
// - INVALID_ARGUMENT: threads < 1, piece_bytes == 0, a bad fd, or a null dest with size > 0.
// - OUT_OF_RANGE "WHAT: unexpected end of file ...": the file is shorter than a range (truncated
//   after its header was parsed).
// - FAILED_PRECONDITION "WHAT: read failed at offset N: strerror".
// - DEADLINE_EXCEEDED: `deadline` passed before every byte was read. It is checked before each
//   piece, so a read may overrun it by one pread of a piece.
// - ABORTED: `keep_going` (when set; called before each piece, from any of the threads) returned
//   false.
// `on_read` (when set) is called after each piece is in, from the thread that read it, with the
// range's index in `ranges` and the piece's size; it must be quick and thread-safe.
// On failure the destinations hold an unspecified mix of old and new bytes. With no bytes to read
// it returns OK at once, whatever the deadline. Blocks until every thread it started has ended.
absl::Status ReadRangesParallel(const std::vector<ReadRange>& ranges, int threads,
                                absl::Time deadline, uint64_t piece_bytes = 16 << 20,
                                const std::function<bool()>& keep_going = nullptr,
                                const std::function<void(size_t, uint64_t)>& on_read = nullptr);

// Opens `path` for reading if, and only if, it is a regular file: it is first opened with O_PATH
// (which never blocks on a FIFO and never runs a device driver's open), checked with fstat, and
// only then reopened for reading through /proc/self/fd. FAILED_PRECONDITION naming the path:
// missing, not accessible, or "not a regular file".
absl::StatusOr<ScopedFd> OpenRegularFile(const std::string& path);

// OpenRegularFile for a caller that may only read under `dirs` (absolute, without a trailing
// slash): `path` must name something below one of them, and is resolved from that directory with
// openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), so neither ".." nor a symlink can leave it
// (symlinks that stay inside, like a Hugging Face cache's snapshots/ -> blobs/, are followed).
// PERMISSION_DENIED without touching the file system when `path` is not below any of `dirs`, and
// PERMISSION_DENIED when its resolution leaves the directory; otherwise as OpenRegularFile.
absl::StatusOr<ScopedFd> OpenRegularFileBeneath(const std::vector<std::string>& dirs,
                                                const std::string& path);

// The first half of OpenRegularFileBeneath: an O_PATH descriptor of whatever `path` resolves to
// below one of `dirs` (a directory too; `path` may be one of `dirs` itself), for looking at
// directories and indexes (common/load_paths.h's PathOpener). Same errors, without the
// regular-file check.
absl::StatusOr<ScopedFd> OpenPathBeneath(const std::vector<std::string>& dirs,
                                         const std::string& path);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_STORE_SAFETENSORS_H_
