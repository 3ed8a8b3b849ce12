// UpdateEngine: sends a committed version from the host store into the attached workers (issue 4,
// docs/update-design.md).
//
// It owns the staging slots (SlotSet per GPU; one host set on the host backend), the copy and NCCL
// streams and events of each GPU, the NCCL communicator over the node's GPUs (created once, kept
// across updates), and the registry of attached workers. The Consumer service feeds it the
// workers' streams through WorkerChannel; Admin.Update (and auto_update) call Update.
//
// Per update: the version is leased (not retired while sent), planned (PlanUpdate: buckets of
// bucket_bytes, one segment per GPU), then bucket k goes into slot k % slots_per_gpu of every GPU:
// each GPU uploads its segment from pinned host memory on its copy stream, a grouped NCCL broadcast
// per segment completes the bucket on every GPU (ordered after the uploads by events), and once the
// fill's events have completed the workers of each GPU get BucketReady. A slot is filled again only
// after every worker acked the bucket in it, so the uploads of bucket k+1 overlap the broadcast and
// the loads of bucket k. At the end each worker gets VersionDone and answers VersionLoaded.
//
// Faults: a worker whose stream ends is marked failed and the others go on; a worker that does not
// ack within ack_timeout is marked failed and its stream closed; the update then fails (ABORTED or
// DEADLINE_EXCEEDED) naming each failed worker, after the others have finished.
//
// One update runs at a time; a second answers FAILED_PRECONDITION naming the running version.
//
// Thread-safety: every method may be called from any thread.
#ifndef CKPT_DAEMON_UPDATE_ENGINE_H_
#define CKPT_DAEMON_UPDATE_ENGINE_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/config.h"
#include "daemon/gpu/gpu_info.h"
#include "daemon/staging_slots.h"
#include "daemon/version_store.h"
#include "proto/admin.pb.h"
#include "proto/consumer.pb.h"

namespace ckpt::daemon {

// Who a worker is, as checked at attach.
struct WorkerIdentity {
  pid_t pid = 0;
  uid_t uid = 0;
  std::string engine;
  std::string gpu_uuid;
  int gpu = 0;                            // index into the engine's slot sets
  std::vector<std::string> tensor_names;  // empty: all
};

// The engine's end of one worker's stream (implemented by the Consumer service).
class WorkerChannel {
 public:
  virtual ~WorkerChannel() = default;
  // Queues a message for the worker; never blocks. False once the stream is closing or closed.
  virtual bool Send(v1::DaemonMessage message) = 0;
  // Ends the stream: the worker gets Detached{reason}, then the end of the stream.
  virtual void Close(const std::string& reason) = 0;
};

class Filler;

class UpdateEngine {
 public:
  struct Options {
    int slots_per_gpu = 2;
    uint64_t bucket_bytes = 64ull << 20;
    absl::Duration ack_timeout = absl::Seconds(60);
    // Deadline for NCCL set-up and for enqueueing and completing GPU work of one bucket.
    absl::Duration gpu_timeout = absl::Seconds(60);
    // update_on_attach: a worker that attaches is sent the newest committed version (in the
    // background, as auto_update).
    bool update_on_attach = false;
    // on_update_failure = previous: after a failed update, workers left with mixed weights are
    // sent the last version each fully loaded (UpdateRequest.previous).
    bool resend_previous_on_failure = false;
  };

  // host: one SlotSet in shared memory. cuda: a SlotSet, streams and events per GPU of `gpus`, and
  // one NCCL communicator over them when there are several.
  static absl::StatusOr<std::unique_ptr<UpdateEngine>> Create(BackendKind backend,
                                                              const std::vector<gpu::GpuInfo>& gpus,
                                                              VersionStore* store, Options options);
  ~UpdateEngine();
  UpdateEngine(const UpdateEngine&) = delete;
  UpdateEngine& operator=(const UpdateEngine&) = delete;

  BackendKind backend() const { return backend_; }
  const Options& options() const { return options_; }
  int slot_set_count() const { return static_cast<int>(slots_.size()); }
  const SlotSet& slots(int gpu) const { return *slots_[gpu]; }
  // Device memory added per GPU (0 on host).
  uint64_t gpu_bytes_per_gpu() const;

  // The slot set serving a worker on the GPU `uuid`. cuda: FAILED_PRECONDITION naming the UUID and
  // this daemon's GPUs when it drives no such GPU. host: always 0 (workers may run anywhere).
  absl::StatusOr<int> GpuForUuid(const std::string& uuid) const;

  // Registers an attached worker; returns its id.
  uint64_t AddWorker(WorkerIdentity identity, std::shared_ptr<WorkerChannel> channel);
  // The worker's stream ended (`why`); a running update counts it as failed.
  void RemoveWorker(uint64_t id, const std::string& why);
  // An ack or VersionLoaded from the worker.
  void OnWorkerMessage(uint64_t id, const v1::WorkerMessage& message);

  // Sends the version to the workers (all attached, or those of request.worker_pids); returns when
  // every one has loaded it or failed. A request for the version being sent now (no force, no
  // worker_pids) joins that update and returns its outcome (DEADLINE_EXCEEDED at `deadline`).
  // request.previous: resends to each worker with mixed weights the last version it fully loaded
  // (FAILED_PRECONDITION when none has mixed weights; NOT_FOUND naming the version and the workers
  // when the store no longer holds it). `trigger` is recorded in the outcome (Status.last_update). Errors: NOT_FOUND (version unknown, retired or staging; a
  // pid not attached), FAILED_PRECONDITION (another update runs; no worker attached), ABORTED /
  // DEADLINE_EXCEEDED naming the workers that failed, UNAVAILABLE (shutting down).
  // `cancelled` (may be empty): polled about every second by a joining request.
  absl::StatusOr<v1::UpdateResponse> Update(const v1::UpdateRequest& request,
                                            absl::Time deadline = absl::InfiniteFuture(),
                                            const std::string& trigger = "request",
                                            const std::function<bool()>& cancelled = {});

