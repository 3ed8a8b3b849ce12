// ByteRate: bytes per second at most, shared by the threads that take from it (a pull's readers,
// or the ReadTensors calls a member serves).
#ifndef CKPT_DAEMON_UPDATE_BYTE_RATE_H_
#define CKPT_DAEMON_UPDATE_BYTE_RATE_H_

#include <algorithm>
#include <cstdint>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ckpt::daemon {

class ByteRate {
 public:
  // 0: no limit.
  explicit ByteRate(uint64_t bytes_per_second) : rate_(bytes_per_second) {}
  // Waits until `bytes` more fit the rate, or until `deadline`; in slices of at most 100 ms,
  // returning false (the reservation given back) once `stop()` holds.
  bool Take(uint64_t bytes, absl::Time deadline, const std::function<bool()>& stop) {
    if (rate_ == 0) return true;
    const absl::Duration cost =
        absl::Seconds(static_cast<double>(bytes) / static_cast<double>(rate_));
    absl::Time at;
    {
      absl::MutexLock lock(&mu_);
      const absl::Time now = absl::Now();
      if (next_ < now) next_ = now;
      at = next_;
      next_ += cost;
    }
    const absl::Time until = std::min(at, deadline);
    for (absl::Time now = absl::Now(); now < until; now = absl::Now()) {
      if (stop && stop()) {
        absl::MutexLock lock(&mu_);
        next_ -= cost;
        return false;
      }
      absl::SleepFor(std::min(until - now, absl::Milliseconds(100)));
    }
    return true;
  }

 private:
  const uint64_t rate_;
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_BYTE_RATE_H_
