// LoadFiles: the daemon reads safetensors files itself into one new version of the store.
#ifndef CKPT_DAEMON_STORE_FILE_LOADER_H_
#define CKPT_DAEMON_STORE_FILE_LOADER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/load_paths.h"
#include "common/scoped_fd.h"
#include "daemon/store/version_store.h"
#include "proto/common.pb.h"
#include "proto/trainer.pb.h"

namespace ckpt::daemon {

// At most this many files in one LoadFiles (after directories and indexes are expanded), each path
// at most this long (common/load_paths.h).
using ::ckpt::kMaxLoadFiles;
using ::ckpt::kMaxLoadPathBytes;

// INVALID_ARGUMENT unless there are 1..kMaxLoadFiles paths, each absolute, without a NUL byte and
// at most kMaxLoadPathBytes long.
absl::Status CheckLoadPaths(const std::vector<std::string>& paths);

// How far one load has come, for LoadFilesWithProgress. The load's threads count into it and never
// wait for whoever reports it: a reporter takes snapshots when it can, and what it missed in
// between is simply replaced by newer counts. The snapshot of each stage's beginning is kept for
// the reporter (a handful per load), so that every stage is reported even when the load is faster
// than the reporter. Thread-safe.
class LoadProgress {
 public:
  struct Snapshot {
    v1::LoadStage stage = v1::LOAD_STAGE_UNSPECIFIED;
    uint64_t files_total = 0;
    uint64_t headers_read = 0;
    uint64_t files_done = 0;
    uint64_t bytes_total = 0;
    uint64_t bytes_done = 0;
    bool operator==(const Snapshot& o) const {
      return stage == o.stage && files_total == o.files_total && headers_read == o.headers_read &&
             files_done == o.files_done && bytes_total == o.bytes_total &&
             bytes_done == o.bytes_done;
    }
    bool operator!=(const Snapshot& o) const { return !(*this == o); }
  };

  // The load's side. The totals are set before the stage that counts against them begins.
  void SetFilesTotal(uint64_t n) { files_total_.store(n); }
  void SetBytesTotal(uint64_t n) { bytes_total_.store(n); }
  void AddHeaderRead() { headers_read_.fetch_add(1); }
  void AddFileDone() { files_done_.fetch_add(1); }
  void AddBytes(uint64_t n) { bytes_done_.fetch_add(n); }
  // Begins `stage` (stages only move forward) and keeps its snapshot for the reporter.
  void EnterStage(v1::LoadStage stage) ABSL_LOCKS_EXCLUDED(mu_);
  // The load has ended, either way: Take returns at once from now on.
  void Finish() ABSL_LOCKS_EXCLUDED(mu_);

  Snapshot Current() const;
  // The reporter's side: waits up to `timeout` for a stage to begin or the load to end, then
  // returns the kept snapshots of the stages begun since the last call followed by the current
  // one. `*finished` tells whether the load has ended (the snapshots are complete then).
  std::vector<Snapshot> Take(absl::Duration timeout, bool* finished) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::atomic<int> stage_{v1::LOAD_STAGE_UNSPECIFIED};
  std::atomic<uint64_t> files_total_{0}, headers_read_{0}, files_done_{0}, bytes_total_{0},
      bytes_done_{0};
  mutable absl::Mutex mu_;
  std::vector<Snapshot> begun_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

// What a load may be watched and stopped by; every member may be empty.
struct LoadControl {
  // Counted into while the load runs (not Finish: the caller does that).
  LoadProgress* progress = nullptr;
  // Polled while the bytes are read; true: the load stops and is aborted (CANCELLED: the caller
  // went away).
  std::function<bool()> cancelled;
};

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
// `deadline`; `control.cancelled` returning true stops it (CANCELLED). The paths must pass
// CheckLoadPaths. Progress (control.progress): HEADERS (files_total set first), READING
// (bytes_total set first; files_done and bytes_done grow as pieces land), COMMITTING.
absl::StatusOr<v1::VersionInfo> LoadSafetensorsFds(VersionStore& store, std::vector<LoadFile> files,
                                                   uint64_t version, const std::string& label,
                                                   const std::string& client, int threads,
                                                   absl::Time deadline,
                                                   const LoadControl& control = {});

// Checks the paths (CheckLoadPaths), expands directories and index files (ExpandLoadPaths of
// common/load_paths.h; `allowed_dirs` not empty: every directory, index and shard looked at through
// OpenPathBeneath, for remote callers, so none may be or lead outside them), checks the expanded
// paths again, opens each one only if it is a regular file (OpenRegularFile: a FIFO or device node
// is never opened for reading; OpenRegularFileBeneath with `allowed_dirs`), then
// LoadSafetensorsFds.
absl::StatusOr<v1::VersionInfo> LoadSafetensorsFiles(
    VersionStore& store, const std::vector<std::string>& paths, uint64_t version,
    const std::string& label, const std::string& client, int threads, absl::Time deadline,
    const std::vector<std::string>& allowed_dirs = {}, const LoadControl& control = {});

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_STORE_FILE_LOADER_H_