  // Waits until every attached worker (at least one) holds `version` (0: the newest committed) or
  // a newer one without mixed weights (loaded = true), or an update of it failed for some of them
  // with none running or queued (loaded = false, the summary says who and why). Errors:
  // DEADLINE_EXCEEDED naming the workers that lack it, FAILED_PRECONDITION when nothing is
  // committed, NOT_FOUND for a version never committed (above the newest, not staging),
  // UNAVAILABLE when shutting down.
  // At most kMaxWaiters wait at once (RESOURCE_EXHAUSTED beyond); `cancelled` (may be empty) is
  // polled about every second (CANCELLED once it returns true).
  static constexpr int kMaxWaiters = 64;
  absl::StatusOr<v1::WaitLoadedResponse> WaitLoaded(uint64_t version, absl::Time deadline,
                                                    const std::function<bool()>& cancelled = {});

  // The last update that ran or runs (nullopt before the first). A running one carries its
  // progress as of this call (buckets and bytes done, workers loaded and failed, elapsed time).
  std::optional<v1::UpdateOutcome> LastUpdate() const;

  // Totals since start, for metrics (daemon/metrics.h).
  struct Counters {
    uint64_t succeeded = 0;
    uint64_t failed = 0;
    uint64_t bytes = 0;  // of succeeded and failed updates, as planned
    double wait_slot_seconds = 0, fill_seconds = 0, load_seconds = 0, finish_seconds = 0;
    // Wall seconds of each finished update, in buckets of UpdateSecondsBounds() (the last: +Inf).
    std::vector<uint64_t> seconds_buckets;
    double seconds_sum = 0;
    // Worker failures by reason: "ack_timeout", "detached", "load_error", "missing_tensors",
    // "stream_closed", "other".
    std::map<std::string, uint64_t> worker_failures;
  };
  static const std::vector<double>& UpdateSecondsBounds();
  Counters GetCounters() const;

  // auto_update: updates to `version` in the background (skipped when no worker is attached). A
  // request while an update runs replaces any queued one, so the newest version goes next; a
  // version older than one already asked for (a concurrent push that committed late) is not sent.
  void RequestAutoUpdate(uint64_t version);

  // Shutdown: fails a running update, refuses new ones, closes every worker's stream with `reason`.
  void Stop(const std::string& reason);

  std::vector<v1::WorkerStatus> Workers() const;
  uint64_t updating_version() const;

 private:
  struct WorkerEntry;
  struct Participant;

  UpdateEngine(BackendKind backend, VersionStore* store, Options options);
  void AutoUpdateLoop();
  // One update (Update without joining or `previous`); records its outcome once it claimed the
  // update slot.
  absl::StatusOr<v1::UpdateResponse> RunUpdate(const v1::UpdateRequest& request,
                                               const std::string& trigger);
  absl::StatusOr<v1::UpdateResponse> ResendPrevious(absl::Time deadline);
  // Records how the running update ended (outcome, per-worker state) and wakes waiters.
  void FinishOutcome(const absl::StatusOr<v1::UpdateResponse>& result,
                     const v1::UpdateResponse& report) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::WorkerStatus StatusOf(const WorkerEntry& e) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Takes a worker the daemon gave up on (timed out, stream closing) out of the registry at once;
  // its stream's end (RemoveWorker) then finds nothing to remove.
  void Forget(const WorkerEntry& entry, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const BackendKind backend_;
  VersionStore* const store_;
  const Options options_;
  std::vector<gpu::GpuInfo> gpus_;
  std::vector<std::unique_ptr<SlotSet>> slots_;
  std::unique_ptr<Filler> filler_;

  mutable absl::Mutex mu_;
  std::map<uint64_t, std::shared_ptr<WorkerEntry>> workers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_worker_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string stop_reason_ ABSL_GUARDED_BY(mu_);
  // The running update's version (0: none) and its participants.
  uint64_t updating_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Participant>* participants_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t auto_pending_ ABSL_GUARDED_BY(mu_) = 0;
  // The highest version auto_update was asked for: an older one committing later is not sent.
  uint64_t auto_highest_ ABSL_GUARDED_BY(mu_) = 0;
  // update_on_attach: pids of workers that attached and wait for the newest version.
  std::set<int> attach_pending_ ABSL_GUARDED_BY(mu_);
  // Outcomes: of the running or last update, and the last one per version (a bounded window).
  std::optional<v1::UpdateOutcome> last_outcome_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, v1::UpdateOutcome> outcomes_ ABSL_GUARDED_BY(mu_);
  // Updates started and finished; the result of the last finished one (for joiners).
  uint64_t started_serial_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t finished_serial_ ABSL_GUARDED_BY(mu_) = 0;
  absl::StatusOr<v1::UpdateResponse> last_result_ ABSL_GUARDED_BY(mu_) =
      absl::UnknownError("no update yet");
  Counters counters_ ABSL_GUARDED_BY(mu_);
  // The running update goes to every attached worker, unforced (joinable).
  bool running_unrestricted_ ABSL_GUARDED_BY(mu_) = false;
  // Changes of the workers' state (not acks): WaitLoaded sleeps until it changes.
  uint64_t state_events_ ABSL_GUARDED_BY(mu_) = 0;
  int waiters_ ABSL_GUARDED_BY(mu_) = 0;
  // Counts worker messages and detaches: the update loop sleeps until it changes.
  uint64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread auto_thread_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_ENGINE_H_
