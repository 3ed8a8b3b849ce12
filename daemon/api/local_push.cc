#include "daemon/api/local_push.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checked_math.h"
#include "common/message_text.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "common/xxh3.h"

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
    RETURN_IF_ERROR(
        VersionStore::CheckPart(manifest, "window", static_cast<size_t>(k), {t, offset, bytes}));
    parts.push_back({t, offset, bytes, sum.total()});
    if (!sum.Add(bytes)) {
      return absl::InvalidArgumentError("a window's parts add up to more than 2^64 bytes");
    }
  }
  *window_bytes = sum.total();
  return parts;
}

absl::StatusOr<std::vector<IpcPart>> IpcParts(const v1::LocalPushIpc& ipc,
                                              const v1::Manifest& manifest,
                                              const std::map<std::string, int>& accepted) {
  if (ipc.tensors_size() == 0 || static_cast<size_t>(ipc.tensors_size()) > kMaxIpcTensors) {
    return absl::InvalidArgumentError(absl::StrCat("an ipc step has ", ipc.tensors_size(),
                                                   " tensors; it needs 1 to ", kMaxIpcTensors));
  }
  if (accepted.empty()) {
    return absl::FailedPreconditionError(
        "this daemon copies from none of the trainer's GPUs (begun.ipc_gpus is empty: a host "
        "backend, or GPUs it does not drive); send those tensors in windows");
  }
  std::vector<IpcPart> parts;
  parts.reserve(static_cast<size_t>(ipc.tensors_size()));
  for (int k = 0; k < ipc.tensors_size(); ++k) {
    const v1::IpcTensor& t = ipc.tensors(k);
    if (t.tensor() >= static_cast<uint32_t>(manifest.tensors_size())) {
      return absl::InvalidArgumentError(absl::StrCat("ipc tensor ", k, ": index ", t.tensor(),
                                                     " is past the manifest's ",
                                                     manifest.tensors_size(), " tensors"));
    }
    const v1::TensorSpec& spec = manifest.tensors(static_cast<int>(t.tensor()));
    auto gpu = accepted.find(t.gpu());
    if (gpu == accepted.end()) {
      return absl::InvalidArgumentError(absl::StrCat("ipc tensor ", k, " ('", spec.name(),
                                                     "'): GPU ", QuoteForMessage(t.gpu(), 64),
                                                     " is not one of begun.ipc_gpus"));
    }
    if (t.handle().size() != 64) {
      return absl::InvalidArgumentError(absl::StrCat("ipc tensor ", k, " ('", spec.name(),
                                                     "'): its handle has ", t.handle().size(),
                                                     " bytes, not 64"));
    }
    if (spec.byte_size() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("ipc tensor ", k, " ('", spec.name(), "') has no bytes to copy"));
    }
    if (!RangeWithin(t.offset(), spec.byte_size(), ~uint64_t{0})) {
      return absl::InvalidArgumentError(absl::StrCat("ipc tensor ", k, " ('", spec.name(),
                                                     "'): offset ", t.offset(), " + ",
                                                     spec.byte_size(), " bytes passes 2^64"));
    }
    parts.push_back({t.tensor(), gpu->second, t.handle(), t.offset(), spec.byte_size()});
  }
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

struct LocalPushCopier::State {
  Xxh3State xxh3;
};

LocalPushCopier::LocalPushCopier(const v1::Manifest& manifest)
    : manifest_(manifest),
      next_(static_cast<size_t>(manifest.tensors_size()), 0),
      sums_(static_cast<size_t>(manifest.tensors_size()), 0),
      claimed_tensor_(static_cast<size_t>(manifest.tensors_size()), false) {
  for (int i = 0; i < manifest.tensors_size(); ++i) {
    if (manifest.tensors(i).byte_size() == 0) sums_[static_cast<size_t>(i)] = XXH3_64bits("", 0);
  }
}

LocalPushCopier::~LocalPushCopier() = default;

