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
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
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

// At most this many parts in one window (as in a chunk).
inline constexpr size_t kMaxWindowParts = VersionStore::kMaxChunkParts;

// The parts of `window`, checked against `manifest`: the three lists of one length 1..65536,
// every part as VersionStore::CheckPart checks a chunk's, their sum without overflow.
// `*window_bytes` gets the sum. INVALID_ARGUMENT or OUT_OF_RANGE naming the part.
absl::StatusOr<std::vector<WindowPart>> WindowParts(const v1::LocalPushWindow& window,
                                                    const v1::Manifest& manifest,
                                                    uint64_t* window_bytes);

// FAILED_PRECONDITION unless `fd` is a memfd (shared memory: a regular file that takes seals, not
// on hugetlbfs) of at least `bytes` bytes.
absl::Status CheckWindowFd(int fd, uint64_t bytes);

// Checks that the parts of one window continue each tensor where the push left it: part k of
// tensor t must start at `next[t]` (the bytes of t received so far), and advances `next`. So every
// byte of a local push is written once, and a tensor whose last byte is in is final (it may be
// hashed at once). INVALID_ARGUMENT naming the part.
absl::Status CheckPartsInOrder(const std::vector<WindowPart>& parts, const v1::Manifest& manifest,
                               std::vector<uint64_t>& next);

// The tensors a window says it ends (LocalPushWindow.ended_tensor, ended_xxh3), checked against
// `manifest` before the window is copied: two lists of one length, at most kMaxWindowParts, every
// index in the manifest. INVALID_ARGUMENT naming the entry.
absl::Status CheckEndedShape(const v1::LocalPushWindow& window, const v1::Manifest& manifest);

class LocalPushCopier;
// After the window is in: every tensor it says it ends must be final in `copier` (all its bytes
// in, none by an ipc step; INVALID_ARGUMENT) with the trainer's checksum (FAILED_PRECONDITION
// naming the tensor and both values otherwise). `verified` (may be empty) is called for each, in
// order, once all of them passed.
absl::Status VerifyEnded(const v1::LocalPushWindow& window, const v1::Manifest& manifest,
                         const LocalPushCopier& copier,
                         const std::function<void(uint32_t tensor, uint64_t xxh3)>& verified);

// At most this many GPUs in LocalPushBegin.ipc_gpus, and tensors in one ipc step.
inline constexpr size_t kMaxIpcGpus = 64;
inline constexpr size_t kMaxIpcTensors = 65536;

// One tensor of an ipc step, checked: `bytes` (the manifest's byte_size, at least 1) at `offset`
// of the allocation `handle` (64 bytes) on this process's CUDA ordinal `device`.
struct IpcPart {
  uint32_t tensor = 0;
  int device = -1;
  std::string handle;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

// The tensors of `ipc`, checked against `manifest` and `accepted` (the GPUs the push may use, by
// UUID, with this process's ordinal): 1..kMaxIpcTensors tensors, each in the manifest with at
// least one byte, on an accepted GPU, with a 64-byte handle, offset + bytes below 2^64.
// INVALID_ARGUMENT naming the tensor. (Whether each is sent once is LocalPushCopier::ClaimWhole's
// check; whether it lies inside its allocation, GpuIngest's.)
absl::StatusOr<std::vector<IpcPart>> IpcParts(const v1::LocalPushIpc& ipc,
                                              const v1::Manifest& manifest,
                                              const std::map<std::string, int>& accepted);

// The copy of one local push's windows into its version, hashing each tensor as its bytes land.
//
// Each tensor's bytes come once and in order across windows (CheckPartsInOrder), so one task
// streams a tensor's part: it preads a piece of the window straight into the version and hashes
// that piece from cache (XXH3-64, a state per tensor kept from window to window) before the next.
// The parts of different tensors are copied by up to `threads` threads at once. So every byte is
// read from the window and written to the store once and never read again to be hashed: the
// checksums of the version's bytes are known when the last window is in. Only this copier writes
// into the version (no other process maps it), so they are the checksums of what is stored.
class LocalPushCopier {
 public:
  // Tensors partly in at once (a client streams a few: one per lane).
  static constexpr size_t kMaxOpenTensors = 4096;

  explicit LocalPushCopier(const v1::Manifest& manifest);
  ~LocalPushCopier();
  LocalPushCopier(const LocalPushCopier&) = delete;
  LocalPushCopier& operator=(const LocalPushCopier&) = delete;

  // Checks `parts` (CheckPartsInOrder; at most kMaxOpenTensors tensors partly in), then copies
  // every part from `fd` into `lease` with up to `threads` threads and preads of at most
  // `piece_bytes`, hashing as it goes, and marks the parts received. `cancelled` (may be empty) is
  // polled between pieces: true stops the copy (CANCELLED). A short read (the trainer shrank its
  // window) is FAILED_PRECONDITION naming the offset. After an error the copier must not be used
  // again (the push is aborted).
  absl::Status CopyWindow(int fd, const std::vector<WindowPart>& parts,
                          VersionStore::WriteLease& lease, int threads, uint64_t piece_bytes,
                          const std::function<bool()>& cancelled);

  // Claims whole tensors that another path copies into the version (the GPU copy of an ipc
  // step): each must be in the manifest, have at least one byte, none of them in yet, and appear
  // once. INVALID_ARGUMENT naming the tensor; nothing is claimed then. Windows may not carry a
  // claimed tensor's bytes afterwards.
  // `step` names the step in errors ("ipc", "pull").
  absl::Status ClaimWhole(const std::vector<uint32_t>& tensors, const char* step = "ipc");
  // A claimed tensor is in: its XXH3-64 of the bytes written.
  void CompleteClaimed(uint32_t tensor, uint64_t xxh3);
  // Whether tensor t was claimed (its checksum is the daemon's own: the trainer has none).
  bool Claimed(uint32_t t) const { return claimed_tensor_[t]; }

  // Whether every byte of tensor t came in windows (not claimed), so that Checksums()[t] is the
  // XXH3-64 of its stored bytes. False for an index past the manifest.
  bool Final(uint32_t t) const;

  // True once every byte of every tensor is in; Checksums() then holds each tensor's XXH3-64 of
  // the bytes written (empty tensors included).
  bool Complete() const;
  const std::vector<uint64_t>& Checksums() const { return sums_; }

 private:
  struct State;
  const v1::Manifest& manifest_;
  std::vector<uint64_t> next_;  // bytes of each tensor in so far
  std::vector<uint64_t> sums_;
  size_t claimed_ = 0;  // tensors claimed whose checksum has not come yet
  std::vector<bool> claimed_tensor_;
  std::map<uint32_t, std::unique_ptr<State>> open_;  // tensors partly in
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_LOCAL_PUSH_H_
