#include "gpu/nccl_comm.h"

#include <algorithm>
#include <functional>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/scoped_device.h"

namespace ckpt::gpu {
namespace {

absl::StatusCode NcclResultToCode(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return absl::StatusCode::kOk;
    case ncclInvalidArgument:
      return absl::StatusCode::kInvalidArgument;
    case ncclInvalidUsage:
      return absl::StatusCode::kFailedPrecondition;
    case ncclRemoteError:
    case ncclInProgress:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

// Polls until no communicator in `comms` is ncclInProgress. OK when all are ncclSuccess; the first
// error otherwise; DEADLINE_EXCEEDED at `deadline`. Does not abort anything: callers decide.
absl::Status AwaitReady(absl::Span<const ncclComm_t> comms, absl::Time deadline, const char* what) {
  // Communicator init takes from ~100 ms to seconds, enqueueing microseconds: yield first, then
  // sleep with a backoff capped at 2 ms.
  constexpr int kYields = 32;
  absl::Duration sleep = absl::Microseconds(20);
  const absl::Time start = absl::Now();
  std::vector<bool> ready(comms.size(), false);
  for (int attempt = 0;; ++attempt) {
    size_t pending = 0;
    for (size_t i = 0; i < comms.size(); ++i) {
      if (ready[i]) continue;
      ncclResult_t state = ncclSuccess;
      NCCL_RETURN_IF_ERROR(ncclCommGetAsyncError(comms[i], &state));
      if (state == ncclSuccess) {
        ready[i] = true;
      } else if (state == ncclInProgress) {
        ++pending;
      } else {
        return Annotate(NcclStatus(state, "ncclCommGetAsyncError", __FILE__, __LINE__),
                        absl::StrCat(what, ": rank index ", i, " failed"));
      }
    }
    if (pending == 0) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": ", pending, " of ", comms.size(),
                                                      " NCCL ranks not ready after ",
                                                      absl::FormatDuration(now - start)));
    }
    if (attempt < kYields) {
      std::this_thread::yield();
    } else {
      absl::SleepFor(std::min(sleep, deadline - now));
      sleep = std::min(sleep * 2, absl::Milliseconds(2));
    }
  }
}

bool Accepted(ncclResult_t result) { return result == ncclSuccess || result == ncclInProgress; }

ncclConfig_t NonBlockingConfig() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  // Non-blocking: init and collectives return ncclInProgress instead of blocking inside NCCL, so
  // that we can bound every wait and abort on timeout.
  config.blocking = 0;
  return config;
}

}  // namespace

absl::Status NcclStatus(ncclResult_t result, const char* expr, const char* file, int line) {
  if (result == ncclSuccess) return absl::OkStatus();
  const char* last = ncclGetLastError(nullptr);  // thread's last NCCL error; comm is unused
  std::string message =
      absl::StrCat(expr, " at ", file, ":", line, ": ", ncclGetErrorString(result), " (",
                   static_cast<int>(result), ")");
  if (last != nullptr && last[0] != '\0') absl::StrAppend(&message, "; last NCCL error: ", last);
  return absl::Status(NcclResultToCode(result), message);
}

std::string NcclComm::LibraryVersion() {
  int version = 0;
  if (ncclGetVersion(&version) != ncclSuccess) return "unknown";
  // NCCL_VERSION(X,Y,Z) = X*10000 + Y*100 + Z since 2.9.
  return absl::StrCat(version / 10000, ".", (version / 100) % 100, ".", version % 100);
}

absl::StatusOr<ncclUniqueId> NcclComm::NewUniqueId() {
  ncclUniqueId id;
  NCCL_RETURN_IF_ERROR(ncclGetUniqueId(&id));
  return id;
}

