// PushFeed: what an update of a version that is still being pushed knows of the push (an
// overlapped push + update, docs/local-push.md): which tensors are in and verified, with their
// checksums; whether the version committed; or why the push failed.
//
// The push's side (the trainer service's PushLocal) marks a tensor ready once its last byte is in
// the version and its checksum is settled: for a tensor the daemon copied from the trainer's GPU
// memory, the daemon's XXH3-64 of the stored bytes; for a tensor that came in windows, once the
// daemon's checksum of the stored bytes matched the trainer's (sent with the window that ended
// it, or with the commit). Then Committed, or Fail. No byte of a tensor changes after it is ready
// (only the push's own session writes the version, each byte once).
//
// The update's side (UpdateEngine's overlapped run) asks which tensors are ready and is woken
// through the listener whenever something changed.
//
// Thread-safety: every method may be called from any thread. The listener is called with none of
// the feed's locks held; SetListener waits for a call in progress to end.
#ifndef CKPT_DAEMON_UPDATE_PUSH_FEED_H_
#define CKPT_DAEMON_UPDATE_PUSH_FEED_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ckpt::daemon {

class PushFeed {
 public:
  PushFeed(uint64_t version, size_t tensors);
  PushFeed(const PushFeed&) = delete;
  PushFeed& operator=(const PushFeed&) = delete;

  uint64_t version() const { return version_; }
  size_t size() const { return ready_.size(); }

  // Tensor i (manifest order) is in and verified, with checksum `xxh3`. A tensor's first checksum
  // stays (a repeat is ignored); an index past the manifest is ignored.
  void MarkReady(size_t i, uint64_t xxh3);
  // The version committed with `xxh3` (one per tensor): every tensor is ready. Ignored after Fail.
  void MarkCommitted(const std::vector<uint64_t>& xxh3);
  // The push failed or was aborted: `why` is what the update reports. The first failure stays;
  // ignored after MarkCommitted.
  void Fail(absl::Status why);

  // The tensors that became ready since `*cursor` (0 at first), in the order they did, appended
  // to `out`; advances `*cursor`. The push's failure once it failed.
  absl::Status ReadySince(size_t* cursor, std::vector<size_t>* out) const;
  // Whether the version committed; the push's failure once it failed.
  absl::StatusOr<bool> Committed() const;
  // Whether the push has ended (committed or failed).
  bool Ended() const;
  // The checksum of a ready tensor (0 before, or for an index past the manifest).
  uint64_t Xxh3(size_t i) const;

  // Waits until the push ended: true once committed, false once failed or when `deadline` passed
  // first (`*timed_out` says which).
  bool AwaitEnd(absl::Time deadline, bool* timed_out) const;

  // Counts changes (a tensor ready, the commit, the failure); AwaitChange waits until it differs
  // from `seen` or `deadline` passes.
  uint64_t changes() const;
  void AwaitChange(uint64_t seen, absl::Time deadline) const;

  // Called after every change (a tensor ready, the commit, the failure), outside the feed's lock.
  // Empty: none. Waits for a call in progress to end, so the old listener is never called after.
  void SetListener(std::function<void()> listener);

 private:
  void Notify();

  const uint64_t version_;
  mutable absl::Mutex mu_;
  std::vector<bool> ready_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> xxh3_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> order_ ABSL_GUARDED_BY(mu_);  // ready tensors, as they became ready
  bool committed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t changes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  // Never held with mu_: the listener may take other locks (the update engine's).
  absl::Mutex listener_mu_;
  std::function<void()> listener_ ABSL_GUARDED_BY(listener_mu_);
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_PUSH_FEED_H_
