#include "client/local_push.h"

#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "client/descriptor_socket.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace ckpt::client {

std::vector<WindowPlan> PlanWindows(const std::vector<TensorView>& tensors, uint64_t window_bytes,
                                    size_t max_parts) {
  std::vector<WindowPlan> windows;
  if (window_bytes == 0 || max_parts == 0) return windows;
  for (size_t i = 0; i < tensors.size(); ++i) {
    for (uint64_t offset = 0; offset < tensors[i].bytes;) {
      if (windows.empty() || windows.back().bytes == window_bytes ||
          windows.back().parts.size() == max_parts) {
        windows.emplace_back();
      }
      WindowPlan& w = windows.back();
      const uint64_t n = std::min(tensors[i].bytes - offset, window_bytes - w.bytes);
      w.parts.push_back({static_cast<uint32_t>(i), offset, n, w.bytes});
      w.bytes += n;
      offset += n;
    }
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
  ~PushWindow() { ::munmap(map_, size_); }
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

namespace {

// Bytes one thread copies at a time.
constexpr uint64_t kFillStep = uint64_t{1} << 20;

// Copies the parts of `plan` from the tensors into `window` on up to `threads` threads, in steps
// of kFillStep handed to whichever thread is free (one large part is copied by every thread).
void FillWindow(const WindowPlan& plan, const std::vector<TensorView>& tensors,
                const PushWindow& window, int threads) {
  struct Step {
    const uint8_t* src;
    uint8_t* dst;
    size_t bytes;
  };
  std::vector<Step> steps;
  for (const WindowPartRef& p : plan.parts) {
    const uint8_t* src = static_cast<const uint8_t*>(tensors[p.tensor].data) + p.offset;
    uint8_t* dst = window.data() + p.window_offset;
    for (uint64_t done = 0; done < p.bytes; done += kFillStep) {
      steps.push_back(
          {src + done, dst + done, static_cast<size_t>(std::min(kFillStep, p.bytes - done))});
    }
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t k = next.fetch_add(1); k < steps.size(); k = next.fetch_add(1)) {
      std::memcpy(steps[k].dst, steps[k].src, steps[k].bytes);
    }
  };
  threads = std::max(1, std::min<int>(threads, static_cast<int>(steps.size())));
  std::vector<std::thread> pool;
  try {
    for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads: the ones started (and this one) do the work.
  }
  work();
  for (std::thread& t : pool) t.join();
}

// The tensors' XXH3-64 checksums, computed from the trainer's memory on `threads` threads (whole
// tensors handed out in order) while the windows are filled and copied. Wait() joins; the
// destructor stops early and joins.
class BackgroundHasher {
 public:
  BackgroundHasher(const std::vector<TensorView>& tensors, int threads)
      : tensors_(tensors), hashes_(tensors.size(), 0) {
    threads = std::max(1, std::min<int>(threads, static_cast<int>(tensors.size())));
    try {
      for (int i = 0; i < threads; ++i) pool_.emplace_back([this] { Work(); });
    } catch (const std::system_error&) {
      // Fewer threads; Wait() does the rest if none started.
    }
  }
  ~BackgroundHasher() {
    stop_.store(true);
    Join();
  }
  BackgroundHasher(const BackgroundHasher&) = delete;
  BackgroundHasher& operator=(const BackgroundHasher&) = delete;

  // Every checksum, in tensor order.
  const std::vector<uint64_t>& Wait() {
    Work();  // helps (and does everything if no thread could be started)
    Join();
    return hashes_;
  }

 private:
  void Work() {
    for (size_t i = next_.fetch_add(1); i < tensors_.size() && !stop_.load();
         i = next_.fetch_add(1)) {
      hashes_[i] = XXH3_64bits(tensors_[i].data, tensors_[i].bytes);
    }
  }
  void Join() {
    for (std::thread& t : pool_) {
      if (t.joinable()) t.join();
    }
  }

  const std::vector<TensorView>& tensors_;
  std::vector<uint64_t> hashes_;
  std::atomic<size_t> next_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> pool_;
};

int DefaultThreads(int threads) {
  if (threads > 0) return threads;
  return std::min<int>(8, std::max(1u, std::thread::hardware_concurrency()));
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
  const std::vector<WindowPlan> plans = PlanWindows(tensors, options.window_bytes);
  const int threads = DefaultThreads(options.hash_threads);

  std::vector<std::unique_ptr<PushWindow>> windows;
  uint64_t largest = 0;
  for (const WindowPlan& w : plans) largest = std::max(largest, w.bytes);
  for (size_t i = 0; i < std::min<size_t>(2, plans.size()); ++i) {
    auto w = pool != nullptr ? pool->Take(largest) : PushWindow::Create(largest);
    if (!w.ok()) return not_there(w.status());
    windows.push_back(*std::move(w));
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
  auto window_message = [&](size_t k) {
    v1::LocalPushRequest m;
    v1::LocalPushWindow* w = m.mutable_window();
    w->set_fd_nonce(presented[k % 2]->nonce);
    for (const WindowPartRef& p : plans[k].parts) {
      w->add_part_tensor(p.tensor);
      w->add_part_offset(p.offset);
      w->add_part_bytes(p.bytes);
    }
    return m;
  };

  // The first window's memfd is presented before anything is begun: if this process cannot use
  // the descriptor socket, "auto" goes to gRPC with nothing to undo. (The daemon reads a window
  // only once its message comes, so the window is filled after the begin: a refused begin costs
  // no copy.)
  if (!plans.empty()) {
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
  absl::Notification done_watching;
  std::thread watcher([&] {
    while (!done_watching.WaitForNotificationWithTimeout(kTick)) {
      const absl::Duration idle = absl::Now() - absl::FromUnixNanos(last_progress_ns.load());
      if (idle > options.timeout) stalled.store(true);
      if (stalled.load() || cancelled()) {
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
      if (committed) return;
      grpc::ClientContext abort_context;
      abort_context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
      v1::AbortRequest request;
      request.set_version(version);
      request.set_upload_token(token);
      v1::AbortResponse response;
      (void)stub->Abort(&abort_context, request, &response);  // the push's own error is reported
    }
  } abort_guard{stub, version, reply.begun().upload_token(), committed,
                std::min(options.timeout, absl::Seconds(10))};
  // The checksums are computed from the tensors while the windows are filled and copied.
  BackgroundHasher hasher(tensors, threads);

  uint64_t acked = 0;  // windows the daemon has copied
  uint64_t bytes_done = 0;
  uint64_t reported = 0;
  auto report = [&] {
    if (options.progress && bytes_done < total && bytes_done != reported) {
      options.progress(bytes_done, total);
      reported = bytes_done;
    }
  };
  // Reads answers until `want` windows are copied.
  auto await_windows = [&](uint64_t want) -> absl::Status {
    while (acked < want) {
      if (!stream->Read(&reply)) return finish("a window");
      if (reply.step_case() != v1::LocalPushReply::kWindowsDone ||
          reply.windows_done() != acked + 1) {
        context.TryCancel();
        (void)stream->Finish();
        return absl::InternalError("the daemon answered a window out of order (a daemon bug)");
      }
      bytes_done += plans[acked].bytes;
      ++acked;
      touch();
      report();
    }
    return absl::OkStatus();
  };

  for (size_t k = 0; k < plans.size(); ++k) {
    // Window k refills the memfd of window k - 2, which the daemon must be done with.
    if (k >= 2) {
      if (absl::Status s = await_windows(k - 1); !s.ok()) return Annotate(s, context_text());
    }
    if (cancelled()) {
      context.TryCancel();
      return Annotate(finish("a window"), context_text());
    }
    FillWindow(plans[k], tensors, *windows[k % 2], threads);
    absl::Status filled = k > 0 ? present(k) : absl::OkStatus();
    if (!filled.ok()) {
      context.TryCancel();
      (void)stream->Finish();  // aborts the version
      return Annotate(filled, context_text());
    }
    if (!stream->Write(window_message(k))) return Annotate(finish("a window"), context_text());
    touch();
  }
  if (absl::Status s = await_windows(plans.size()); !s.ok()) return Annotate(s, context_text());
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
  for (uint64_t h : hasher.Wait()) commit.mutable_commit()->add_xxh3(h);
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
