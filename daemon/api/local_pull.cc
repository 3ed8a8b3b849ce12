#include "daemon/api/local_pull.h"

#include <poll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checked_math.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "common/xxh3.h"

namespace ckpt::daemon {
namespace {

// Tensors smaller than this are read in batches (one process_vm_readv and one liveness check for
// up to kBatchBytes in up to kBatchTensors tensors), so that many small tensors cost few calls.
constexpr uint64_t kSmallBytes = uint64_t{1} << 20;
constexpr uint64_t kBatchBytes = uint64_t{8} << 20;
constexpr size_t kBatchTensors = 512;  // below IOV_MAX (1024)

}  // namespace

bool MayPull(uid_t caller_uid, std::string* why) {
  const uid_t me = ::geteuid();
  if (caller_uid != me) {
    *why = absl::StrCat("the trainer's uid ", caller_uid, " is not the daemon's (", me, ")");
    return false;
  }
  if (me == 0) return true;  // root reading root: nothing it could not read itself
  // CAP_SYS_PTRACE (bit 19) in the effective set would let the daemon read past the kernel's
  // same-uid and dumpable checks.
  std::FILE* f = std::fopen("/proc/self/status", "re");
  if (f == nullptr) {
    *why = "cannot read /proc/self/status for the daemon's capabilities";
    return false;
  }
  char line[256];
  unsigned long long eff = ~0ull;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "CapEff: %llx", &eff) == 1) break;
  }
  std::fclose(f);
  if (eff & (1ull << 19)) {
    *why = "the daemon holds CAP_SYS_PTRACE (it could read more than the trainer may)";
    return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<TrainerMemory>> TrainerMemory::Open(pid_t pid) {
#ifdef SYS_pidfd_open
  if (pid <= 0) return absl::FailedPreconditionError("the caller's pid is unknown");
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("pidfd_open of pid ", pid, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<TrainerMemory>(new TrainerMemory(pid, static_cast<int>(fd)));
#else
  return absl::FailedPreconditionError("this platform has no pidfd_open");
#endif
}

TrainerMemory::~TrainerMemory() { ::close(pidfd_); }

absl::Status TrainerMemory::Alive() const {
  // A pidfd becomes readable once its process exits.
  pollfd p{pidfd_, POLLIN, 0};
  int r;
  do {
    r = ::poll(&p, 1, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return absl::InternalError(absl::StrCat("poll of a pidfd: ", std::strerror(errno)));
  if (r > 0) return absl::AbortedError(absl::StrCat("the trainer (pid ", pid_, ") exited"));
  return absl::OkStatus();
}

absl::Status TrainerMemory::Read(uint64_t address, void* dst, uint64_t n) const {
  auto* to = static_cast<uint8_t*>(dst);
  uint64_t done = 0;
  while (done < n) {
    const uint64_t chunk = std::min<uint64_t>(n - done, uint64_t{1} << 30);
    iovec local{to + done, static_cast<size_t>(chunk)};
    iovec remote{reinterpret_cast<void*>(static_cast<uintptr_t>(address + done)),
                 static_cast<size_t>(chunk)};
    const ssize_t got = ::process_vm_readv(pid_, &local, 1, &remote, 1, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const int e = got < 0 ? errno : EFAULT;  // 0 bytes: nothing readable there
      const std::string where = absl::StrFormat("%d bytes at 0x%x of the trainer's memory (pid %d)",
                                                n - done, address + done, pid_);
      if (e == EFAULT) {
        return absl::InvalidArgumentError(absl::StrCat(where, " are not mapped readable"));
      }
      if (e == ESRCH) return absl::AbortedError(absl::StrCat(where, ": the trainer is gone"));
      if (e == EPERM) {
        return absl::FailedPreconditionError(
            absl::StrCat(where,
                         ": the daemon may not read it (process_vm_readv: EPERM; it needs the "
                         "trainer's uid or CAP_SYS_PTRACE, and Yama's ptrace_scope)"));
      }
      return absl::InternalError(absl::StrCat(where, ": process_vm_readv: ", std::strerror(e)));
    }
    done += static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

bool TrainerMemory::ReadAll(const std::vector<Range>& ranges) const {
  std::vector<iovec> local, remote;
  local.reserve(ranges.size());
  remote.reserve(ranges.size());
  uint64_t total = 0;
  for (const Range& r : ranges) {
    local.push_back({r.dst, static_cast<size_t>(r.bytes)});
    remote.push_back(
        {reinterpret_cast<void*>(static_cast<uintptr_t>(r.address)), static_cast<size_t>(r.bytes)});
    total += r.bytes;  // callers keep it under kBatchBytes
  }
  ssize_t got;
  do {
    got = ::process_vm_readv(pid_, local.data(), local.size(), remote.data(), remote.size(), 0);
  } while (got < 0 && errno == EINTR);
  return got >= 0 && static_cast<uint64_t>(got) == total;
}

absl::Status TrainerMemory::CheckNonce(uint64_t address, const std::string& nonce) const {
  CheckedSum end;
  if (!end.Add(address) || !end.Add(nonce.size())) {
    return absl::InvalidArgumentError("the pull's nonce address passes 2^64");
  }
  std::string got(nonce.size(), '\0');
  RETURN_IF_ERROR(Read(address, got.data(), got.size()));
  if (got != nonce) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the pull's nonce is not at 0x", absl::Hex(address), " of pid ", pid_,
        " (the daemon reads only the memory of the process that opened the push's stream)"));
  }
  return Alive();
}

absl::StatusOr<std::vector<PullPart>> PullParts(const v1::LocalPushPull& pull,
                                                const v1::Manifest& manifest) {
  if (static_cast<size_t>(pull.tensors_size()) > kMaxPullTensors) {
    return absl::InvalidArgumentError(absl::StrCat("a pull step has ", pull.tensors_size(),
                                                   " tensors; at most ", kMaxPullTensors));
  }
  std::vector<PullPart> parts;
  parts.reserve(static_cast<size_t>(pull.tensors_size()));
  for (int k = 0; k < pull.tensors_size(); ++k) {
    const v1::PullTensor& t = pull.tensors(k);
    if (t.tensor() >= static_cast<uint32_t>(manifest.tensors_size())) {
      return absl::InvalidArgumentError(absl::StrCat("pull tensor ", k, ": index ", t.tensor(),
                                                     " is past the manifest's ",
                                                     manifest.tensors_size(), " tensors"));
    }
    const v1::TensorSpec& spec = manifest.tensors(static_cast<int>(t.tensor()));
    if (spec.byte_size() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("pull tensor ", k, " ('", spec.name(), "') has no bytes to read"));
    }
    CheckedSum end;
    if (!end.Add(t.address()) || !end.Add(spec.byte_size())) {
      return absl::InvalidArgumentError(absl::StrCat("pull tensor ", k, " ('", spec.name(),
                                                     "'): address ", t.address(), " + ",
                                                     spec.byte_size(), " bytes passes 2^64"));
    }
    parts.push_back({t.tensor(), t.address(), spec.byte_size()});
  }
  return parts;
}

absl::Status PullTensors(const TrainerMemory& memory, const std::vector<PullPart>& parts,
                         const std::vector<uint8_t*>& dst, const v1::Manifest& manifest,
                         int threads, uint64_t piece_bytes, const std::function<bool()>& cancelled,
                         std::vector<uint64_t>* xxh3,
                         const std::function<void(size_t k, uint64_t xxh3)>& done) {
  if (dst.size() != parts.size()) {
    return absl::InternalError("pull: one destination per tensor (a daemon bug)");
  }
  piece_bytes = std::max<uint64_t>(piece_bytes, 4096);
  xxh3->assign(parts.size(), 0);
  std::vector<size_t> order(parts.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return TakenEarlier(parts[a].bytes, parts[b].bytes);
  });
  // Work items: a tensor streamed piece by piece, or a batch of small tensors read at once.
  std::vector<std::vector<size_t>> items;
  uint64_t batch_bytes = 0;
  for (size_t k : order) {
    const bool small = parts[k].bytes < kSmallBytes;
    const bool join = small && !items.empty() && items.back().size() < kBatchTensors &&
                      parts[items.back().front()].bytes < kSmallBytes &&
                      batch_bytes + parts[k].bytes <= kBatchBytes;
    if (!join) {
      items.emplace_back();
      batch_bytes = 0;
    }
    items.back().push_back(k);
    batch_bytes += parts[k].bytes;
  }
  std::atomic<size_t> next{0};
  FirstFailure failure;
  auto name_of = [&](size_t k) -> const std::string& {
    return manifest.tensors(static_cast<int>(parts[k].tensor)).name();
  };
  auto lane = [&] {
    Xxh3State state(XXH3_createState());
    if (state == nullptr) {
      failure.Record(absl::ResourceExhaustedError("no memory for a hash state"));
      return;
    }
    std::vector<TrainerMemory::Range> ranges;
    for (size_t j = next.fetch_add(1); j < items.size() && !failure.stopped();
         j = next.fetch_add(1)) {
      const std::vector<size_t>& item = items[j];
      if (cancelled && cancelled()) {
        failure.Record(absl::CancelledError(
            "the push was cancelled during the pull (the trainer went away, or its stream "
            "stayed idle for push_idle_timeout)"));
        return;
      }
      if (item.size() > 1 || parts[item[0]].bytes < kSmallBytes) {
        ranges.clear();
        for (size_t k : item) ranges.push_back({parts[k].address, dst[k], parts[k].bytes});
        if (!memory.ReadAll(ranges)) {
          // Short or failed: tensor by tensor, for the error that names the right one.
          for (size_t k : item) {
            absl::Status read = memory.Read(parts[k].address, dst[k], parts[k].bytes);
            if (!read.ok()) {
              failure.Record(Annotate(read, absl::StrCat("pulling tensor '", name_of(k), "' (",
                                                         FormatBytes(parts[k].bytes), ")")));
              return;
            }
          }
        }
        // Read while the trainer lived: its own memory (see the header comment).
        if (absl::Status alive = memory.Alive(); !alive.ok()) {
          failure.Record(Annotate(alive, absl::StrCat("pulling tensor '", name_of(item[0]), "'")));
          return;
        }
        for (size_t k : item) {
          (*xxh3)[k] = XXH3_64bits(dst[k], static_cast<size_t>(parts[k].bytes));
          if (done) done(k, (*xxh3)[k]);
        }
        continue;
      }
      const size_t k = item[0];
      const PullPart& p = parts[k];
      (void)XXH3_64bits_reset(state.get());
      for (uint64_t at = 0; at < p.bytes; at += piece_bytes) {
        if (failure.stopped()) return;
        if (at > 0 && cancelled && cancelled()) {
          failure.Record(absl::CancelledError(
              "the push was cancelled during the pull (the trainer went away, or its stream "
              "stayed idle for push_idle_timeout)"));
          return;
        }
        const uint64_t n = std::min(piece_bytes, p.bytes - at);
        absl::Status read = memory.Read(p.address + at, dst[k] + at, n);
        if (!read.ok()) {
          failure.Record(Annotate(read, absl::StrCat("pulling tensor '", name_of(k), "' (",
                                                     FormatBytes(p.bytes), ")")));
          return;
        }
        XXH3_64bits_update(state.get(), dst[k] + at, static_cast<size_t>(n));
      }
      // Read while the trainer lived: its own memory (see the header comment).
      if (absl::Status alive = memory.Alive(); !alive.ok()) {
        failure.Record(Annotate(alive, absl::StrCat("pulling tensor '", name_of(k), "'")));
        return;
      }
      (*xxh3)[k] = XXH3_64bits_digest(state.get());
      if (done) done(k, (*xxh3)[k]);
    }
  };
  RunOnThreads(std::max(1, std::min<int>(threads, static_cast<int>(items.size()))), lane);
  return failure.status();
}

}  // namespace ckpt::daemon
