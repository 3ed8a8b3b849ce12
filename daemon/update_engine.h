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
#include <map>
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
  // every one has loaded it or failed. Errors: NOT_FOUND (version unknown, retired or staging; a
  // pid not attached), FAILED_PRECONDITION (another update runs; no worker attached), ABORTED /
  // DEADLINE_EXCEEDED naming the workers that failed, UNAVAILABLE (shutting down).
  absl::StatusOr<v1::UpdateResponse> Update(const v1::UpdateRequest& request);

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
  // Counts worker messages and detaches: the update loop sleeps until it changes.
  uint64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread auto_thread_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_ENGINE_H_
