// StreamWatchdog: cancels gRPC streams that carry no work for too long.
//
// A sync-server stream holds one of the server's threads (ResourceQuota) for as long as it is open,
// and keepalive pings keep a silent but live peer's connection up, so a client that opens streams
// and sends nothing could hold every thread. Handlers register the stream for the time it must be
// active (a PushChunks stream between chunks, an Attach stream until its AttachRequest) and mark
// each message; a stream idle past its limit is cancelled (ServerContext::TryCancel), which ends
// its blocked Read.
//
// Thread-safety: Watch and the Guard's methods may be called from any thread.
#ifndef CKPT_DAEMON_API_STREAM_WATCHDOG_H_
#define CKPT_DAEMON_API_STREAM_WATCHDOG_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"

namespace ckpt::daemon {

class StreamWatchdog {
 public:
  // Checks the registered streams every `tick`.
  explicit StreamWatchdog(absl::Duration tick = absl::Milliseconds(250));
  ~StreamWatchdog();
  StreamWatchdog(const StreamWatchdog&) = delete;
  StreamWatchdog& operator=(const StreamWatchdog&) = delete;

  struct Entry;
  // Registration of one stream; unregisters on destruction (before the context can go away).
  class Guard {
   public:
    Guard() = default;
    Guard(Guard&& other) noexcept;
    Guard& operator=(Guard&& other) noexcept;
    ~Guard();
    // The stream did work now: its idle time starts again.
    void Touch();
    // True once the watchdog cancelled the stream.
    bool cancelled() const;
    // Unregisters now.
    void Release();

   private:
    friend class StreamWatchdog;
    StreamWatchdog* watchdog_ = nullptr;
    uint64_t id_ = 0;
    std::shared_ptr<Entry> entry_;
  };

  // Watches `context` until the guard ends: cancelled when idle for `idle_limit`. `what` is for
  // the log ("PushChunks stream of uid 1000").
  Guard Watch(grpc::ServerContext* context, absl::Duration idle_limit, std::string what);

  struct Entry {
    grpc::ServerContext* context;
    absl::Duration idle_limit;
    std::string what;
    std::atomic<int64_t> last_active_ns;
    std::atomic<bool> cancelled{false};
  };

 private:
  void Run();
  void Remove(uint64_t id);

  const absl::Duration tick_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_STREAM_WATCHDOG_H_
