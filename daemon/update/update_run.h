// UpdateRun: one running update, from its participants to their results (docs/update-design.md).
//
// The update engine creates one per update it runs (one at a time) and owns it while it runs; the
// workers' messages and detaches reach it through the engine (OnAck, OnLoaded, OnDetached), never
// through a pointer into another thread's stack.
//
// Execute drives the pipeline: the k-th bucket to go out (the plan's k-th, unless the filler picks
// another: an overlapped update sends the buckets whose tensors are in first) goes into slot k % K
// of every slot set through the transfer backend; once a fill is complete the participants get
// BucketReady number k (filtered to the tensors each asked for); a slot is filled again only after
// every participant acked the bucket in it; at the end (and once the version committed) each gets
// VersionDone and answers VersionLoaded. A participant that does not ack within
// ack_timeout is failed, its stream closed and it is forgotten by the registry; one whose stream
// ends is failed; the others go on.
//
// Thread-safety: every method must be called with the engine's mutex (given at construction) held;
// Execute releases it around fills and drains, so acks arrive while a bucket is being filled.
#ifndef CKPT_DAEMON_UPDATE_UPDATE_RUN_H_
#define CKPT_DAEMON_UPDATE_UPDATE_RUN_H_

#include <cstdint>
#include <functional>
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

// The update plan of `manifest`: buckets of `bucket_bytes`, one segment per slot set; copies from
// host_offset(i) for tensor i (null: offsets 0, for a member that receives every bucket). The
// buckets and placements depend only on the manifest and the settings, so every member computes
// the same ones.
// `groups` (null, or one per tensor): tensors of different groups never share a bucket (a version
// composed of parts: PlanTensor::group).
absl::StatusOr<UpdatePlan> PlanManifest(uint64_t version, const v1::Manifest& manifest,
                                        const std::function<uint64_t(int)>& host_offset,
                                        uint64_t bucket_bytes, int slot_sets,
                                        const std::vector<uint32_t>* groups = nullptr);
// The plan of a leased version (copies from its place in the host store).
absl::StatusOr<UpdatePlan> PlanVersion(const VersionStore::ReadLease& lease, uint64_t bucket_bytes,
                                       int slot_sets);

// How a bucket gets into slot `slot` of every slot set: from the local store through the transfer
// backend (LocalFiller), or in a cluster update also by a broadcast among the members
// (ClusterFiller, daemon/update/cluster_update.h). Called by the update run with the engine's
// mutex released.
class BucketFiller {
 public:
  virtual ~BucketFiller() = default;
  virtual absl::Status Fill(const Bucket& bucket, int k, int slot) = 0;
  virtual absl::StatusOr<bool> Filled(int slot) = 0;
  virtual absl::Status Drain(absl::Time deadline) = 0;
  // Which bucket of the plan goes out s-th (s = 0, 1, ...; asked again for the same s until it
  // answers): plan order, unless the version is still being pushed (an overlapped update,
  // StagingFiller): then a bucket whose tensors are all in and verified, or -1 when none is yet.
  // An error: the push failed. Called with the engine's mutex held: it must not block.
  virtual absl::StatusOr<int> NextBucket(int s) { return s; }
  // Whether the version committed (VersionDone goes only then); an error: the push failed.
  virtual absl::StatusOr<bool> Committed() { return true; }
  // Tensor i's checksum when the manifest's is not final yet (a version still being pushed); 0:
  // the manifest's.
  virtual uint64_t Xxh3(int tensor) const { return 0; }
};

// The bytes of bucket k come from `arena` (the host store) through `transfer`.
class LocalFiller final : public BucketFiller {
 public:
  LocalFiller(TransferBackend* transfer, const uint8_t* arena)
      : transfer_(transfer), arena_(arena) {}
  absl::Status Fill(const Bucket& bucket, int, int slot) override {
    return transfer_->Fill(bucket, slot, arena_);
  }
  absl::StatusOr<bool> Filled(int slot) override { return transfer_->Filled(slot); }
  absl::Status Drain(absl::Time deadline) override { return transfer_->Drain(deadline); }