absl::Status LocalPushCopier::ClaimWhole(const std::vector<uint32_t>& tensors, const char* step) {
  std::vector<uint64_t> next = next_;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const uint32_t t = tensors[k];
    if (t >= next.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          step, " tensor ", k, ": index ", t, " is past the manifest's ", next.size(), " tensors"));
    }
    const v1::TensorSpec& spec = manifest_.tensors(static_cast<int>(t));
    if (spec.byte_size() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(step, " tensor ", k, ": '", spec.name(), "' has no bytes to copy"));
    }
    if (next[t] != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(step, " tensor ", k, ": '", spec.name(), "' is ",
                       next[t] == spec.byte_size() ? "already sent" : "partly sent in windows",
                       " (a local push sends each tensor's bytes once)"));
    }
    next[t] = spec.byte_size();
  }
  next_ = std::move(next);
  claimed_ += tensors.size();
  for (uint32_t t : tensors) claimed_tensor_[t] = true;
  return absl::OkStatus();
}

void LocalPushCopier::CompleteClaimed(uint32_t tensor, uint64_t xxh3) {
  sums_[tensor] = xxh3;
  --claimed_;
}

bool LocalPushCopier::Final(uint32_t t) const {
  return t < next_.size() && !claimed_tensor_[t] &&
         next_[t] == manifest_.tensors(static_cast<int>(t)).byte_size();
}

absl::Status CheckEndedShape(const v1::LocalPushWindow& window, const v1::Manifest& manifest) {
  const int n = window.ended_tensor_size();
  if (n != window.ended_xxh3_size()) {
    return absl::InvalidArgumentError(absl::StrCat("the window names ", n,
                                                   " ended tensors but carries ",
                                                   window.ended_xxh3_size(), " checksums"));
  }
  if (static_cast<size_t>(n) > kMaxWindowParts) {
    return absl::InvalidArgumentError(
        absl::StrCat("the window names ", n, " ended tensors; at most ", kMaxWindowParts));
  }
  for (int k = 0; k < n; ++k) {
    if (window.ended_tensor(k) >= static_cast<uint32_t>(manifest.tensors_size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("ended tensor ", k, ": index ", window.ended_tensor(k),
                       " is past the manifest's ", manifest.tensors_size(), " tensors"));
    }
  }
  return absl::OkStatus();
}

absl::Status VerifyEnded(const v1::LocalPushWindow& window, const v1::Manifest& manifest,
                         const LocalPushCopier& copier,
                         const std::function<void(uint32_t tensor, uint64_t xxh3)>& verified) {
  RETURN_IF_ERROR(CheckEndedShape(window, manifest));
  for (int k = 0; k < window.ended_tensor_size(); ++k) {
    const uint32_t t = window.ended_tensor(k);
    const v1::TensorSpec& spec = manifest.tensors(static_cast<int>(t));
    if (!copier.Final(t)) {
      return absl::InvalidArgumentError(
          absl::StrCat("ended tensor ", k, ": '", spec.name(), "' ",
                       copier.Claimed(t) ? "came by an ipc step" : "still has bytes to come"));
    }
    const uint64_t have = copier.Checksums()[t];
    if (have != window.ended_xxh3(k)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "'%s' has xxh3 %016x, the trainer says %016x", spec.name(), have, window.ended_xxh3(k)));
    }
  }
  if (verified) {
    for (int k = 0; k < window.ended_tensor_size(); ++k) {
      verified(window.ended_tensor(k), window.ended_xxh3(k));
    }
  }
  return absl::OkStatus();
}

bool LocalPushCopier::Complete() const {
  if (claimed_ != 0) return false;
  for (int i = 0; i < manifest_.tensors_size(); ++i) {
    if (next_[static_cast<size_t>(i)] != manifest_.tensors(i).byte_size()) return false;
  }
  return true;
}

