#include "daemon/api/local_push.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/checked_math.h"
#include "common/units.h"

namespace ckpt::daemon {

absl::StatusOr<std::vector<WindowPart>> WindowParts(const v1::LocalPushWindow& window,
                                                    const v1::Manifest& manifest,
                                                    uint64_t* window_bytes) {
  const int n = window.part_tensor_size();
  if (window.part_offset_size() != n || window.part_bytes_size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a window's part lists differ in length (", n, " part_tensor, ", window.part_offset_size(),
        " part_offset, ", window.part_bytes_size(), " part_bytes)"));
  }
  if (n == 0 || static_cast<size_t>(n) > kMaxWindowParts) {
    return absl::InvalidArgumentError(
        absl::StrCat("a window has ", n, " parts; it needs 1 to ", kMaxWindowParts));
  }
  std::vector<WindowPart> parts;
  parts.reserve(n);
  CheckedSum sum;
  for (int k = 0; k < n; ++k) {
    const uint32_t t = window.part_tensor(k);
    const uint64_t offset = window.part_offset(k);
    const uint64_t bytes = window.part_bytes(k);
    if (t >= static_cast<uint32_t>(manifest.tensors_size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "window part ", k, " names tensor #", t, "; the manifest has ", manifest.tensors_size()));
    }
    const uint64_t size = manifest.tensors(static_cast<int>(t)).byte_size();
    if (bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat("window part ", k, " has 0 bytes"));
    }
    if (offset > size || bytes > size - offset) {
      return absl::OutOfRangeError(
          absl::StrCat("window part ", k, ": bytes [", offset, ", ", offset, " + ", bytes,
                       ") are past the end of tensor '",
                       manifest.tensors(static_cast<int>(t)).name(), "' (", size, " bytes)"));
    }
    parts.push_back({t, offset, bytes, sum.total()});
    if (!sum.Add(bytes)) {
      return absl::InvalidArgumentError("a window's parts add up to more than 2^64 bytes");
    }
  }
  *window_bytes = sum.total();
  return parts;
}

absl::Status CheckWindowFd(int fd, uint64_t bytes) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the window's descriptor: fstat: ", std::strerror(errno)));
  }
  // Only shared memory takes seals: this refuses files on disk, pipes, sockets and devices, whose
  // reads could block or have effects.
  if (!S_ISREG(st.st_mode) || ::fcntl(fd, F_GET_SEALS) < 0) {
    return absl::FailedPreconditionError(
        "the window's descriptor is not a memfd (shared memory made by memfd_create)");
  }
  struct statfs fs;
  if (::fstatfs(fd, &fs) != 0 || fs.f_type == HUGETLBFS_MAGIC) {
    return absl::FailedPreconditionError(
        "the window's memfd is on hugetlbfs; give one without MFD_HUGETLB");
  }
  if (static_cast<uint64_t>(st.st_size) < bytes) {
    return absl::FailedPreconditionError(absl::StrCat("the window's memfd has ", st.st_size,
                                                      " bytes, fewer than its parts' ", bytes));
  }
  return absl::OkStatus();
}