 private:
  TransferBackend* const transfer_;
  const uint8_t* const arena_;
};

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
    // Consistent updates: Pause sent (when), Paused answered.
    bool pause_sent = false;
    absl::Time pause_sent_at;
    bool paused = false;
    bool active() const { return error.empty(); }
  };

  // Picks the participants of an update of `manifest`'s version: every registered worker, or those
  // of `request.worker_pids`; a worker that holds the version already (unless request.force) is
  // reported in `response` as skipped instead. A worker whose tensor_names name tensors the
  // version lacks takes part already failed (nothing is sent to it). NOT_FOUND for a pid that is
  // not attached; FAILED_PRECONDITION when no worker is attached (unless `allow_none`: a
  // member of a cluster update takes part without workers).
  static absl::StatusOr<std::vector<Participant>> Select(
      const WorkerRegistry& registry, const v1::UpdateRequest& request, uint64_t version,
      const v1::Manifest& manifest, v1::UpdateResponse* response, bool allow_none = false);

  struct Options {
    int slots = 2;  // K
    absl::Duration ack_timeout = absl::Seconds(60);
    absl::Duration gpu_timeout = absl::Seconds(60);
    // A rank of a cluster update: every bucket is filled (the broadcasts need every rank) even
    // when no local worker takes part or all failed.
    bool every_bucket = false;
    // A consistent update: every participant pauses (Pause, answered by Paused within
    // ack_timeout) before any bucket is filled; one that cannot fails the update before anything
    // is sent. Execute does not resume them: its caller does (Resume), once every participant
    // of the cluster loaded or the update failed (UpdateRun::Result::paused).
    bool consistent = false;
  };
  // `lease` keeps the version's host bytes while the run reads them; null on a cluster member
  // that does not hold the version (its filler receives every bucket).
  UpdateRun(absl::Mutex& mu, uint64_t version, std::shared_ptr<const v1::Manifest> manifest,
            std::shared_ptr<VersionStore::ReadLease> lease, UpdatePlan plan,
            std::vector<Participant> participants, BucketFiller* filler, WorkerRegistry* registry,
            Options options);

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
    // Consistent updates: the workers that paused (and so wait for a Resume).
    std::vector<std::shared_ptr<WorkerRecord>> paused;
  };

  // Tells each of `paused` that generation may go on (Resume).
  static void Resume(const std::vector<std::shared_ptr<WorkerRecord>>& paused, uint64_t version,
                     bool loaded, const std::string& error);
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
  void OnPaused(uint64_t worker, const v1::Paused& paused) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Shutdown: Execute fails with UNAVAILABLE(reason) at its next step.
  void Cancel(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Something the filler waits for changed (a tensor of a version being pushed is in): Execute
  // looks again at once.
  void Wake() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { ++events_; }

  // Progress for Status while it runs: buckets and bytes released, workers loaded and failed.
  void Progress(v1::UpdateProgress* progress) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

 private:
  v1::DaemonMessage BucketMessage(int k) const;
  // Sends `message` to every active participant (setting its `sent` and `sent_at`), then waits
  // until each active one has `answered`, or the run is cancelled; Expire fails those that pass
  // ack_timeout meanwhile (VersionDone/VersionLoaded, Pause/Paused).
  void SendAndAwait(const v1::DaemonMessage& message, bool Participant::*sent,
                    absl::Time Participant::*sent_at, bool Participant::*answered)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Consistent updates: Pause to every participant, then wait for their Paused (ack_timeout).
  // An error when one cannot pause (the update then sends nothing).
  absl::Status PauseAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Expire() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AllAcked(int k) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool AnyActive() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Sends `m` to `p`; a closed stream fails and forgets it.
  void SendTo(Participant& p, v1::DaemonMessage m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex& mu_;
  const uint64_t version_;
  const std::shared_ptr<const v1::Manifest> manifest_;
  const std::shared_ptr<VersionStore::ReadLease> lease_;
  const UpdatePlan plan_;
  BucketFiller* const filler_;
  WorkerRegistry* const registry_ ABSL_PT_GUARDED_BY(mu_);
  const Options options_;

  std::vector<Participant> participants_ ABSL_GUARDED_BY(mu_);
  // Counts worker messages and detaches: Execute sleeps until it changes.
  uint64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::string cancel_reason_ ABSL_GUARDED_BY(mu_);
  int released_ ABSL_GUARDED_BY(mu_) = 0;
  // The plan's bucket that went out s-th (BucketFiller::NextBucket); workers see s as its number.
  std::vector<int> order_ ABSL_GUARDED_BY(mu_);
  uint64_t bytes_released_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_UPDATE_RUN_H_
