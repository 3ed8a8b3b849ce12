#include "client/local_push.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "client/cuda_driver.h"
#include "client/descriptor_socket.h"
#include "common/checked_math.h"
#include "common/parallel.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "common/xxh3.h"

namespace ckpt::client {

std::vector<WindowPlan> PlanWindows(const std::vector<TensorView>& tensors, uint64_t window_bytes,
                                    int lanes, size_t max_parts, const std::vector<bool>* skip) {
  std::vector<WindowPlan> windows;
  if (window_bytes == 0 || max_parts == 0) return windows;
  constexpr uint64_t kMinLaneBytes = uint64_t{1} << 20;
  const uint64_t most_lanes = std::max<uint64_t>(1, window_bytes / kMinLaneBytes);
  const size_t n_lanes = static_cast<size_t>(
      std::min<uint64_t>(most_lanes, static_cast<uint64_t>(std::max(1, lanes))));
  struct Lane {
    bool busy = false;
    uint32_t tensor = 0;
    uint64_t offset = 0;
  };
  std::vector<Lane> lane(n_lanes);
  size_t next = 0;  // the next tensor no lane has taken
  auto take_next = [&](Lane& l) {
    while (next < tensors.size() &&
           (tensors[next].bytes == 0 || (skip != nullptr && (*skip)[next]))) {
      ++next;
    }
    if (next == tensors.size()) return false;
    l = {true, static_cast<uint32_t>(next++), 0};
    return true;
  };
  while (true) {
    WindowPlan w;
    for (size_t j = 0; j < n_lanes && w.parts.size() < max_parts; ++j) {
      const uint64_t share =
          window_bytes / n_lanes + (j + 1 == n_lanes ? window_bytes % n_lanes : 0);
      uint64_t used = 0;
      while (used < share && w.parts.size() < max_parts) {
        Lane& l = lane[j];
        if (!l.busy && !take_next(l)) break;
        const uint64_t take = std::min(tensors[l.tensor].bytes - l.offset, share - used);
        w.parts.push_back({l.tensor, l.offset, take, w.bytes, static_cast<uint32_t>(j)});
        w.bytes += take;
        used += take;
        l.offset += take;
        if (l.offset == tensors[l.tensor].bytes) l.busy = false;
      }
    }
    if (w.parts.empty()) break;
    windows.push_back(std::move(w));
  }
  return windows;
}

namespace {

constexpr absl::Duration kTick = absl::Milliseconds(50);
// Commit verifies every checksum on the daemon: its share of the deadline grows with the bytes.
constexpr double kCommitVerifyBytesPerSecond = 2.0 * (1ull << 30);

}  // namespace

class PushWindow {
 public:
  static absl::StatusOr<std::unique_ptr<PushWindow>> Create(uint64_t bytes) {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t size = (std::max<uint64_t>(bytes, 1) + page - 1) / page * page;
    ScopedFd fd(::memfd_create("ckpt-push-window", MFD_CLOEXEC));
    if (!fd.valid()) {
      return absl::UnavailableError(absl::StrCat("memfd_create: ", std::strerror(errno)));
    }
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("sizing a ", FormatBytes(size), " push window: ", std::strerror(errno)));
    }
    // MAP_POPULATE: the pages are made here in one go rather than by a fault per page as the
    // window is first filled.
    void* map =
        ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    if (map == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("mapping a ", FormatBytes(size), " push window: ", std::strerror(errno)));
    }
    return std::unique_ptr<PushWindow>(
        new PushWindow(std::move(fd), static_cast<uint8_t*>(map), size));
  }
  ~PushWindow() {
    if (pinned_by_ != nullptr) pinned_by_->UnregisterHost(pinned_device_, map_);
    ::munmap(map_, size_);
  }

  // Page-locks the window (once) so that device-to-host copies into it run at the link's rate.
  // A window that cannot be pinned still works (the copies are slower).
  void Pin(const CudaDriver* cuda, int device) {
    if (pinned_by_ != nullptr || pin_failed_) return;
    if (cuda->RegisterHost(device, map_, static_cast<size_t>(size_)).ok()) {
      pinned_by_ = cuda;
      pinned_device_ = device;
    } else {
      pin_failed_ = true;
    }
  }
  PushWindow(const PushWindow&) = delete;
  PushWindow& operator=(const PushWindow&) = delete;

  uint8_t* data() const { return map_; }
  int fd() const { return fd_.get(); }
  uint64_t size() const { return size_; }

 private:
  PushWindow(ScopedFd fd, uint8_t* map, uint64_t size)
      : fd_(std::move(fd)), map_(map), size_(size) {}
  ScopedFd fd_;
  uint8_t* map_;
  uint64_t size_;
  const CudaDriver* pinned_by_ = nullptr;  // set while registered
  int pinned_device_ = -1;
  bool pin_failed_ = false;
};

