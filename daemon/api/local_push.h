// The daemon's side of Trainer.PushLocal (proto/trainer.proto, docs/local-push.md): the checks of
// a window a local trainer passed, and the parallel copy of its bytes into a staging version.
//
// A window is a memfd of the trainer's holding some tensors' bytes back to back. The daemon never
// maps it: it reads it with pread (a shared-memory read never blocks on a device or a FUSE server,
// and a read past what the trainer made returns an error, never SIGBUS) straight into the
// version's memory, which no trainer ever maps. So nothing a trainer does to its window (writing
// into it meanwhile, truncating it) can reach another version: at worst this push's bytes differ
// from the trainer's checksums and its commit is refused.
#ifndef CKPT_DAEMON_API_LOCAL_PUSH_H_
#define CKPT_DAEMON_API_LOCAL_PUSH_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/scoped_fd.h"
#include "daemon/store/version_store.h"
#include "proto/trainer.pb.h"

namespace ckpt::daemon {

// One part of a window: `bytes` bytes of tensor `tensor` (manifest order) at `offset` in it, at
// `window_offset` in the window.
struct WindowPart {
  uint32_t tensor = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint64_t window_offset = 0;
};

// At most this many parts in one window.
inline constexpr size_t kMaxWindowParts = 65536;

// The parts of `window`, checked against `manifest`: the three lists of one length 1..65536,
// every part at least one byte and inside its tensor, their sum without overflow. `*window_bytes`
// gets the sum. INVALID_ARGUMENT or OUT_OF_RANGE naming the part.
absl::StatusOr<std::vector<WindowPart>> WindowParts(const v1::LocalPushWindow& window,
                                                    const v1::Manifest& manifest,
                                                    uint64_t* window_bytes);

// FAILED_PRECONDITION unless `fd` is a memfd (shared memory: a regular file that takes seals, not
// on hugetlbfs) of at least `bytes` bytes.
absl::Status CheckWindowFd(int fd, uint64_t bytes);

// Copies every part from `fd` into `lease` with up to `threads` parallel preads of at most
// `piece_bytes` each, then marks the parts received. `cancelled` (may be empty) is polled between
// pieces: true stops the copy (CANCELLED). A short read (the trainer shrank its window) is
// FAILED_PRECONDITION naming the offset.
absl::Status CopyWindow(int fd, const std::vector<WindowPart>& parts,
                        VersionStore::WriteLease& lease, int threads, uint64_t piece_bytes,
                        const std::function<bool()>& cancelled);

// Checks that the parts of one window continue each tensor where the push left it: part k of
// tensor t must start at `next[t]` (the bytes of t received so far), and advances `next`. So every
// byte of a local push is written once, and a tensor whose last byte is in is final (it may be
// hashed at once). INVALID_ARGUMENT naming the part.
absl::Status CheckPartsInOrder(const std::vector<WindowPart>& parts, const v1::Manifest& manifest,
                               std::vector<uint64_t>& next);

// Hashes (XXH3-64) tensors of a version as they become final, on its own threads, while the push
// goes on: the commit then only waits for the last ones. Add() may be called from one thread;
// Finish() (once, after the last Add) waits for every tensor added, stops the threads, releases
// the lease and returns the checksums (index: manifest position; tensors never added hold 0). The
// destructor stops and joins.
class TensorHasher {
 public:
  // `lease` is kept open (the version's memory stays) until the hasher is destroyed.
  TensorHasher(std::unique_ptr<VersionStore::WriteLease> lease, int tensors, int threads);
  ~TensorHasher();
  TensorHasher(const TensorHasher&) = delete;
  TensorHasher& operator=(const TensorHasher&) = delete;

  void Add(int tensor, uint64_t bytes);
  std::vector<uint64_t> Finish();

 private:
  void Work();

  std::unique_ptr<VersionStore::WriteLease> lease_;
  absl::Mutex mu_;
  std::vector<std::pair<int, uint64_t>> queue_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  size_t done_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<uint64_t> sums_;
  std::vector<std::thread> pool_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_LOCAL_PUSH_H_