absl::StatusOr<std::vector<NcclComm>> NcclComm::CreateLocal(absl::Span<const int> devices,
                                                            absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  if (devices.empty()) return absl::InvalidArgumentError("NcclComm::CreateLocal: no devices");
  if (std::set<int>(devices.begin(), devices.end()).size() != devices.size() ||
      *std::min_element(devices.begin(), devices.end()) < 0) {
    return absl::InvalidArgumentError(
        "NcclComm::CreateLocal: devices must be distinct, non-negative ordinals");
  }
  const int n = static_cast<int>(devices.size());
  ASSIGN_OR_RETURN(ncclUniqueId id, NewUniqueId());

  std::vector<ncclComm_t> raw(devices.size(), nullptr);
  std::vector<ncclConfig_t> configs(devices.size(), NonBlockingConfig());
  absl::Status enqueue_status;
  NCCL_RETURN_IF_ERROR(ncclGroupStart());
  for (int i = 0; i < n; ++i) {
    // NCCL takes the rank's device from the calling thread's current device.
    absl::StatusOr<ScopedDevice> scope = ScopedDevice::Create(devices[i]);
    if (!scope.ok()) {
      if (enqueue_status.ok()) enqueue_status = scope.status();
      continue;
    }
    const ncclResult_t result = ncclCommInitRankConfig(&raw[i], n, id, i, &configs[i]);
    if (!Accepted(result) && enqueue_status.ok()) {
      enqueue_status = NcclStatus(result, "ncclCommInitRankConfig(&raw[i], n, id, i, &configs[i])",
                                  __FILE__, __LINE__);
    }
  }
  // The group must be closed even after an error, or this thread's NCCL state stays in a group.
  const ncclResult_t end = ncclGroupEnd();
  if (!Accepted(end) && enqueue_status.ok()) {
    enqueue_status = NcclStatus(end, "ncclGroupEnd()", __FILE__, __LINE__);
  }

  // From here the owners abort on destruction if anything fails.
  std::vector<NcclComm> comms;
  comms.reserve(devices.size());
  std::vector<ncclComm_t> created;
  for (int i = 0; i < n; ++i) {
    comms.push_back(NcclComm(raw[i], i, n, devices[i]));
    comms.back().failed_ = true;  // until proven ready
    if (raw[i] != nullptr) created.push_back(raw[i]);
  }
  if (enqueue_status.ok() && created.size() != devices.size()) {
    enqueue_status = absl::InternalError("NcclComm::CreateLocal: NCCL returned no communicator");
  }
  if (!enqueue_status.ok()) {
    for (NcclComm& comm : comms) comm.Abort();
    return Annotate(enqueue_status, "NcclComm::CreateLocal");
  }
  absl::Status ready = AwaitReady(created, deadline, "NcclComm::CreateLocal");
  if (!ready.ok()) {
    for (NcclComm& comm : comms) comm.Abort();
    return ready;
  }
  for (NcclComm& comm : comms) comm.failed_ = false;
  return comms;
}

absl::StatusOr<NcclComm> NcclComm::CreateRank(int device, int nranks, int rank,
                                              const ncclUniqueId& id, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  if (nranks <= 0 || rank < 0 || rank >= nranks) {
    return absl::InvalidArgumentError(
        absl::StrCat("NcclComm::CreateRank: rank ", rank, " of ", nranks));
  }
  ncclComm_t raw = nullptr;
  ncclConfig_t config = NonBlockingConfig();
  {
    ASSIGN_OR_RETURN(ScopedDevice scope, ScopedDevice::Create(device));
    const ncclResult_t result = ncclCommInitRankConfig(&raw, nranks, id, rank, &config);
    if (!Accepted(result)) {
      NcclComm failed(raw, rank, nranks, device);
      failed.Abort();
      return NcclStatus(result, "ncclCommInitRankConfig(&raw, nranks, id, rank, &config)", __FILE__,
                        __LINE__);
    }
  }
  if (raw == nullptr) return absl::InternalError("NcclComm::CreateRank: NCCL returned no comm");
  NcclComm comm(raw, rank, nranks, device);
  const ncclComm_t one[] = {raw};
  absl::Status ready = AwaitReady(one, deadline, "NcclComm::CreateRank");
  if (!ready.ok()) {
    comm.Abort();
    return ready;
  }
  return comm;
}

absl::Status NcclComm::Broadcast(const void* send, void* recv, size_t bytes, int root,
                                 cudaStream_t stream, absl::Duration timeout) {
  NcclBroadcastBuffers buffers{send, recv, stream};
  return GroupBroadcast(absl::MakeSpan(this, 1), absl::MakeConstSpan(&buffers, 1), bytes, root,
                        timeout);
}

absl::Status NcclComm::RunGroup(absl::Span<NcclComm> comms, absl::Span<const int> roots,
                                const char* what, absl::Time deadline,
                                const std::function<absl::Status()>& enqueue) {
  for (const NcclComm& comm : comms) {
    if (comm.empty() || comm.failed_) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": empty or failed communicator (recreate it)"));
    }
    for (int root : roots) {
      if (root < 0 || root >= comm.nranks_) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": root ", root, " out of range [0, ", comm.nranks_, ")"));
      }
    }
  }
  NCCL_RETURN_IF_ERROR(ncclGroupStart());
  absl::Status status = enqueue();
  const ncclResult_t end = ncclGroupEnd();
  if (!Accepted(end) && status.ok()) status = NcclStatus(end, "ncclGroupEnd()", __FILE__, __LINE__);
  if (status.ok()) {
    std::vector<ncclComm_t> raw;
    raw.reserve(comms.size());
    for (const NcclComm& comm : comms) raw.push_back(comm.comm_);
    status = AwaitReady(raw, deadline, absl::StrCat(what, " (enqueue)").c_str());
  }
  if (!status.ok()) {
    // A partially enqueued collective would block the ranks that did enqueue; abort them all.
    for (NcclComm& comm : comms) comm.Abort();
  }
  return status;
}

