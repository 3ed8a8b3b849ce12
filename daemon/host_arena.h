// HostArena: the daemon's one block of host memory for checkpoint versions, sized by
// host_memory_budget and reserved whole at start-up (no allocation or pinning per version).
//
// Kinds:
// - kShared (host backend): a memfd mapping, so that local workers can later map the same pages
//   (the fd travels with SCM_RIGHTS). Pages are reserved with fallocate at creation: a budget that
//   the machine cannot hold fails start-up instead of faulting later.
// - kPinned (cuda backend): anonymous memory placed on the NUMA node(s) of the GPUs (interleaved),
//   faulted in by parallel threads, then registered once with cudaHostRegister.
//
// Thread-safety: immutable after Create; the memory itself is written by many threads (the caller
// partitions it).
#ifndef CKPT_DAEMON_HOST_ARENA_H_
#define CKPT_DAEMON_HOST_ARENA_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/scoped_fd.h"
#include "daemon/gpu/pinned_region.h"

namespace ckpt::daemon {

class HostArena {
 public:
  enum class Kind { kShared, kPinned };

  // Reserves `bytes` (> 0). `numa_nodes`: nodes to interleave kPinned memory over (empty: the
  // kernel's default policy). `touch_threads`: threads that fault kPinned pages in. Errors:
  // RESOURCE_EXHAUSTED naming the size when the memory cannot be had; FAILED_PRECONDITION when
  // pinning fails (e.g. RLIMIT_MEMLOCK, no GPU). Nothing stays allocated on failure.
  static absl::StatusOr<std::unique_ptr<HostArena>> Create(Kind kind, uint64_t bytes,
                                                           const std::vector<int>& numa_nodes = {},
                                                           int touch_threads = 8);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  Kind kind() const { return kind_; }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // kShared: the memfd (owned by the arena); -1 for kPinned.
  int memfd() const { return memfd_.get(); }

  // kShared only: seals the memfd so that nobody can write it but through this arena's mapping
  // (F_SEAL_FUTURE_WRITE + size seals): a process given the memfd can map it read-only or
  // copy-on-write, never change what this process or others read. Call before sharing the fd.
  absl::Status SealAgainstOtherWriters();

 private:
  HostArena() = default;

  Kind kind_ = Kind::kShared;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  uint64_t mapped_ = 0;
  ScopedFd memfd_;
  // Declared last: unregistered before the mapping goes (in ~HostArena).
  gpu::PinnedRegion pinned_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_HOST_ARENA_H_
