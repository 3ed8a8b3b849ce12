// UpdateEngine: sends a committed version from the host store into the attached workers (issue 4,
// docs/update-design.md).
//
// It decides what runs: which update (one at a time; a request for the version being sent joins
// it; auto_update and update_on_attach queue behind it; on_update_failure = previous resends), and
// keeps the outcomes (Status.last_update, WaitLoaded, metrics). The parts it owns each live in
// their own files:
// - the transfer backend (transfer_backend.h): the staging slots, the workers' grants, and how a
//   bucket fills the slots (host memcpy; cuda uploads + NCCL broadcast), chosen once;
// - the worker registry (worker_registry.h): the attached workers and what each holds;
// - the running update (update_run.h): its lease, plan and participants, the pipeline and the ack
//   state machine, and the participants' results.
// The Consumer service feeds it the workers' streams through WorkerChannel; Admin.Update (and
// auto_update) call Update.
//
// One update runs at a time; a second answers FAILED_PRECONDITION naming the running version.
//
// Thread-safety: every method may be called from any thread.
#ifndef CKPT_DAEMON_UPDATE_UPDATE_ENGINE_H_
#define CKPT_DAEMON_UPDATE_UPDATE_ENGINE_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/cluster/cluster.h"
#include "daemon/store/version_store.h"
#include "daemon/transfer/backend_kind.h"
#include "daemon/transfer/gloo_group.h"
#include "daemon/transfer/transfer_backend.h"
#include "daemon/update/byte_rate.h"
#include "daemon/update/conversion.h"
#include "daemon/update/push_feed.h"
#include "daemon/update/update_run.h"
#include "daemon/update/version_parts.h"
#include "daemon/update/worker_registry.h"
#include "gpu/gpu_info.h"
#include "proto/admin.pb.h"
#include "proto/consumer.pb.h"

