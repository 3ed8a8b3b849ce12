#include "daemon/store/host_arena.h"

#include <fcntl.h>
#include <numa.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
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

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

// Faults [data, data + bytes) in for writing, `threads` threads each taking a contiguous share
// (2 MiB aligned, so that huge pages are not split between threads). `touch`: a write per page;
// else MADV_POPULATE_WRITE, which reports running out of memory as an error (a first touch would
// get SIGBUS or the OOM killer), falling back to touching on kernels before 5.14 (EINVAL).
// Measured: shared memory (after fallocate, 2 threads) MADV_POPULATE_WRITE 2x faster than touching;
// anonymous memory with huge pages (H200 host, 8 threads) touching 34 GB/s, MADV_POPULATE_WRITE
// 9-10 GB/s. Returns 0 or an errno.
int PopulateParallel(uint8_t* data, uint64_t bytes, int threads, bool touch) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  constexpr uint64_t kShareAlign = 2 << 20;
  constexpr uint64_t kMinShare = 4 << 20;  // small pieces are not worth a thread
  // More threads than cores only contend (measured on 2 cores: 8 threads slower than 2).
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(
      std::clamp<uint64_t>(bytes / kMinShare, 1, std::max(1, std::min(threads, cores))));
  const uint64_t share = (bytes / threads + kShareAlign - 1) / kShareAlign * kShareAlign;
  std::atomic<int> error{0};
  auto populate = [&](uint64_t begin, uint64_t end) {
    if (!touch) {
      if (::madvise(data + begin, end - begin, MADV_POPULATE_WRITE) == 0) return;
      if (errno != EINVAL) {
        error = errno;
        return;
      }
    }
    for (uint64_t off = begin; off < end; off += page) {
      reinterpret_cast<volatile uint8_t*>(data)[off] =
          reinterpret_cast<volatile uint8_t*>(data)[off];
    }
  };
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) {
    const uint64_t begin = std::min(bytes, t * share);
    const uint64_t end = std::min(bytes, begin + share);
    if (begin < end) workers.emplace_back(populate, begin, end);
  }
  populate(0, std::min(bytes, share));
  for (auto& w : workers) w.join();
  return error.load();
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
                                                             int threads, Populate populate) {
  if (bytes == 0) return absl::InvalidArgumentError("host arena of 0 bytes");
  std::unique_ptr<HostArena> a(new HostArena());
  a->kind_ = kind;
  a->size_ = bytes;
  a->threads_ = std::max(1, threads);
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
    // Not MAP_POPULATE: PopulateNext reserves and maps the pages piece by piece (MAP_POPULATE of a
    // shared mapping also ran 2-4x slower than fallocate + MADV_POPULATE_WRITE, measured).
    void* p = ::mmap(nullptr, a->mapped_, PROT_READ | PROT_WRITE, MAP_SHARED, a->memfd_.get(), 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot map ", what, ": ", Errno()));
    }
    a->data_ = static_cast<uint8_t*>(p);
  } else {
    void* p = ::mmap(nullptr, a->mapped_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot map ", what, ": ", Errno()));
    }
    a->data_ = static_cast<uint8_t*>(p);
    // Huge pages where the kernel allows them: fewer faults while populating, fewer TLB misses in
    // copies.
    (void)::madvise(a->data_, a->mapped_, MADV_HUGEPAGE);
    // Place pages before they are faulted in: interleaved over the GPUs' nodes, so that every
    // GPU's uploads read from memory near it as often as from far.
    if (!numa_nodes.empty() && numa_available() >= 0) {
      struct bitmask* mask = numa_allocate_nodemask();
      for (int n : numa_nodes) numa_bitmask_setbit(mask, n);
      numa_interleave_memory(a->data_, a->mapped_, mask);
      numa_free_nodemask(mask);
    }
    if (populate == Populate::kLater) {
      // The whole arena is registered only once populated (PopulateNext's pieces may take
      // minutes); a failure to pin at all (no driver) should still stop start-up, so one page is
      // registered and unregistered now.
      a->data_[0] = 0;
      auto probe = gpu::PinnedRegion::Register(a->data_, page);
      if (!probe.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot pin ", what,
            " with cudaHostRegister (is LimitMEMLOCK=infinity set?): ", probe.status().message()));
      }
    }
  }
  if (populate == Populate::kNow) {
    RETURN_IF_ERROR(a->PopulateNext(a->mapped_));
    RETURN_IF_ERROR(a->Pin());
  }
  return a;
}

absl::Status HostArena::PopulateNext(uint64_t max_bytes) {
  if (populated_ >= mapped_) return absl::OkStatus();
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t left = mapped_ - populated_;
  const uint64_t len =
      max_bytes >= left ? left : std::max(page, (max_bytes + page - 1) / page * page);
  auto fail = [&](const std::string& why) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot make ", FormatBytes(len), " more of the ", FormatBytes(size_),
                     " host_memory_budget ready at ", FormatBytes(populated_), ": ", why));
  };
  if (populated_ + len > fail_beyond_) {
    return fail("out of memory (simulated by a test)");
  }
  if (kind_ == Kind::kShared) {
    // Reserve the pages first: without this, running out of memory would show up later as SIGBUS.
    if (int err = ::posix_fallocate(memfd_.get(), static_cast<off_t>(populated_),
                                    static_cast<off_t>(len));
        err != 0) {
      return fail(absl::StrCat("fallocate of shared memory: ", std::strerror(err)));
    }
  }
  // Mapping every page now: otherwise each first write to a page of a new version takes a page
  // fault, which cost more than the copy itself (measured: ~4 s of CPU per GiB pushed). kPinned:
  // touched, as before warm-up existed (4x faster there; memory beyond what is available was
  // refused at Create).
  if (int err = PopulateParallel(data_ + populated_, len, threads_, kind_ == Kind::kPinned);
      err != 0) {
    return fail(absl::StrCat("populating pages (MADV_POPULATE_WRITE): ", std::strerror(err)));
  }
  populated_ += len;
  ready_bytes_.store(std::min(populated_, size_), std::memory_order_release);
  return absl::OkStatus();
}

absl::Status HostArena::Pin() {
  if (kind_ != Kind::kPinned || pinned()) return absl::OkStatus();
  if (populated_ < mapped_) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot pin the host arena before it is populated (",
                     FormatBytes(ready_bytes()), " of ", FormatBytes(size_), ")"));
  }
  auto pinned = gpu::PinnedRegion::Register(data_, mapped_);
  if (!pinned.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot pin ", FormatBytes(size_),
                     " (host_memory_budget) with cudaHostRegister (is "
                     "LimitMEMLOCK=infinity set?): ",
                     pinned.status().message()));
  }
  pinned_ = std::move(*pinned);
  pinned_flag_.store(true, std::memory_order_release);
  return absl::OkStatus();
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
