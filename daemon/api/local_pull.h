// The daemon's side of a local push's pull steps (Trainer.PushLocal's LocalPushPull,
// docs/local-push.md): the host tensors of a trainer on this node read straight out of the
// trainer's memory with process_vm_readv, one copy into the version, each piece hashed as it lands.
//
// Whose memory: the process that opened the push's stream (its SO_PEERCRED pid). The daemon pulls
// only where it has no more rights over that process than the caller has (MayPull: the same uid
// and no CAP_SYS_PTRACE, or root and root), so the kernel's check of every read
// (PTRACE_MODE_ATTACH: same uids, dumpable, Yama's ptrace_scope) is the one the caller itself would
// face: a trainer can have the daemon read only what it could read itself. On top, a pidfd taken at
// begin pins the process (after every tensor the daemon checks it is still alive: a pid is reused
// only once its process exited and was reaped), and every step first reads, at the address the
// trainer names, the nonce the daemon chose at begin, so that the stream's driver proves it is that
// process.
//
// Thread-safety: TrainerMemory's methods may be called from any thread.
#ifndef CKPT_DAEMON_API_LOCAL_PULL_H_
#define CKPT_DAEMON_API_LOCAL_PULL_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/trainer.pb.h"

namespace ckpt::daemon {

class TrainerMemory {
 public:
  // The memory of process `pid` (a pidfd on it). FAILED_PRECONDITION when this kernel has no
  // pidfd_open (Linux before 5.3) or the process is gone.
  static absl::StatusOr<std::unique_ptr<TrainerMemory>> Open(pid_t pid);
  ~TrainerMemory();
  TrainerMemory(const TrainerMemory&) = delete;
  TrainerMemory& operator=(const TrainerMemory&) = delete;

  pid_t pid() const { return pid_; }
  // OK while the process lives; ABORTED once it exited.
  absl::Status Alive() const;
  // Reads `n` bytes at `address` of its memory into `dst`. INVALID_ARGUMENT when they are not all
  // mapped readable there (EFAULT), FAILED_PRECONDITION when the daemon may not read that process
  // (EPERM), ABORTED when it is gone (ESRCH).
  absl::Status Read(uint64_t address, void* dst, uint64_t n) const;
  // Several ranges in one call (at most IOV_MAX, under 2 GiB in all): true when every byte came
  // (otherwise Read each, for the error).
  struct Range {
    uint64_t address = 0;
    uint8_t* dst = nullptr;
    uint64_t bytes = 0;
  };
  bool ReadAll(const std::vector<Range>& ranges) const;
  // Reads nonce.size() bytes at `address`: OK when they are `nonce`, PERMISSION_DENIED when not
  // (the stream's process is not the one that holds the nonce), else as Read; then Alive.
  absl::Status CheckNonce(uint64_t address, const std::string& nonce) const;

 private:
  TrainerMemory(pid_t pid, int pidfd) : pid_(pid), pidfd_(pidfd) {}
  const pid_t pid_;
  const int pidfd_;
};

// Whether the daemon may read the memory of a caller of uid `caller_uid` without more rights over
// it than the caller has itself: the caller has the daemon's own uid and the daemon holds no
// CAP_SYS_PTRACE, or both are root. Otherwise (another uid, or CAP_SYS_PTRACE) a trainer could
// have the daemon read a process it may not read itself: exec a setuid program under the same
// pid, or a pid reused by another uid's process. `why` says why not.
bool MayPull(uid_t caller_uid, std::string* why);

// One tensor of a pull step, checked: its `bytes` (the manifest's byte_size, at least 1) at
// `address` of the trainer's memory.
struct PullPart {
  uint32_t tensor = 0;
  uint64_t address = 0;
  uint64_t bytes = 0;
};

// At most this many tensors in one pull step.
inline constexpr size_t kMaxPullTensors = 65536;

// The tensors of `pull` checked against `manifest`: at most kMaxPullTensors, each in the
// manifest with at least one byte, address + bytes not past 2^64. INVALID_ARGUMENT naming the
// tensor. (Whether each comes once is LocalPushCopier::ClaimWhole's check.)
absl::StatusOr<std::vector<PullPart>> PullParts(const v1::LocalPushPull& pull,
                                                const v1::Manifest& manifest);

// Copies part k from `memory` into dst[k] with up to `threads` threads, each streaming whole
// tensors (the largest of at least 256 MiB first, then in the order given) in reads of at most
// `piece_bytes`, hashing each piece (XXH3-64) right after reading it, while it is in cache;
// tensors under 1 MiB go in batches (one read of up to 8 MiB in up to 512 tensors). After a
// tensor's (or batch's) last read, checks the process is still alive, then stores each checksum in
// (*xxh3)[k] and calls `done(k, xxh3)` (may be empty; from the lanes, concurrently). `cancelled`
// (may be empty) is polled between pieces. The first error stops the rest (CANCELLED, or Read's,
// naming the tensor).
absl::Status PullTensors(const TrainerMemory& memory, const std::vector<PullPart>& parts,
                         const std::vector<uint8_t*>& dst, const v1::Manifest& manifest,
                         int threads, uint64_t piece_bytes, const std::function<bool()>& cancelled,
                         std::vector<uint64_t>* xxh3,
                         const std::function<void(size_t k, uint64_t xxh3)>& done);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_LOCAL_PULL_H_
