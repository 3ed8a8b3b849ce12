// HostArena: the daemon's one block of host memory for checkpoint versions, sized by
// host_memory_budget and mapped whole at start-up (no allocation or pinning per version).
//
// Kinds:
// - kShared (host backend): a memfd mapping, so that local workers can later map the same pages
//   (the fd travels with SCM_RIGHTS). Pages are reserved with fallocate as they are populated: a
//   budget that the machine cannot hold fails there (an error) instead of faulting later (SIGBUS).
// - kPinned (cuda backend): anonymous memory placed on the NUMA node(s) of the GPUs (interleaved),
//   faulted in by parallel threads, then registered once, whole, with cudaHostRegister.
//
// Populating: mapping is cheap; making the pages real is not (fallocate zeroes every page and the
// page tables are filled: ~2 s per GiB on a 2-core build machine, 25.8 s for a 11.8 GiB budget).
// Populate::kNow does it all in Create. Populate::kLater leaves it to the owner, who calls
// PopulateNext piece by piece, oldest offset first, while [0, ready_bytes()) is already in use
// (the daemon does this on a background thread: VersionStore::StartWarmUp), then Pin.
//
// Why one registration at the end rather than one per piece: a cudaMemcpy whose host range spans
// two separately registered ranges fails with cudaErrorInvalidValue (measured on an H200, driver
// 580), and a tensor may span any piece boundary. Until Pin, copies from the arena run from
// pageable memory (correct, slower: 5 GB/s instead of 55 measured); copies issued while Pin runs
// wait for it (measured: no error, bytes intact).
//
// Thread-safety: PopulateNext and Pin are called by one thread at a time (not concurrently with
// each other); ready_bytes() and pinned() may be read from any thread; the memory below
// ready_bytes() is written by many threads (the caller partitions it).
#ifndef CKPT_DAEMON_STORE_HOST_ARENA_H_
#define CKPT_DAEMON_STORE_HOST_ARENA_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/scoped_fd.h"
#include "gpu/pinned_region.h"

namespace ckpt::daemon {

class HostArena {
 public:
  enum class Kind { kShared, kPinned };
  // kNow: Create returns a populated (and for kPinned, pinned) arena. kLater: Create only maps it;
  // the owner calls PopulateNext until populated(), then Pin.
  enum class Populate { kNow, kLater };

  // Maps `bytes` (> 0). `numa_nodes`: nodes to interleave kPinned memory over (empty: the kernel's
  // default policy). `threads`: threads that populate pages. Errors: RESOURCE_EXHAUSTED naming the
  // size when the memory cannot be had (more than the machine's available memory is refused up
  // front, even with kLater); FAILED_PRECONDITION when pinning fails (e.g. no GPU; with kLater a
  // one-page registration at Create checks that pinning works at all). Nothing stays allocated on
  // failure.
  static absl::StatusOr<std::unique_ptr<HostArena>> Create(Kind kind, uint64_t bytes,
                                                           const std::vector<int>& numa_nodes = {},
                                                           int threads = 8,
                                                           Populate populate = Populate::kNow);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  Kind kind() const { return kind_; }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // kShared: the memfd (owned by the arena); -1 for kPinned.
  int memfd() const { return memfd_.get(); }

  // Bytes from the start that are real memory (reserved and mapped, never a fault or SIGBUS);
  // size() once populated. Only grows.
  uint64_t ready_bytes() const { return ready_bytes_.load(std::memory_order_acquire); }
  bool populated() const { return ready_bytes() == size_; }
  // kPinned: registered with CUDA (Pin succeeded). Always false for kShared.
  bool pinned() const { return pinned_flag_.load(std::memory_order_acquire); }

  // Populates the next piece: up to `max_bytes` (rounded up to whole pages; at most what is left)
  // at ready_bytes(). kShared: fallocate, then the pages are mapped (MADV_POPULATE_WRITE);
  // kPinned: the pages are touched (on the arena's NUMA policy). ready_bytes() advances only
  // on success. Errors: RESOURCE_EXHAUSTED naming the offset and the cause (ENOMEM, ENOSPC); the
  // arena stays usable below ready_bytes(). OK and nothing done once populated.
  absl::Status PopulateNext(uint64_t max_bytes);

  // kPinned, once populated: registers the whole mapping with cudaHostRegister (for 2 TB, tens of
  // seconds; it cannot be interrupted). FAILED_PRECONDITION before every page is populated or
  // when registration fails (the memory stays usable, unpinned). kShared, or already pinned: OK.
  absl::Status Pin();

  // Testing: PopulateNext fails (RESOURCE_EXHAUSTED, as if memory ran out) instead of populating
  // past `bytes`. Call before populating from another thread.
  void FailPopulatingBeyondForTest(uint64_t bytes) { fail_beyond_ = bytes; }

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
  int threads_ = 1;
  // Mapped bytes populated so far (whole pages); only the populating thread uses it.
  uint64_t populated_ = 0;
  uint64_t fail_beyond_ = UINT64_MAX;
  std::atomic<uint64_t> ready_bytes_{0};
  std::atomic<bool> pinned_flag_{false};
  ScopedFd memfd_;
  // Declared last: unregistered before the mapping goes (in ~HostArena).
  gpu::PinnedRegion pinned_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_STORE_HOST_ARENA_H_
