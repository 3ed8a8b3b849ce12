// Runs one piece of work on several threads at once, for loops that hand out their items through
// an atomic counter.
#ifndef CKPT_COMMON_PARALLEL_H_
#define CKPT_COMMON_PARALLEL_H_

#include <atomic>
#include <cstdint>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace ckpt {

// Lanes that each stream whole tensors (copy and hash) take the tensors of at least this many bytes
// first when the others should go in the order given (an update that follows the copy wants them
// in manifest order): one lane takes longest over a large tensor, so it must not start last.
inline constexpr uint64_t kEarlyTensorBytes = uint64_t{256} << 20;
// That order, for std::stable_sort by size: tensors of at least kEarlyTensorBytes first, largest
// first; the others keep their order.
inline bool TakenEarlier(uint64_t a_bytes, uint64_t b_bytes) {
  const bool early_a = a_bytes >= kEarlyTensorBytes, early_b = b_bytes >= kEarlyTensorBytes;
  if (early_a != early_b) return early_a;
  return early_a && a_bytes > b_bytes;
}

// Runs `work` on `threads` threads (the caller's among them) and returns once every one has
// returned. A thread that cannot be started is not waited for: `work` must take its items from a
// shared counter, so that the threads that run (the caller's at least) do them all.
template <typename Work>
void RunOnThreads(int threads, const Work& work) {
  std::vector<std::thread> pool;
  try {
    for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads: the ones started and this one do the work.
  }
  work();
  for (std::thread& t : pool) t.join();
}

// The first error of work spread over threads: Record keeps the first status it is given and tells
// every thread to stop (stopped()). Read status() once the threads have joined. Thread-safe.
class FirstFailure {
 public:
  void Record(absl::Status status) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) status_ = std::move(status);
    stop_.store(true);
  }
  bool stopped() const { return stop_.load(); }
  absl::Status status() const {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stop_{false};
};

}  // namespace ckpt

#endif  // CKPT_COMMON_PARALLEL_H_