WindowPool::WindowPool() = default;
WindowPool::~WindowPool() = default;

absl::StatusOr<std::unique_ptr<PushWindow>> WindowPool::Take(uint64_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    for (auto it = spare_.begin(); it != spare_.end(); ++it) {
      if ((*it)->size() >= bytes) {
        std::unique_ptr<PushWindow> w = std::move(*it);
        spare_.erase(it);
        return w;
      }
    }
    spare_.clear();  // too small for this push's windows: make room for the new ones
  }
  return PushWindow::Create(bytes);
}

void WindowPool::Give(std::unique_ptr<PushWindow> window) {
  absl::MutexLock lock(&mu_);
  if (spare_.size() < 2) spare_.push_back(std::move(window));
}

void WindowPool::Release() {
  std::vector<std::unique_ptr<PushWindow>> freed;
  absl::MutexLock lock(&mu_);
  freed.swap(spare_);
}

namespace {

// Bytes one thread copies at a time.
constexpr uint64_t kFillStep = uint64_t{1} << 20;

using HashState = Xxh3State;

// Whether an ipc or pull step of `tensors` tensors and `bytes` takes no tensor of `more` bytes:
// steps hold at most kMaxIpcTensors and kMaxIpcStepBytes (a larger tensor goes alone).
bool StepFull(int tensors, uint64_t bytes, uint64_t more) {
  return static_cast<size_t>(tensors) == kMaxIpcTensors ||
         (bytes > 0 && bytes + more > kMaxIpcStepBytes);
}

// Copies the parts of `plan` from the tensors into `window`, one thread per lane, each lane's
// parts in order, and hashes (XXH3-64) each piece right after copying it, while it is in cache:
// from the source for host tensors, from the window for CUDA tensors (copied device-to-host
// through `cuda`, which is set when the plan has any). A tensor that goes on in the next window
// keeps its state in `open`; a tensor's last part writes its checksum into `hashes`.
absl::Status FillWindow(const WindowPlan& plan, const std::vector<TensorView>& tensors,
                        const PushWindow& window, std::map<uint32_t, HashState>& open,
                        std::vector<uint64_t>& hashes, const CudaDriver* cuda) {
  // The parts of each lane (they are laid out lane by lane), and each part's hash state, made
  // before the threads start: `open` is not touched concurrently.
  std::vector<std::pair<size_t, size_t>> lanes;  // [begin, end) in plan.parts
  std::vector<XXH3_state_t*> states(plan.parts.size(), nullptr);
  for (size_t k = 0; k < plan.parts.size(); ++k) {
    const WindowPartRef& p = plan.parts[k];
    if (lanes.empty() || plan.parts[lanes.back().first].lane != p.lane) lanes.push_back({k, k});
    lanes.back().second = k + 1;
    const bool whole = p.offset == 0 && p.bytes == tensors[p.tensor].bytes;
    if (whole && p.bytes <= kFillStep) continue;  // hashed in one go
    auto it = open.find(p.tensor);
    if (it == open.end()) {
      HashState state(XXH3_createState());
      if (state == nullptr || XXH3_64bits_reset(state.get()) != XXH_OK) {
        return absl::ResourceExhaustedError("no memory for a hash state");
      }
      it = open.emplace(p.tensor, std::move(state)).first;
    }
    states[k] = it->second.get();
  }
  std::atomic<size_t> next{0};
  FirstFailure failure;
  // Copies n bytes at `at` of part p's tensor to dst and returns where to hash them from.
  auto copy = [&](const WindowPartRef& p, uint64_t at, uint8_t* dst,
                  size_t n) -> absl::StatusOr<const uint8_t*> {
    const TensorView& t = tensors[p.tensor];
    if (t.device < 0) {
      const uint8_t* src = static_cast<const uint8_t*>(t.data) + at;
      std::memcpy(dst, src, n);
      return src;
    }
    RETURN_IF_ERROR(cuda->CopyToHost(t.device, dst, reinterpret_cast<uint64_t>(t.data) + at, n));
    return dst;
  };
  auto work = [&] {
    for (size_t j = next.fetch_add(1); j < lanes.size() && !failure.stopped();
         j = next.fetch_add(1)) {
      for (size_t k = lanes[j].first; k < lanes[j].second; ++k) {
        const WindowPartRef& p = plan.parts[k];
        uint8_t* dst = window.data() + p.window_offset;
        for (uint64_t done = 0; done < p.bytes; done += kFillStep) {
          const size_t n = static_cast<size_t>(
              states[k] == nullptr ? p.bytes : std::min(kFillStep, p.bytes - done));
          absl::StatusOr<const uint8_t*> from = copy(p, p.offset + done, dst + done, n);
          if (!from.ok()) {
            failure.Record(
                Annotate(from.status(), absl::StrCat("tensor '", tensors[p.tensor].name, "'")));
            return;
          }
          if (states[k] == nullptr) {
            hashes[p.tensor] = XXH3_64bits(*from, n);
            break;
          }
          XXH3_64bits_update(states[k], *from, n);
        }
        if (states[k] != nullptr && p.offset + p.bytes == tensors[p.tensor].bytes) {
          hashes[p.tensor] = XXH3_64bits_digest(states[k]);
        }
      }
    }
  };
  const int threads = static_cast<int>(lanes.size());
  RunOnThreads(threads, work);
  RETURN_IF_ERROR(failure.status());
  for (const WindowPartRef& p : plan.parts) {
    if (p.offset + p.bytes == tensors[p.tensor].bytes) open.erase(p.tensor);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::VersionInfo> PushLocally(v1::Trainer::Stub* stub, const Endpoint& endpoint,
                                            const std::vector<TensorView>& tensors,
                                            const PushOptions& options, WindowPool* pool,
                                            LocalUnavailable* unavailable) {
  auto not_there = [&](const absl::Status& s) {
    if (unavailable != nullptr) unavailable->unavailable = true;
    return Annotate(s, "local push");
  };
  if (endpoint.unix_path.empty()) {
    return not_there(absl::FailedPreconditionError(
        "transport local needs the daemon's Unix socket (this client talks TCP)"));
  }
  auto cancelled = [&] { return options.cancel != nullptr && options.cancel->load(); };
  uint64_t total = 0;
  for (const TensorView& t : tensors) total += t.bytes;
  const int threads = HashThreadCount(options.hash_threads);
  // The GPUs of CUDA tensors (this process's ordinal -> UUID), offered to the daemon at begin.
  const CudaDriver* cuda = nullptr;
  std::map<int, std::string> gpu_uuid;
  for (const TensorView& t : tensors) {
    if (t.device >= 0 && t.bytes > 0) gpu_uuid[t.device];
  }
  if (!gpu_uuid.empty()) {
    absl::StatusOr<const CudaDriver*> driver = CudaDriver::Get();
    if (!driver.ok()) return Annotate(driver.status(), "local push");
    cuda = *driver;
    for (auto& [device, uuid] : gpu_uuid) {
      absl::StatusOr<std::string> id = cuda->GpuUuid(device);
      if (!id.ok()) return Annotate(id.status(), "local push");
      uuid = *std::move(id);
    }
  }
  // Known once the daemon said which GPUs it copies from itself (after begin).
  std::vector<WindowPlan> plans;

  // Window 0 is made (and presented, below) before the begin, unless every byte is on a GPU (and
  // may need no window at all); window 1 once the plans need it. No window is larger than
  // window_bytes, nor than all the bytes.
  const uint64_t window_size = std::max<uint64_t>(1, std::min(options.window_bytes, total));
  std::vector<std::unique_ptr<PushWindow>> windows;
  auto take_window = [&]() -> absl::Status {
    auto w = pool != nullptr ? pool->Take(window_size) : PushWindow::Create(window_size);
    if (!w.ok()) return w.status();
    windows.push_back(*std::move(w));
    return absl::OkStatus();
  };
  bool all_on_gpu = true;
  for (const TensorView& t : tensors) all_on_gpu = all_on_gpu && (t.bytes == 0 || t.device >= 0);
  if (total > 0 && !all_on_gpu) {
    if (absl::Status s = take_window(); !s.ok()) return not_there(s);
  }
  const absl::Duration present_timeout = std::min(options.timeout, absl::Seconds(10));
  std::optional<Presentation> presented[2];
  auto present = [&](size_t k) -> absl::Status {
    auto p = PresentOnDescriptorSocket(endpoint.unix_path, {windows[k % 2]->fd()},
                                       absl::Now() + present_timeout);
    if (!p.ok()) return Annotate(p.status(), absl::StrCat("passing window ", k, "'s memfd"));
    presented[k % 2] = *std::move(p);
    return absl::OkStatus();
  };
  // Checksums: tensors of 0 bytes now, the others as their last part is copied.
  std::vector<uint64_t> hashes(tensors.size(), XXH3_64bits("", 0));
  auto window_message = [&](size_t k) {
    v1::LocalPushRequest m;
    v1::LocalPushWindow* w = m.mutable_window();
    w->set_fd_nonce(presented[k % 2]->nonce);
    for (const WindowPartRef& p : plans[k].parts) {
      w->add_part_tensor(p.tensor);
      w->add_part_offset(p.offset);
      w->add_part_bytes(p.bytes);
      // A tensor that ends here is hashed (FillWindow): the daemon verifies it at once, so an
      // update that follows may send it before the commit.
      if (p.offset + p.bytes == tensors[p.tensor].bytes) {
        w->add_ended_tensor(p.tensor);
        w->add_ended_xxh3(hashes[p.tensor]);
      }
    }
    return m;
  };

  // The first window's memfd is presented before anything is begun: if this process cannot use
  // the descriptor socket, "auto" goes to gRPC with nothing to undo. (The daemon reads a window
  // only once its message comes, so the window is filled after the begin: a refused begin costs
  // no copy.)
  if (!windows.empty()) {
    if (absl::Status s = present(0); !s.ok()) {
      return s.code() == absl::StatusCode::kUnavailable ? not_there(s) : Annotate(s, "local push");
    }
  }
  if (cancelled()) return absl::CancelledError("push cancelled before it began");

  grpc::ClientContext context;
  const absl::Duration hard_limit =
      options.timeout + absl::Seconds(static_cast<double>(total) / options.min_bytes_per_second) +
      absl::Seconds(static_cast<double>(total) / kCommitVerifyBytesPerSecond);
  context.set_deadline(absl::ToChronoTime(absl::Now() + hard_limit));
  // A watcher cancels the stream when the push is cancelled or the daemon makes no progress for
  // `timeout`, so that a blocked Read or Write returns.
  std::atomic<int64_t> last_progress_ns{absl::ToUnixNanos(absl::Now())};
  std::atomic<bool> stalled{false};
  // While the daemon copies from this process's GPU memory, a cancel waits for the copy to end:
  // the call must not return (and the caller free its tensors) while the daemon still reads them.
  std::atomic<bool> gpu_copy_in_flight{false};
  absl::Notification done_watching;
  std::thread watcher([&] {
    while (!done_watching.WaitForNotificationWithTimeout(kTick)) {
      const absl::Duration idle = absl::Now() - absl::FromUnixNanos(last_progress_ns.load());
      if (idle > options.timeout) stalled.store(true);
      if (stalled.load() || (cancelled() && !gpu_copy_in_flight.load())) {
        context.TryCancel();
        return;
      }
    }
  });
  struct StopWatcher {
    absl::Notification& done;
    std::thread& thread;
    ~StopWatcher() {
      done.Notify();
      thread.join();
    }
  } stop_watcher{done_watching, watcher};
  auto touch = [&] { last_progress_ns.store(absl::ToUnixNanos(absl::Now())); };

  std::unique_ptr<grpc::ClientReaderWriter<v1::LocalPushRequest, v1::LocalPushReply>> stream =
      stub->PushLocal(&context);
  uint64_t version = 0;
  // The stream's end: the daemon's status, or ours when we cancelled it.
  auto finish = [&](const char* step) -> absl::Status {
    grpc::Status s = stream->Finish();
    if (cancelled()) return absl::CancelledError("push cancelled");
    if (stalled.load()) {
      return absl::DeadlineExceededError(absl::StrCat("the daemon made no progress for ",
                                                      absl::FormatDuration(options.timeout),
                                                      " (at ", step, ")"));
    }
    if (s.ok()) {
      return absl::InternalError(absl::StrCat("PushLocal ended at ", step, " without an answer"));
    }
    return FromGrpc(s, "PushLocal", endpoint);
  };
  auto context_text = [&] {
    return version == 0 ? absl::StrCat("local push of ", tensors.size(), " tensor(s) (",
                                       FormatBytes(total), ")")
                        : absl::StrCat("local push of version ", version);
  };

  v1::LocalPushRequest begin;
  *begin.mutable_begin()->mutable_manifest() = BuildManifest(tensors, {});
  begin.mutable_begin()->set_version(options.version);
  begin.mutable_begin()->set_label(options.label);
  begin.mutable_begin()->set_update(options.update);
  if (options.part_count != 0) {
    begin.mutable_begin()->mutable_part()->set_index(options.part_index);
    begin.mutable_begin()->mutable_part()->set_count(options.part_count);
  }
  // Host tensors may be read by the daemon straight out of this process's memory (one copy).
  bool any_host = false;
  for (const TensorView& t : tensors) any_host = any_host || (t.device < 0 && t.bytes > 0);
  begin.mutable_begin()->set_pull(any_host);
  for (const auto& [device, uuid] : gpu_uuid) begin.mutable_begin()->add_ipc_gpus(uuid);
  v1::LocalPushReply reply;
  if (!stream->Write(begin) || !stream->Read(&reply)) {
    absl::Status s = finish("begin");
    if (s.code() == absl::StatusCode::kUnimplemented) return not_there(s);  // an older daemon
    return Annotate(s, context_text());
  }
  if (reply.step_case() != v1::LocalPushReply::kBegun || reply.begun().version() == 0) {
    context.TryCancel();
    (void)stream->Finish();
    return absl::InternalError("the daemon answered begin without a version (a daemon bug)");
  }
  version = reply.begun().version();
  touch();
  // Every way out but the commit aborts the version at once (the daemon aborts it too when the
  // stream ends, but a moment after this call returned): nothing is left behind when it returns.
  bool committed = false;
  struct AbortUnlessCommitted {
    v1::Trainer::Stub* stub;
    uint64_t version;
    std::string token;
    const bool& committed;
    absl::Duration timeout;
    ~AbortUnlessCommitted() {
      if (!committed) AbortQuietly(stub, version, token, timeout);
    }
  } abort_guard{stub, version, reply.begun().upload_token(), committed, options.timeout};
  std::map<uint32_t, HashState> open;

  // The daemon's error for a failure of ours after the begin: the stream is cancelled (which
  // aborts the version there too).
  auto give_up = [&](const absl::Status& s) {
    context.TryCancel();
    (void)stream->Finish();
    return Annotate(s, context_text());
  };

  // CUDA tensors on the GPUs the daemon drives go in ipc steps, the rest in windows.
  const std::set<std::string> accepted(reply.begun().ipc_gpus().begin(),
                                       reply.begun().ipc_gpus().end());
  std::vector<bool> via_ipc(tensors.size(), false);
  std::vector<v1::LocalPushRequest> ipc_steps;
  std::vector<uint64_t> ipc_step_bytes;
  bool device_in_windows = false;
  int pin_device = -1;
  {
    std::map<std::pair<int, uint64_t>, absl::StatusOr<std::string>> handles;  // (device, base)
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorView& t = tensors[i];
      if (t.device < 0 || t.bytes == 0) continue;
      pin_device = t.device;
      const std::string& uuid = gpu_uuid[t.device];
      if (accepted.count(uuid) == 0) {
        device_in_windows = true;
        continue;
      }
      const uint64_t ptr = reinterpret_cast<uint64_t>(t.data);
      absl::StatusOr<CudaDriver::Allocation> a = cuda->AllocationOf(t.device, ptr);
      if (!a.ok()) return give_up(Annotate(a.status(), absl::StrCat("tensor '", t.name, "'")));
      if (!RangeWithin(ptr - a->base, t.bytes, a->size)) {
        // The tensor spans several mappings (cuMemMap: PyTorch's expandable segments map memory
        // in granules): no one handle covers it, so the lanes copy it into windows.
        device_in_windows = true;
        continue;
      }
      auto h = handles.find({t.device, a->base});
      if (h == handles.end()) {
        h = handles.emplace(std::make_pair(t.device, a->base), cuda->IpcHandle(t.device, a->base))
                .first;
      }
      if (!h->second.ok()) {  // memory that cannot be shared: the lanes copy it into windows
        device_in_windows = true;
        continue;
      }
      // Steps of at most kMaxIpcStepBytes: each answer is progress (and proof of life).
      if (ipc_steps.empty() ||
          StepFull(ipc_steps.back().ipc().tensors_size(), ipc_step_bytes.back(), t.bytes)) {
        ipc_steps.emplace_back();
        ipc_step_bytes.push_back(0);
      }
      v1::IpcTensor* it = ipc_steps.back().mutable_ipc()->add_tensors();
      it->set_tensor(static_cast<uint32_t>(i));
      it->set_gpu(uuid);
      it->set_handle(*h->second);
      it->set_offset(ptr - a->base);
      ipc_step_bytes.back() += t.bytes;
      via_ipc[i] = true;
    }
  }
  // Host tensors the daemon reads out of this process's memory itself (pull steps), when it
  // offered to: a probe first (the kernel may not let it read this process: then windows), then
  // steps of at most kMaxIpcStepBytes. The nonce lies in this process's memory, where the daemon
  // reads it to know whose memory it reads.
  const std::string pull_nonce = reply.begun().pull_nonce();
  std::vector<v1::LocalPushRequest> pull_steps;
  std::vector<uint64_t> pull_step_bytes;
  uint64_t pulls_answered = 0;
  // Sends `m` and reads its `pulled` answer.
  auto pull = [&](const v1::LocalPushRequest& m, const char* what) -> absl::StatusOr<bool> {
    if (!stream->Write(m) || !stream->Read(&reply)) return Annotate(finish(what), context_text());
    if (reply.step_case() != v1::LocalPushReply::kPulled ||
        reply.pulled().steps() != pulls_answered + 1) {
      context.TryCancel();
      (void)stream->Finish();
      return absl::InternalError("the daemon answered a pull step out of order (a daemon bug)");
    }
    ++pulls_answered;
    touch();
    return reply.pulled().ok();
  };
  if (!pull_nonce.empty() && any_host) {
    v1::LocalPushRequest probe;
    probe.mutable_pull()->set_nonce_address(reinterpret_cast<uint64_t>(pull_nonce.data()));
    ASSIGN_OR_RETURN(bool can, pull(probe, "a pull probe"));
    for (size_t i = 0; can && i < tensors.size(); ++i) {
      const TensorView& t = tensors[i];
      if (t.device >= 0 || t.bytes == 0) continue;
      if (pull_steps.empty() ||
          StepFull(pull_steps.back().pull().tensors_size(), pull_step_bytes.back(), t.bytes)) {
        pull_steps.emplace_back();
        pull_steps.back().mutable_pull()->set_nonce_address(
            reinterpret_cast<uint64_t>(pull_nonce.data()));
        pull_step_bytes.push_back(0);
      }
      v1::PullTensor* pt = pull_steps.back().mutable_pull()->add_tensors();
      pt->set_tensor(static_cast<uint32_t>(i));
      pt->set_address(reinterpret_cast<uint64_t>(t.data));
      pull_step_bytes.back() += t.bytes;
      via_ipc[i] = true;  // not in a window
    }
  }
  plans = PlanWindows(tensors, options.window_bytes, threads, kMaxWindowParts, &via_ipc);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (via_ipc[i]) hashes[i] = 0;  // not used: the daemon hashes what it copies
  }

  uint64_t acked = 0;      // windows the daemon has copied
  uint64_t ipc_acked = 0;  // ipc steps the daemon has copied
  uint64_t bytes_done = 0;
  uint64_t reported = 0;
  auto report = [&] {
    if (options.progress && bytes_done < total && bytes_done != reported) {
      options.progress(bytes_done, total);
      reported = bytes_done;
    }
  };
  // Reads answers until `want` windows are copied (and every ipc step, when `all_ipc`). The
  // daemon answers the steps in the order they were sent.
  auto await_replies = [&](uint64_t want, bool all_ipc) -> absl::Status {
    while (acked < want || (all_ipc && ipc_acked < ipc_steps.size())) {
      if (!stream->Read(&reply)) return finish(acked < want ? "a window" : "the GPU copy");
      if (reply.step_case() == v1::LocalPushReply::kIpcDone && reply.ipc_done() == ipc_acked + 1 &&
          ipc_acked < ipc_steps.size()) {
        bytes_done += ipc_step_bytes[ipc_acked];
        ++ipc_acked;
      } else if (reply.step_case() == v1::LocalPushReply::kWindowsDone &&
                 reply.windows_done() == acked + 1 && acked < plans.size()) {
        bytes_done += plans[acked].bytes;
        ++acked;
      } else {
        context.TryCancel();
        (void)stream->Finish();
        return absl::InternalError("the daemon answered a step out of order (a daemon bug)");
      }
      touch();
      report();
    }
    return absl::OkStatus();
  };

  // The pulled host tensors, then the GPU tensors, to the end: the windows' nonces are presented
  // only after (a nonce not claimed within seconds expires), and a failure of this process's own
  // never leaves the daemon reading its memory after the call returned.
  for (size_t k = 0; k < pull_steps.size(); ++k) {
    if (cancelled()) {
      context.TryCancel();
      return Annotate(finish("a pull step"), context_text());
    }
    absl::StatusOr<bool> pulled = pull(pull_steps[k], "a pull step");
    if (!pulled.ok()) return pulled.status();
    bytes_done += pull_step_bytes[k];
    report();
  }
  if (!ipc_steps.empty()) {
    gpu_copy_in_flight.store(true);
    absl::Status copied;
    for (const v1::LocalPushRequest& step : ipc_steps) {
      if (!stream->Write(step)) {
        copied = finish("the GPU copy");
        break;
      }
      touch();
    }
    if (copied.ok()) copied = await_replies(0, true);
    gpu_copy_in_flight.store(false);
    if (!copied.ok()) return Annotate(copied, context_text());
  }
  while (windows.size() < std::min<size_t>(2, plans.size())) {
    if (absl::Status s = take_window(); !s.ok()) return give_up(s);
  }
  if (device_in_windows) {
    for (std::unique_ptr<PushWindow>& w : windows) w->Pin(cuda, pin_device);
  }
  // Window 0 again if it was presented before the GPU copy (that nonce may have expired), or not
  // at all yet.
  if (!plans.empty() && (!ipc_steps.empty() || !pull_steps.empty() || !presented[0].has_value())) {
    if (absl::Status s = present(0); !s.ok()) return give_up(s);
  }
  for (size_t k = 0; k < plans.size(); ++k) {
    // Window k refills the memfd of window k - 2, which the daemon must be done with.
    if (k >= 2) {
      if (absl::Status s = await_replies(k - 1, false); !s.ok()) {
        return Annotate(s, context_text());
      }
    }
    if (cancelled()) {
      context.TryCancel();
      return Annotate(finish("a window"), context_text());
    }
    absl::Status filled = FillWindow(plans[k], tensors, *windows[k % 2], open, hashes, cuda);
    if (filled.ok() && k > 0) filled = present(k);
    if (!filled.ok()) {
      context.TryCancel();
      (void)stream->Finish();  // aborts the version
      return Annotate(filled, context_text());
    }
    if (!stream->Write(window_message(k))) return Annotate(finish("a window"), context_text());
    touch();
  }
  if (absl::Status s = await_replies(plans.size(), true); !s.ok()) {
    return Annotate(s, context_text());
  }
  if (cancelled()) {
    context.TryCancel();
    return Annotate(finish("the commit"), context_text());
  }
  if (options.progress) options.progress(total, total);
  if (cancelled()) {
    context.TryCancel();
    return Annotate(finish("the commit"), context_text());
  }

  v1::LocalPushRequest commit;
  for (uint64_t h : hashes) commit.mutable_commit()->add_xxh3(h);
  if (!stream->Write(commit) || !stream->Read(&reply) ||
      reply.step_case() != v1::LocalPushReply::kCommitted) {
    return Annotate(finish("the commit"), context_text());
  }
  v1::VersionInfo info = reply.committed();
  committed = true;
  stream->WritesDone();
  (void)stream->Finish();  // committed: the daemon said so; how its stream ends changes nothing
  // The daemon is done with the windows (its call has ended): the next push may reuse them.
  if (pool != nullptr) {
    for (std::unique_ptr<PushWindow>& w : windows) pool->Give(std::move(w));
  }
  return info;
}

}  // namespace ckpt::client