namespace ckpt::daemon {

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
    // Pulls: the bytes per second a pull reads from other members at most (all sources
    // together), and that this member serves to others' pulls (config pull_bytes_per_second);
    // 0: no limit.
    uint64_t pull_bytes_per_second = 0;
    // A member that starts holding no version pulls the newest the others hold (MaybePullOnJoin).
    bool pull_on_join = false;
    // FP8 on the way (config fp8_weights, fp8_exclude, fp8_by_default; docs/conversion.md).
    Fp8Rules fp8;
    bool fp8_by_default = false;
  };

  // Creates the transfer backend of `backend` (host: one SlotSet in shared memory; cuda: a SlotSet,
  // streams and events per GPU of `gpus`, one NCCL communicator over them when there are several).
  static absl::StatusOr<std::unique_ptr<UpdateEngine>> Create(BackendKind backend,
                                                              const std::vector<gpu::GpuInfo>& gpus,
                                                              VersionStore* store, Options options);
  ~UpdateEngine();
  UpdateEngine(const UpdateEngine&) = delete;
  UpdateEngine& operator=(const UpdateEngine&) = delete;

  const Options& options() const { return options_; }
  // The slots and the grants to workers (the Consumer service's attach), immutable after Create.
  const TransferBackend& transfer() const { return *transfer_; }

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
  // when the store no longer holds it). `trigger` is recorded in the outcome (Status.last_update).
  // Errors: NOT_FOUND (version unknown, retired or staging; a pid not attached),
  // FAILED_PRECONDITION (another update runs; no worker attached), ABORTED / DEADLINE_EXCEEDED
  // naming the workers that failed, UNAVAILABLE (shutting down). `cancelled` (may be empty): polled
  // about every second by a joining request.
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

  // Totals since start, for metrics (daemon/server/metrics.h).
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

  // An overlapped push + update (docs/local-push.md): sends STAGING version feed->version() to
  // every attached worker while it is still being pushed. `lease` holds its memory and `manifest`
  // is its manifest as begun (a copy: the store rewrites its own at commit). A bucket goes out once
  // `feed` says every tensor in it is in and verified (the buckets in the order they become ready,
  // the pieces of a split tensor back to back), and VersionDone once the version committed. The
  // update claims the one update slot only when its first bucket is ready; if another update holds
  // it then, this version is sent after its commit instead, as auto_update sends one. A push that
  // fails after buckets went out fails the update: no worker loads the version (those sent some of
  // it report it as mixed_version; on_update_failure = previous applies). Runs on a thread of the
  // engine; returns false, starting nothing, when it cannot overlap: no worker attached, a cluster
  // with other members up, the engine stopping, or another overlapped update not ended yet (the
  // caller then has the version updated after its commit).
  bool StartOverlapped(std::shared_ptr<VersionStore::ReadLease> lease,
                       std::shared_ptr<const v1::Manifest> manifest, std::shared_ptr<PushFeed> feed,
                       const std::string& trigger);

  // Shutdown: fails a running update, refuses new ones, closes every worker's stream with `reason`.
  void Stop(const std::string& reason);

  std::vector<v1::WorkerStatus> Workers() const;
  uint64_t updating_version() const;

  // Cluster updates (docs/cluster.md): with a cluster whose other members are up, Update
  // coordinates one update of every member's workers; ServeMemberUpdate serves this member's part
  // of an update another member coordinates (Peer.MemberUpdate). `cluster` outlives the engine's
  // use of it (set once, before the cluster serves; null: no cluster).
  void SetCluster(Cluster* cluster);
  absl::Status ServeMemberUpdate(MemberUpdateStream& stream);
  // Peer.VersionManifest: a page of the manifest of a committed version held here.
  absl::StatusOr<v1::VersionManifestResponse> ServeVersionManifest(
      const v1::VersionManifestRequest& request);
  // After every Hello round (Cluster::SetAfterRound): for each version held here in parts, learns
  // the tensors of the parts other members that are up hold (VersionManifest), and keeps them
  // while the version is held here, also once that member is gone (an update refused for a
  // missing part then names its tensors and where they were). At most a few fetches per round,
  // each bounded by cluster_timeout.
  void RefreshPartCatalog();
  // Peer.ReadTensors: the bytes of tensors of a committed version held here, in chunks.
  absl::Status ServeReadTensors(const v1::ReadTensorsRequest& request,
                                const std::function<bool(const v1::TensorChunk&)>& write);
  // Admin.Pull (docs/cluster.md, "Pulls"): copies a committed version (0: the newest the members
  // that are up hold, whole or in every part) from those members into this store, each tensor
  // from one of its holders (bytes balanced over them, all at once; a holder that fails midway is
  // replaced by another holding the same tensors), verified by the store's commit; nothing of a
  // failed pull stays. Then, with request.update, updates this daemon's own workers.
  // `cancelled` (may be empty): the caller went away; the pull stops at its next step. One pull
  // at a time (FAILED_PRECONDITION naming the running one); `trigger` ("operator", "join") is
  // recorded in its progress (LastPull).
  absl::StatusOr<v1::PullResponse> PullVersion(const v1::PullRequest& request, absl::Time deadline,
                                               const std::function<bool()>& cancelled,
                                               const std::string& trigger = "operator");
  // The running pull's progress as of this call, or the last pull's (nullopt before the first
  // that chose a version it did not hold).
  std::optional<v1::PullProgress> LastPull() const;
  // After every Hello round, in the first kJoinWindow after start (pull_on_join): when this store
  // holds no version and other members that are up hold one, and none of them is updating, pulls
  // the newest (with update) on a thread of its own; a failed try is tried again next round.
  void MaybePullOnJoin();
  static constexpr absl::Duration kJoinWindow = absl::Minutes(10);

 private:
  // What one run needs (RunLocked).
  struct Prepared {
    uint64_t version = 0;
    std::shared_ptr<const v1::Manifest> manifest;
    std::shared_ptr<VersionStore::ReadLease> lease;  // null on a member without the version
    UpdatePlan plan;
    std::vector<UpdateRun::Participant> participants;
    v1::UpdateResponse response;  // the workers skipped so far
    std::unique_ptr<BucketFiller> filler;
    bool every_bucket = false;          // a rank of a cluster update
    bool unrestricted = false;          // joinable by a plain request
    bool consistent = false;            // pause every participant first (UpdateRequest.consistent)
    bool fp8 = false;                   // converts (BeginConversion before the run)
    std::optional<Fp8Rules> fp8_rules;  // the rules it was asked with (Fp8For), converting or not
    uint64_t fp8_scale_bytes = 0;
    // Consistent: set, the workers that paused are handed here (a cluster member resumes them
    // when the coordinator says so); null, RunLocked resumes them as its run ends.
    std::vector<std::shared_ptr<WorkerRecord>>* paused = nullptr;
  };
  // OK when no update runs (or holds the slot) and the engine is not stopping; else UNAVAILABLE or
  // FAILED_PRECONDITION naming the running version.
  absl::Status SlotFreeLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The FP8 rules an update converts with (nullopt: none), and whether it asked for them itself
  // (CONVERSION_FP8 or patterns of its own) rather than by fp8_by_default. INVALID_ARGUMENT /
  // FAILED_PRECONDITION for a request that cannot be served.
  struct Fp8Choice {
    std::optional<Fp8Rules> rules;
    bool asked = false;
  };
  absl::StatusOr<Fp8Choice> Fp8For(const v1::UpdateRequest& request) const;
  // Runs `p` in the update slot (free, or claimed for p.version by this caller), records its
  // outcome (trigger, started) and frees the slot, unless `keep_slot` (a cluster update frees it
  // when its other parts ended too). UNAVAILABLE when the engine is stopping.
  absl::StatusOr<v1::UpdateResponse> RunLocked(Prepared p, const std::string& trigger,
                                               absl::Time started, bool keep_slot = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The coordinator's side of a cluster update of the leased version with the members `others`
  // (up, not this one).
  absl::StatusOr<v1::UpdateResponse> RunClusterUpdate(
      const v1::UpdateRequest& request, const std::string& trigger,
      std::shared_ptr<VersionStore::ReadLease> lease, std::vector<v1::ClusterMember> others);
  // The communicator among the cluster's ranks, kept across updates while the ranks stay the
  // same (used only by the update holding the update slot).
  struct ClusterGroup {
    std::string id;
    std::vector<std::pair<std::string, std::string>> ranks;  // node_name, instance
    std::unique_ptr<GlooGroup> group;
  };
  // Creates (create) or checks the communicator `id` of `ranks`; this rank is `rank`; the
  // rendezvous is at `coordinator` (this member when it is its own name).
  // What a member holds of a version in parts, fetched through VersionManifest; every page within
  // min(limit, cluster_timeout) of the start.
  absl::StatusOr<PartHolding> FetchHolding(const std::string& member, uint64_t version,
                                           absl::Duration limit);
  // The catalog's entry for what `member` holds of `held.version()`, when it is current (the same
  // process, the same parts as its Hello says).
  std::optional<PartHolding> CatalogEntry(const v1::ClusterMember& member,
                                          const v1::HeldVersion& held);
  // Every holding of `version` the cluster update may use: this member's (`lease`), each up
  // member's in `others` holding parts of it (from the catalog when current, else fetched now),
  // and the catalog's of members that are not up (usable false: where parts were).
  absl::StatusOr<std::vector<PartHolding>> GatherHoldings(
      const VersionStore::ReadLease& lease, const std::vector<v1::ClusterMember>& others);
  absl::Status EnsureGroup(const std::string& id, bool create,
                           const std::vector<std::pair<std::string, std::string>>& ranks, int rank,
                           const std::string& coordinator);

  UpdateEngine(std::unique_ptr<TransferBackend> transfer, VersionStore* store, Options options);
  void AutoUpdateLoop();
  // One update (Update without joining or `previous`); records its outcome once it claimed the
  // update slot.
  absl::StatusOr<v1::UpdateResponse> RunUpdate(const v1::UpdateRequest& request,
                                               const std::string& trigger);
  absl::StatusOr<v1::UpdateResponse> ResendPrevious(absl::Time deadline);
  // on_update_failure = previous: after `result` (an update that ran) failed, resends their last
  // version to the workers left with mixed weights.
  void RecoverMixed(const absl::StatusOr<v1::UpdateResponse>& result, const std::string& trigger,
                    absl::Time deadline);
  // StartOverlapped's thread.
  void RunOverlapped(std::shared_ptr<VersionStore::ReadLease> lease,
                     std::shared_ptr<const v1::Manifest> manifest, std::shared_ptr<PushFeed> feed,
                     const std::string& trigger);
  // The feed's listener: the running update looks at its filler again.
  void WakeRun();
  // The newest version any attached worker loaded (0: none); workers are never sent an older one.
  uint64_t NewestLoadedLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Records how the running update ended (outcome, per-worker state) and wakes waiters.
  void FinishOutcome(const absl::StatusOr<v1::UpdateResponse>& result,
                     const v1::UpdateResponse& report) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<TransferBackend> transfer_;
  VersionStore* const store_;
  const Options options_;

  mutable absl::Mutex mu_;
  WorkerRegistry registry_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string stop_reason_ ABSL_GUARDED_BY(mu_);
  // The running update's version (0: none) and the update itself (owned here while it runs).
  uint64_t updating_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<UpdateRun> running_ ABSL_GUARDED_BY(mu_);
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
  // The running update pauses its workers (UpdateRequest.consistent): only it serves a consistent
  // request that joins.
  bool running_consistent_ ABSL_GUARDED_BY(mu_) = false;
  // The running update converts to FP8, and the rules it was asked with (Fp8For): only a request
  // with the same rules joins it (and one that asked for FP8 itself only one that converts).
  bool running_fp8_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Fp8Rules> running_fp8_rules_ ABSL_GUARDED_BY(mu_);
  int waiters_ ABSL_GUARDED_BY(mu_) = 0;
  // Set once, just after the cluster starts (its Peer server and this engine's auto-update thread
  // may read it from then on).
  std::atomic<Cluster*> cluster_{nullptr};
  // The join pull (MaybePullOnJoin): its thread, whether one runs, and the engine's start.
  std::thread join_thread_;
  std::atomic<bool> join_running_{false};
  std::atomic<bool> join_done_{false};
  const absl::Time engine_started_ = absl::Now();
  // Set by Stop: a running pull ends at its next chunk.
  std::atomic<bool> pulls_cancelled_{false};
  // The pull running now (pull_running_) or the last one, kept current by the pull (LastPull).
  absl::StatusOr<v1::PullResponse> RunPull(const v1::PullRequest& request, absl::Time deadline,
                                           const std::function<bool()>& cancelled,
                                           const std::string& trigger, absl::Time started);
  void PullProgressed(const std::function<void(v1::PullProgress&)>& change);
  mutable absl::Mutex pull_mu_;
  bool pull_running_ ABSL_GUARDED_BY(pull_mu_) = false;
  std::optional<v1::PullProgress> pull_ ABSL_GUARDED_BY(pull_mu_);
  // What this member serves to others' pulls (ReadTensors), all calls together.
  ByteRate serve_rate_{options_.pull_bytes_per_second};
  // The parts other members hold of versions held here in parts (RefreshPartCatalog): version ->
  // member -> what it held when last fetched (state: its state now).
  absl::Mutex catalog_mu_;
  std::map<uint64_t, std::map<std::string, PartHolding>> catalog_ ABSL_GUARDED_BY(catalog_mu_);
  // Fetches that failed ("member/instance/version"), not tried again before the time given.
  std::map<std::string, absl::Time> catalog_failed_ ABSL_GUARDED_BY(catalog_mu_);
  // Owned by whoever holds the update slot (one update at a time): no lock.
  ClusterGroup group_;
  std::thread auto_thread_;
  // The overlapped update's push, from StartOverlapped until its thread is about to end (one at a
  // time), and that thread (joined by the next StartOverlapped or the destructor).
  std::shared_ptr<PushFeed> overlap_feed_ ABSL_GUARDED_BY(mu_);
  std::thread overlap_thread_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_UPDATE_ENGINE_H_