absl::Status CopyWindow(int fd, const std::vector<WindowPart>& parts,
                        VersionStore::WriteLease& lease, int threads, uint64_t piece_bytes,
                        const std::function<bool()>& cancelled) {
  // Pieces of at most piece_bytes, handed out in window order.
  struct Piece {
    uint32_t tensor;
    uint64_t offset;
    uint64_t bytes;
    uint64_t window_offset;
  };
  piece_bytes = std::max<uint64_t>(piece_bytes, 4096);
  std::vector<Piece> pieces;
  for (const WindowPart& p : parts) {
    for (uint64_t done = 0; done < p.bytes; done += piece_bytes) {
      pieces.push_back({p.tensor, p.offset + done, std::min(piece_bytes, p.bytes - done),
                        p.window_offset + done});
    }
  }
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  absl::Status failure;
  auto fail = [&](absl::Status s) {
    absl::MutexLock lock(&mu);
    if (failure.ok()) failure = std::move(s);
    stop.store(true);
  };
  auto work = [&] {
    for (size_t k = next.fetch_add(1); k < pieces.size() && !stop.load(); k = next.fetch_add(1)) {
      if (cancelled && cancelled()) {
        fail(absl::CancelledError("the trainer went away during the copy"));
        return;
      }
      if (!lease.Touch()) {
        fail(absl::AbortedError("the version was aborted during the copy"));
        return;
      }
      const Piece& p = pieces[k];
      uint8_t* dst = lease.data(static_cast<int>(p.tensor)) + p.offset;
      uint64_t got = 0;
      while (got < p.bytes) {
        const ssize_t r = ::pread(fd, dst + got, static_cast<size_t>(p.bytes - got),
                                  static_cast<off_t>(p.window_offset + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
          fail(absl::FailedPreconditionError(absl::StrCat(
              "reading the window at offset ", p.window_offset + got, ": ",
              r < 0 ? std::strerror(errno) : "it ended early (the trainer shrank its memfd)")));
          return;
        }
        got += static_cast<uint64_t>(r);
      }
    }
  };
  threads = std::max(1, std::min<int>(threads, static_cast<int>(pieces.size())));
  std::vector<std::thread> pool;
  try {
    for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads: the ones started (and this one) do the work.
  }
  work();
  for (std::thread& t : pool) t.join();
  if (!failure.ok()) return failure;
  for (const WindowPart& p : parts) {
    if (absl::Status s = lease.MarkReceived(static_cast<int>(p.tensor), p.offset, p.bytes);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPartsInOrder(const std::vector<WindowPart>& parts, const v1::Manifest& manifest,
                               std::vector<uint64_t>& next) {
  for (size_t k = 0; k < parts.size(); ++k) {
    const WindowPart& p = parts[k];
    if (p.offset != next[p.tensor]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "window part ", k, ": tensor '", manifest.tensors(static_cast<int>(p.tensor)).name(),
          "' goes on at byte ", next[p.tensor], ", not ", p.offset,
          " (a local push sends each tensor's bytes once, in order)"));
    }
    next[p.tensor] += p.bytes;
  }
  return absl::OkStatus();
}

TensorHasher::TensorHasher(std::unique_ptr<VersionStore::WriteLease> lease, int tensors,
                           int threads)
    : lease_(std::move(lease)), sums_(static_cast<size_t>(tensors), 0) {
  try {
    for (int i = 0; i < std::max(1, threads); ++i) pool_.emplace_back([this] { Work(); });
  } catch (const std::system_error&) {
    // Fewer threads; Finish() hashes what none took.
  }
}

TensorHasher::~TensorHasher() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : pool_) t.join();
}

void TensorHasher::Add(int tensor, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  queue_.emplace_back(tensor, bytes);
}

void TensorHasher::Work() {
  while (true) {
    std::pair<int, uint64_t> item;
    {
      absl::MutexLock lock(&mu_);
      // Woken by Add (work) or by the destructor (stop); never waits past the push's life.
      mu_.Await(absl::Condition(
          +[](TensorHasher* h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(h->mu_) {
            return h->stop_ || h->next_ < h->queue_.size();
          },
          this));
      if (stop_) return;
      item = queue_[next_++];
    }
    sums_[static_cast<size_t>(item.first)] = XXH3_64bits(lease_->data(item.first), item.second);
    absl::MutexLock lock(&mu_);
    ++done_;
  }
}

std::vector<uint64_t> TensorHasher::Finish() {
  // Helps with what is queued (and does it all if no thread started), then waits for the rest.
  while (true) {
    std::pair<int, uint64_t> item;
    {
      absl::MutexLock lock(&mu_);
      if (next_ >= queue_.size()) break;
      item = queue_[next_++];
    }
    sums_[static_cast<size_t>(item.first)] = XXH3_64bits(lease_->data(item.first), item.second);
    absl::MutexLock lock(&mu_);
    ++done_;
  }
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](TensorHasher* h)
             ABSL_EXCLUSIVE_LOCKS_REQUIRED(h->mu_) { return h->done_ == h->queue_.size(); },
        this));
    stop_ = true;
  }
  for (std::thread& t : pool_) t.join();
  pool_.clear();
  lease_.reset();  // the commit waits for the version's writers to be gone
  return sums_;
}

}  // namespace ckpt::daemon
