// Runs one piece of work on several threads at once, for loops that hand out their items through
// an atomic counter.
#ifndef CKPT_COMMON_PARALLEL_H_
#define CKPT_COMMON_PARALLEL_H_

#include <system_error>
#include <thread>
#include <vector>

namespace ckpt {

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

}  // namespace ckpt

#endif  // CKPT_COMMON_PARALLEL_H_
