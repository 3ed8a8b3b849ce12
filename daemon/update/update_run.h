// UpdateRun: one running update, from its participants to their results (docs/update-design.md).
//
// The update engine creates one per update it runs (one at a time) and owns it while it runs; the
// workers' messages and detaches reach it through the engine (OnAck, OnLoaded, OnDetached), never
// through a pointer into another thread's stack.
//
// Execute drives the pipeline: bucket k goes into slot k % K of every slot set through the transfer
// backend; once a fill is complete the participants get BucketReady (filtered to the tensors each
// asked for); a slot is filled again only after every participant acked the bucket in it; at the
// end each gets VersionDone and answers VersionLoaded. A participant that does not ack within
// ack_timeout is failed, its stream closed and it is forgotten by the registry; one whose stream
// ends is failed; the others go on.
//
// Thread-safety: every method must be called with the engine's mutex (given at construction) held;
// Execute releases it around fills and drains, so acks arrive while a bucket is being filled.
#ifndef CKPT_DAEMON_UPDATE_UPDATE_RUN_H_
#define CKPT_DAEMON_UPDATE_UPDATE_RUN_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/store/version_store.h"
#include "daemon/transfer/transfer_backend.h"
#include "daemon/update/update_plan.h"
#include "daemon/update/worker_registry.h"
#include "proto/admin.pb.h"

namespace ckpt::daemon {

// The update plan of a leased version: buckets of `bucket_bytes`, one segment per slot set.
absl::StatusOr<UpdatePlan> PlanVersion(const VersionStore::ReadLease& lease, uint64_t bucket_bytes,
                                       int slot_sets);

class UpdateRun {
 public:
  // One worker taking part.
  struct Participant {
    std::shared_ptr<WorkerRecord> worker;
    std::string error;  // set once failed
    // Why, for metrics (UpdateEngine::Counters::worker_failures); "other" when it just did not
    // finish.
    const char* reason = "other";
    bool timed_out = false;
    std::map<uint64_t, absl::Time> outstanding;  // bucket -> when BucketReady was sent
    int buckets_sent = 0;
    bool done_sent = false;
    absl::Time done_sent_at;
    bool loaded = false;
    uint64_t tensors = 0;
    uint64_t bytes = 0;
    bool active() const { return error.empty(); }
  };

  // Picks the participants of an update of `manifest`'s version: every registered worker, or those
  // of `request.worker_pids`; a worker that holds the version already (unless request.force) is
  // reported in `response` as skipped instead. A worker whose tensor_names name tensors the
  // version lacks takes part already failed (nothing is sent to it). NOT_FOUND for a pid that is
  // not attached; FAILED_PRECONDITION when no worker is attached.
  static absl::StatusOr<std::vector<Participant>> Select(const WorkerRegistry& registry,
                                                         const v1::UpdateRequest& request,
                                                         uint64_t version,
                                                         const v1::Manifest& manifest,
                                                         v1::UpdateResponse* response);

  struct Options {
    int slots = 2;  // K
    absl::Duration ack_timeout = absl::Seconds(60);
    absl::Duration gpu_timeout = absl::Seconds(60);
  };
  UpdateRun(absl::Mutex& mu, std::shared_ptr<VersionStore::ReadLease> lease, UpdatePlan plan,
            std::vector<Participant> participants, TransferBackend* transfer,
            WorkerRegistry* registry, const uint8_t* arena, Options options);

  uint64_t version() const { return version_; }
  const UpdatePlan& plan() const { return plan_; }
  const std::vector<Participant>& participants() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return participants_;
  }

  // The outcome of Execute.
  struct Result {
    absl::Status failure;             // of the daemon itself (GPU, shutdown); OK otherwise
    std::vector<std::string> failed;  // one line per failed participant
    bool timed_out = false;           // a participant failed by ack_timeout
  };
  // Runs the update to its end. Fills `response` (timings, one WorkerResult per participant) and
  // records each participant's result in its WorkerRecord (last update, mixed_version); counts
  // failures by reason into `failure_reasons`.
  Result Execute(v1::UpdateResponse* response, std::map<std::string, uint64_t>* failure_reasons)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // From the workers' streams (through the engine).
  void OnAck(uint64_t worker, const v1::BucketAck& ack) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnLoaded(uint64_t worker, const v1::VersionLoaded& loaded)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnDetached(uint64_t worker, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Shutdown: Execute fails with UNAVAILABLE(reason) at its next step.
  void Cancel(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Progress for Status while it runs: buckets and bytes released, workers loaded and failed.
  void Progress(v1::UpdateProgress* progress) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

 private:
  v1::DaemonMessage BucketMessage(int k) const;
  void Expire() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AllAcked(int k) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool AnyActive() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Sends `m` to `p`; a closed stream fails and forgets it.
  void SendTo(Participant& p, v1::DaemonMessage m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex& mu_;
  const std::shared_ptr<VersionStore::ReadLease> lease_;
  const uint64_t version_;
  const UpdatePlan plan_;
  TransferBackend* const transfer_;
  WorkerRegistry* const registry_ ABSL_PT_GUARDED_BY(mu_);
  const uint8_t* const arena_;
  const Options options_;

  std::vector<Participant> participants_ ABSL_GUARDED_BY(mu_);
  // Counts worker messages and detaches: Execute sleeps until it changes.
  uint64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::string cancel_reason_ ABSL_GUARDED_BY(mu_);
  int released_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_released_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_UPDATE_RUN_H_