absl::Status NcclComm::GroupBroadcast(absl::Span<NcclComm> comms,
                                      absl::Span<const NcclBroadcastBuffers> buffers, size_t bytes,
                                      int root, absl::Duration timeout) {
  if (comms.empty() || comms.size() != buffers.size()) {
    return absl::InvalidArgumentError("NcclComm::GroupBroadcast: one buffer set per rank needed");
  }
  return RunGroup(comms, {root}, "NcclComm::GroupBroadcast", absl::Now() + timeout, [&] {
    for (size_t i = 0; bytes > 0 && i < comms.size(); ++i) {
      const ncclResult_t result = ncclBroadcast(buffers[i].send, buffers[i].recv, bytes, ncclUint8,
                                                root, comms[i].comm_, buffers[i].stream);
      if (!Accepted(result)) {
        return NcclStatus(result, "ncclBroadcast(send, recv, bytes, ncclUint8, root, comm, stream)",
                          __FILE__, __LINE__);
      }
    }
    return absl::OkStatus();
  });
}

absl::Status NcclComm::GroupBroadcastInPlace(absl::Span<NcclComm> comms,
                                             absl::Span<void* const> bases,
                                             absl::Span<const cudaStream_t> streams,
                                             absl::Span<const InPlaceOp> ops,
                                             absl::Duration timeout) {
  if (comms.empty() || comms.size() != bases.size() || comms.size() != streams.size()) {
    return absl::InvalidArgumentError(
        "NcclComm::GroupBroadcastInPlace: one base pointer and stream per rank needed");
  }
  std::vector<int> roots;
  for (const InPlaceOp& op : ops) roots.push_back(op.root);
  return RunGroup(comms, roots, "NcclComm::GroupBroadcastInPlace", absl::Now() + timeout, [&] {
    for (const InPlaceOp& op : ops) {
      if (op.bytes == 0) continue;
      for (size_t i = 0; i < comms.size(); ++i) {
        void* data = static_cast<uint8_t*>(bases[i]) + op.offset;
        const ncclResult_t result =
            ncclBroadcast(data, data, op.bytes, ncclUint8, op.root, comms[i].comm_, streams[i]);
        if (!Accepted(result)) {
          return NcclStatus(result,
                            "ncclBroadcast(data, data, bytes, ncclUint8, root, comm, stream)",
                            __FILE__, __LINE__);
        }
      }
    }
    return absl::OkStatus();
  });
}

absl::Status NcclComm::CheckAsyncError() const {
  if (comm_ == nullptr) return absl::FailedPreconditionError("NcclComm: empty communicator");
  ncclResult_t state = ncclSuccess;
  NCCL_RETURN_IF_ERROR(ncclCommGetAsyncError(comm_, &state));
  if (state == ncclSuccess || state == ncclInProgress) return absl::OkStatus();
  return Annotate(NcclStatus(state, "ncclCommGetAsyncError(comm_, &state)", __FILE__, __LINE__),
                  absl::StrCat("NCCL rank ", rank_, " on device ", device_));
}

void NcclComm::Abort() {
  if (comm_ != nullptr) (void)ncclCommAbort(comm_);
  comm_ = nullptr;
  rank_ = -1;
  nranks_ = 0;
  device_ = -1;
  failed_ = false;
}

NcclComm::~NcclComm() { Reset(); }

NcclComm::NcclComm(NcclComm&& other) noexcept
    : comm_(std::exchange(other.comm_, nullptr)),
      rank_(std::exchange(other.rank_, -1)),
      nranks_(std::exchange(other.nranks_, 0)),
      device_(std::exchange(other.device_, -1)),
      failed_(std::exchange(other.failed_, false)) {}

NcclComm& NcclComm::operator=(NcclComm&& other) noexcept {
  if (this != &other) {
    Reset();
    comm_ = std::exchange(other.comm_, nullptr);
    rank_ = std::exchange(other.rank_, -1);
    nranks_ = std::exchange(other.nranks_, 0);
    device_ = std::exchange(other.device_, -1);
    failed_ = std::exchange(other.failed_, false);
  }
  return *this;
}

void NcclComm::Reset() {
  if (comm_ == nullptr) return;
  ncclResult_t state = ncclSuccess;
  const bool healthy =
      !failed_ && ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclSuccess;
  if (healthy) {
    // ncclCommDestroy is local (no barrier with other ranks); it waits for this rank's queued work.
    // After a failed destroy the handle may already be freed: do not touch it again.
    (void)ncclCommDestroy(comm_);
  } else {
    (void)ncclCommAbort(comm_);
  }
  comm_ = nullptr;
  rank_ = -1;
  nranks_ = 0;
  device_ = -1;
  failed_ = false;
}

}  // namespace ckpt::gpu
