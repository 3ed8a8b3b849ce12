#include "daemon/api/stream_watchdog.h"

#include "common/units.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

int64_t NowNs() { return absl::ToUnixNanos(absl::Now()); }

}  // namespace

StreamWatchdog::StreamWatchdog(absl::Duration tick) : tick_(tick) {
  thread_ = std::thread([this] { Run(); });
}

StreamWatchdog::~StreamWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

StreamWatchdog::Guard StreamWatchdog::Watch(grpc::ServerContext* context, absl::Duration idle_limit,
                                            std::string what) {
  auto entry = std::make_shared<Entry>();
  entry->context = context;
  entry->idle_limit = idle_limit;
  entry->what = std::move(what);
  entry->last_active_ns = NowNs();
  Guard guard;
  guard.watchdog_ = this;
  guard.entry_ = entry;
  absl::MutexLock lock(&mu_);
  guard.id_ = next_id_++;
  entries_[guard.id_] = std::move(entry);
  return guard;
}

void StreamWatchdog::Remove(uint64_t id) {
  absl::MutexLock lock(&mu_);
  entries_.erase(id);
}

void StreamWatchdog::Run() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), tick_);
    if (stopping_) break;
    const int64_t now = NowNs();
    // Under the lock: a guard unregisters under it too, so no context is cancelled after its
    // handler has let go of it.
    for (auto& [id, e] : entries_) {
      if (e->cancelled) continue;
      const absl::Duration idle = absl::Nanoseconds(now - e->last_active_ns.load());
      if (idle < e->idle_limit) continue;
      e->cancelled = true;
      e->context->TryCancel();
      spdlog::warn("cancelled {}: nothing received for {}", e->what, HumanDuration(idle));
    }
  }
}

StreamWatchdog::Guard::Guard(Guard&& other) noexcept
    : watchdog_(other.watchdog_), id_(other.id_), entry_(std::move(other.entry_)) {
  other.watchdog_ = nullptr;
}

StreamWatchdog::Guard& StreamWatchdog::Guard::operator=(Guard&& other) noexcept {
  if (this != &other) {
    Release();
    watchdog_ = other.watchdog_;
    id_ = other.id_;
    entry_ = std::move(other.entry_);
    other.watchdog_ = nullptr;
  }
  return *this;
}

StreamWatchdog::Guard::~Guard() { Release(); }

void StreamWatchdog::Guard::Touch() {
  if (entry_ != nullptr) entry_->last_active_ns = NowNs();
}

bool StreamWatchdog::Guard::cancelled() const { return entry_ != nullptr && entry_->cancelled; }

void StreamWatchdog::Guard::Release() {
  if (watchdog_ != nullptr) watchdog_->Remove(id_);
  watchdog_ = nullptr;
}

}  // namespace ckpt::daemon