absl::Status LocalPushCopier::CopyWindow(int fd, const std::vector<WindowPart>& parts,
                                         VersionStore::WriteLease& lease, int threads,
                                         uint64_t piece_bytes,
                                         const std::function<bool()>& cancelled) {
  piece_bytes = std::max<uint64_t>(piece_bytes, 4096);
  std::vector<uint64_t> next = next_;
  RETURN_IF_ERROR(CheckPartsInOrder(parts, manifest_, next));
  // One task per tensor of the window: its parts, in order. A part that starts a tensor and ends
  // it is hashed in one go; any other continues (or starts) the tensor's streaming state.
  std::map<uint32_t, std::vector<size_t>> by_tensor;
  for (size_t k = 0; k < parts.size(); ++k) by_tensor[parts[k].tensor].push_back(k);
  struct Task {
    uint32_t tensor;
    std::vector<size_t> parts;
    uint64_t bytes = 0;
    XXH3_state_t* state = nullptr;  // null: one piece, hashed in one go once copied
    std::unique_ptr<State> own;     // the state of a tensor that starts and ends in this window
  };
  std::vector<Task> tasks;
  tasks.reserve(by_tensor.size());
  for (auto& [t, ks] : by_tensor) {
    Task task{t, std::move(ks)};
    for (size_t k : task.parts) task.bytes += parts[k].bytes;
    const bool ends = next[t] == manifest_.tensors(static_cast<int>(t)).byte_size();
    auto it = open_.find(t);
    if (it != open_.end()) {
      task.state = it->second->xxh3.get();
    } else if (!ends || task.parts.size() > 1 || task.bytes > piece_bytes) {
      if (!ends && open_.size() >= kMaxOpenTensors) {
        return absl::InvalidArgumentError(
            absl::StrCat("more than ", kMaxOpenTensors, " tensors would be partly sent at once"));
      }
      auto state = std::make_unique<State>();
      state->xxh3.reset(XXH3_createState());
      if (state->xxh3 == nullptr || XXH3_64bits_reset(state->xxh3.get()) != XXH_OK) {
        return absl::ResourceExhaustedError("no memory for a hash state");
      }
      task.state = state->xxh3.get();
      if (ends) {
        task.own = std::move(state);
      } else {
        open_.emplace(t, std::move(state));
      }
    }
    tasks.push_back(std::move(task));
  }
  // The largest tasks first, so that the window's copy ends as early as it can.
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.bytes > b.bytes; });
  std::atomic<size_t> next_task{0};
  FirstFailure failure;
  auto fail = [&](absl::Status st) { failure.Record(std::move(st)); };
  auto work = [&] {
    for (size_t j = next_task.fetch_add(1); j < tasks.size() && !failure.stopped();
         j = next_task.fetch_add(1)) {
      Task& task = tasks[j];
      uint8_t* base = lease.data(static_cast<int>(task.tensor));
      for (size_t k : task.parts) {
        const WindowPart& p = parts[k];
        for (uint64_t done = 0; done < p.bytes;) {
          if (failure.stopped()) return;
          if (cancelled && cancelled()) {
            fail(absl::CancelledError("the trainer went away during the copy"));
            return;
          }
          if (!lease.Touch()) {
            fail(absl::AbortedError("the version was aborted during the copy"));
            return;
          }
          const uint64_t n = std::min(piece_bytes, p.bytes - done);
          uint8_t* dst = base + p.offset + done;
          uint64_t got = 0;
          while (got < n) {
            const ssize_t r = ::pread(fd, dst + got, static_cast<size_t>(n - got),
                                      static_cast<off_t>(p.window_offset + done + got));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
              fail(absl::FailedPreconditionError(absl::StrCat(
                  "reading the window at offset ", p.window_offset + done + got, ": ",
                  r < 0 ? std::strerror(errno) : "it ended early (the trainer shrank its memfd)")));
              return;
            }
            got += static_cast<uint64_t>(r);
          }
          if (task.state != nullptr) XXH3_64bits_update(task.state, dst, static_cast<size_t>(n));
          done += n;
        }
      }
      if (task.state == nullptr) {
        sums_[task.tensor] = XXH3_64bits(base, static_cast<size_t>(task.bytes));
      }
    }
  };
  threads = std::max(1, std::min<int>(threads, static_cast<int>(tasks.size())));
  RunOnThreads(threads, work);
  RETURN_IF_ERROR(failure.status());
  next_ = std::move(next);
  for (const Task& task : tasks) {
    const uint64_t size = manifest_.tensors(static_cast<int>(task.tensor)).byte_size();
    if (task.state != nullptr && next_[task.tensor] == size) {
      sums_[task.tensor] = XXH3_64bits_digest(task.state);
      open_.erase(task.tensor);  // frees the state (or none: `own` goes with the task)
    }
  }
  for (const WindowPart& p : parts) {
    RETURN_IF_ERROR(lease.MarkReceived(static_cast<int>(p.tensor), p.offset, p.bytes));
  }
  return absl::OkStatus();
}

}  // namespace ckpt::daemon
