#include "daemon/host_arena.h"

#include <fcntl.h>
#include <numa.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace ckpt::daemon {
namespace {

std::string Errno() { return std::strerror(errno); }

// Faults every page in, `threads` threads each taking a contiguous share.
void TouchParallel(uint8_t* data, uint64_t bytes, int threads) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  threads = std::max(1, threads);
  uint64_t share = (bytes / threads + page - 1) / page * page;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    uint64_t begin = std::min(bytes, t * share);
    uint64_t end = std::min(bytes, begin + share);
    if (begin == end) break;
    workers.emplace_back([=] {
      for (uint64_t off = begin; off < end; off += page) {
        reinterpret_cast<volatile uint8_t*>(data)[off] = 0;
      }
    });
  }
  for (auto& w : workers) w.join();
}

// MemAvailable from /proc/meminfo, in bytes; 0 if unknown.
uint64_t AvailableMemory() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t kib = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long long v;
    if (std::sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
      kib = v;
      break;
    }
  }
  std::fclose(f);
  return kib * 1024;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HostArena>> HostArena::Create(Kind kind, uint64_t bytes,
                                                             const std::vector<int>& numa_nodes,
                                                             int touch_threads) {
  if (bytes == 0) return absl::InvalidArgumentError("host arena of 0 bytes");
  std::unique_ptr<HostArena> a(new HostArena());
  a->kind_ = kind;
  a->size_ = bytes;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  a->mapped_ = (bytes + page - 1) / page * page;
  std::string what = absl::StrCat(FormatBytes(bytes), " (host_memory_budget)");
  // Reserving more than the machine has would not fail cleanly: shared memory would drive the
  // machine into the OOM killer, pinned memory would fault forever. Refuse up front.
  if (uint64_t available = AvailableMemory(); available != 0 && bytes > available) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot reserve ", what, ": only ",
                                                     FormatBytes(available),
                                                     " of memory is available on this machine"));
  }

  if (kind == Kind::kShared) {
    // Sealable, so that memory shared with workers (staging slots) can be made read-only for them.
    a->memfd_.reset(::memfd_create("ckpt-engine-store", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!a->memfd_.valid()) {
      return absl::ResourceExhaustedError(absl::StrCat("memfd_create for ", what, ": ", Errno()));
    }
    if (::ftruncate(a->memfd_.get(), static_cast<off_t>(a->mapped_)) != 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot size shared memory to ", what, ": ", Errno()));
    }
    // Reserve the pages now: without this, running out of memory would show up later as SIGBUS.
    if (int err = ::posix_fallocate(a->memfd_.get(), 0, static_cast<off_t>(a->mapped_)); err != 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot reserve ", what, " of shared memory: ", std::strerror(err)));
    }
    // MAP_POPULATE maps every page now: otherwise each first write to a page of a new version takes
    // a page fault, which cost more than the copy itself (measured: ~4 s of CPU per GiB pushed).
    void* p = ::mmap(nullptr, a->mapped_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                     a->memfd_.get(), 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot map ", what, ": ", Errno()));
    }
    a->data_ = static_cast<uint8_t*>(p);
    return a;
  }

  void* p = ::mmap(nullptr, a->mapped_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot map ", what, ": ", Errno()));
  }
  a->data_ = static_cast<uint8_t*>(p);
  // Huge pages where the kernel allows them: fewer faults while touching, fewer TLB misses in
  // copies.
  (void)::madvise(a->data_, a->mapped_, MADV_HUGEPAGE);
  // Place pages before they are faulted in: interleaved over the GPUs' nodes, so that every GPU's
  // uploads read from memory near it as often as from far.
  if (!numa_nodes.empty() && numa_available() >= 0) {
    struct bitmask* mask = numa_allocate_nodemask();
    for (int n : numa_nodes) numa_bitmask_setbit(mask, n);
    numa_interleave_memory(a->data_, a->mapped_, mask);
    numa_free_nodemask(mask);
  }
  TouchParallel(a->data_, a->mapped_, touch_threads);
  auto pinned = gpu::PinnedRegion::Register(a->data_, a->mapped_);
  if (!pinned.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot pin ", what,
        " with cudaHostRegister (is LimitMEMLOCK=infinity set?): ", pinned.status().message()));
  }
  a->pinned_ = std::move(*pinned);
  return a;
}

HostArena::~HostArena() {
  pinned_ = gpu::PinnedRegion();
  if (data_ != nullptr) ::munmap(data_, mapped_);
}

absl::Status HostArena::SealAgainstOtherWriters() {
  if (kind_ != Kind::kShared) {
    return absl::FailedPreconditionError("only shared (memfd) memory can be sealed");
  }
  // F_SEAL_FUTURE_WRITE: no new writable mapping and no write(2), by anyone holding the memfd (a
  // worker, or a process that reopens it through /proc), while this process's existing writable
  // mapping keeps working. F_SEAL_SHRINK/GROW keep its size; F_SEAL_SEAL makes the set final.
  const int seals = F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
  if (::fcntl(memfd_.get(), F_ADD_SEALS, seals) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot seal shared memory against writers (needs Linux 5.1+): ", Errno()));
  }
  return absl::OkStatus();
}

}  // namespace ckpt::daemon
