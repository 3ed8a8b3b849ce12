// IdLedger: what the daemon remembers of version ids across restarts (config key state_dir).
//
// The store's versions live in memory only, so a restart forgets them; the ledger keeps, in one
// small file (`<state_dir>/version-ids.json`), the automatic ids reserved so far (blocks of
// kReserve; the highest named id ever committed raises it too) and a digest of
// the last 1024 committed versions (their tensor names, dtypes, shapes and XXH3-64s). With it:
// - automatic ids continue above every id used before, so "version 12" never names two
//   checkpoints (without a state_dir they start again at 1 after a restart);
// - a trainer that names its own ids (e.g. its RL step) may push an id again after a restart,
//   which is how it recovers what the restart lost, but only with the same weights: an id that
//   was committed with another digest is refused (at BeginVersion when the manifest carries
//   checksums, else at Commit).
//
// The file is written atomically (a temporary file, fsync, rename, fsync of the directory) before
// an id outside the reservation is handed out; a failure refuses the Begin (UNAVAILABLE), so an id
// is never used without being recorded. The write happens under the store's lock once per block
// (and the digest of every commit outside it): a slow state_dir disk slows those Begins. Reading is
// bounded (64 KiB at most, a regular file, strict JSON): a damaged file stops the daemon at start
// with a message naming it.
//
// Thread-safety: every method may be called from any thread.
#ifndef CKPT_DAEMON_STORE_ID_LEDGER_H_
#define CKPT_DAEMON_STORE_ID_LEDGER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

class IdLedger {
 public:
  static constexpr const char* kFileName = "version-ids.json";
  static constexpr size_t kMaxCommitted = 1024;

  // Opens (or creates) the ledger in `dir`, which must exist and be a directory the daemon can
  // write. Errors name the file: FAILED_PRECONDITION (not a directory, damaged or foreign file),
  // the errno's code otherwise.
  static absl::StatusOr<std::unique_ptr<IdLedger>> Open(const std::string& dir);

  const std::string& path() const { return path_; }
  // Automatic ids are reserved in blocks of this many (one file write per block).
  static constexpr uint64_t kReserve = 64;
  // Ids up to this may have been handed out (0: none): the reservation, raised by RecordBegun and
  // RecordCommitted.
  uint64_t max_id() const;
  // max_id() as the file said when opened: automatic ids of this run start above it.
  uint64_t floor() const;
  // Makes sure `id` is covered by the reservation (writes the file when it was not).
  absl::Status RecordBegun(uint64_t id);
  // Records `id` as committed with `digest` and writes the file.
  absl::Status RecordCommitted(uint64_t id, uint64_t digest);
  // The digest `id` was committed with, if it is among the last kMaxCommitted.
  std::optional<uint64_t> CommittedDigest(uint64_t id) const;

  // The digest of a version's contents: names, dtypes, shapes and XXH3-64s of every tensor.
  static uint64_t Digest(const v1::Manifest& manifest);

 private:
  IdLedger(std::string dir, std::string path) : dir_(std::move(dir)), path_(std::move(path)) {}
  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Write() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  const std::string path_;
  mutable absl::Mutex mu_;
  uint64_t max_id_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t floor_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, uint64_t> committed_ ABSL_GUARDED_BY(mu_);  // id -> digest
  std::deque<uint64_t> order_ ABSL_GUARDED_BY(mu_);              // commit order, oldest first
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_STORE_ID_LEDGER_H_
