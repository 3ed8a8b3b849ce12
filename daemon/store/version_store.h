// VersionStore: checkpoint versions in the daemon's host arena.
//
// A version is STAGING from Begin until Commit has found every byte present and every XXH3-64
// checksum matching; then COMMITTED (visible to readers) until it is retired (Drop, or pushed out
// by newer versions: the max_versions highest committed ids stay; an older one that an update is
// sending stays until that update ends) or, while STAGING, aborted (Abort, a broken push stream,
// or no activity for staging_timeout). Retired and aborted versions are forgotten and their memory
// returns to the arena. The newest committed version (highest id) is never retired.
//
// Concurrent pushes: versions stage in parallel and each commits when its bytes are complete, in
// any order. A version that commits after a higher id did is committed as an older version (the
// newest stays the highest id; it is retired at once if max_versions higher ids are committed).
//
// Memory: each tensor gets its own 256-byte aligned range of the arena at Begin (admission control:
// RESOURCE_EXHAUSTED when the version cannot fit even after retiring the committed versions that
// may be retired: every committed version but the newest). Chunks are copied straight from the
// RPC's buffers into those ranges; a chunk sent twice writes the same bytes again and counts once.
//
// Warm-up: an arena created with HostArena::Populate::kLater is made ready after the daemon starts
// serving (StartWarmUp: a background thread, piece by piece, oldest offset first). Ranges are
// handed out only below the ready mark, so an admitted version's memory is real at once and never
// fails later for lack of memory. A Begin that does not fit in what is ready waits for more, up to
// Options::ready_wait (at once when the warm-up's pace says it would come later than that), then
// is refused with UNAVAILABLE ("the store is still getting memory ready: X of Y ready ...; retry")
// when the version would fit once warm-up is done. A warm-up that fails (out of memory) stops
// there: the store keeps serving with what is ready (GetUsage().ready_error says why).
//
// Version ids: 0 asks the store for the next id (above every id begun, and with an IdLedger above
// every id begun before a restart). A given id must be at most kMaxVersionId (INVALID_ARGUMENT),
// must not be in use (ALREADY_EXISTS), must be greater than every id committed so far
// (FAILED_PRECONDITION), so readers only ever see ids increase, and with a ledger must not have
// been committed with other weights before a restart (ALREADY_EXISTS at Begin when the manifest
// has checksums, FAILED_PRECONDITION at Commit otherwise). An aborted id may be used again. Ids
// stop at kMaxVersionId: an automatic id past it is RESOURCE_EXHAUSTED (never a wrap to 0), which
// leaves 2^63 ids for any daemon's life.
//
// Limits (each refused at Begin, before a byte is sent): tensors per version, bytes of a tensor
// and of a version (the budget), label length, STAGING versions in total and per client.
//
// Parts (v1::VersionPart; docs/cluster.md "Versions in parts"): a version may be pushed in parts,
// trainer rank r of N pushing the whole tensors it owns under one named id. Each part stages on
// its own (its own token; parts of one id stage in parallel) and, once its bytes and checksums
// are verified, is merged into the version of that id held here: one COMMITTED version whose
// manifest lists the tensors of every part held, by part index (a tensor that an earlier part
// holds with the same dtype, shape and checksum is kept once; with other bytes the commit is
// refused naming it). A merge replaces the version's object; leases of the one before keep it
// (and its memory) alive. Ids: a part of an id held here (as parts) is accepted although that id
// is not above the last committed one; the other rules stand. The commit listener hears of a
// parted version only once every part is held here. The ledger (state_dir) does not check or
// record parts' digests.
//
// Writers: every copy into a version (a chunk, a LoadFiles read) holds the version (shared
// ownership) while it writes, so an Abort, Drop or the staging reaper in the middle of a write
// never frees memory under it: the version leaves the store at once and its memory returns to the
// arena when the last writer is done.
//
// Thread-safety: every method may be called from any thread. Chunk copies of one or several
// versions run in parallel (the store lock is not held while copying).
#ifndef CKPT_DAEMON_STORE_VERSION_STORE_H_
#define CKPT_DAEMON_STORE_VERSION_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/store/host_arena.h"
#include "daemon/store/id_ledger.h"
#include "daemon/store/manifest.h"
#include "daemon/store/range_allocator.h"
#include "proto/admin.pb.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

// The largest version id (2^63 - 1): ids fit every client's signed 64-bit integers.
inline constexpr uint64_t kMaxVersionId = (uint64_t{1} << 63) - 1;

class VersionStore {
 private:
  struct Version;
  class Ranges;

 public:
  struct Options {
    // Committed versions kept at most; the oldest are retired when a commit exceeds it.
    int max_versions = 2;
    // A STAGING version without any chunk, commit or begin for this long is aborted (AbortStale).
    absl::Duration staging_timeout = absl::Minutes(5);
    // Threads that verify checksums at commit.
    int hash_threads = 8;
    // Tensors of one version at most (config key max_tensors_per_version).
    uint64_t max_tensors = kDefaultMaxTensors;
    // STAGING versions at once: in total, and per client (Begin's `client`).
    int max_staging = 16;
    int max_staging_per_client = 4;
    // state_dir: ids used before a restart (automatic ids continue above them; a given id that
    // was committed with other weights is refused). Not owned; may be null (ids start at 1).
    IdLedger* ledger = nullptr;
    // While warm-up runs: how long a Begin that needs more memory than is ready waits for it
    // (config key store_ready_wait); zero: refused at once.
    absl::Duration ready_wait = absl::Seconds(30);
  };

  struct Begun {
    uint64_t version = 0;
    std::string upload_token;
  };

  // Which part of a version a Begin opens: index < count, count 2..kMaxVersionParts; count 0: the
  // version is pushed whole.
  struct PartOf {
    uint32_t index;
    uint32_t count;
  };
  static constexpr uint32_t kMaxVersionParts = 4096;
  // INVALID_ARGUMENT naming what is wrong with `part` for `version` (a part needs a named id).
  static absl::Status CheckPartOf(const PartOf& part, uint64_t version);

  struct Usage {
    uint64_t budget_bytes = 0;
    uint64_t used_bytes = 0;
    uint32_t staging = 0;
    uint32_t committed = 0;
    uint64_t latest_committed = 0;
    // Warm-up: bytes of the budget that are real memory (versions are placed only there); the
    // whole budget is ready (kPinned: and pinned); the arena is registered with CUDA; why warm-up
    // stopped early (empty if it did not); how long it has taken or took.
    uint64_t ready_bytes = 0;
    bool ready = false;
    bool pinned = false;
    std::string ready_error;
    absl::Duration warmup_elapsed;
  };

  struct WarmUpOptions {
    // Populated per step (the stop flag is checked between pieces).
    uint64_t piece_bytes = uint64_t{256} << 20;
    // Testing only (CKPT_TEST_WARMUP_PACE): a pause after every piece.
    absl::Duration pause = absl::ZeroDuration();
    // Called on the warm-up thread after every step, outside the store's locks.
    std::function<void(const Usage&)> on_progress;
  };

  VersionStore(std::unique_ptr<HostArena> arena, Options options);
  ~VersionStore();
  VersionStore(const VersionStore&) = delete;
  VersionStore& operator=(const VersionStore&) = delete;

  // Opens a STAGING version for `client` (who began it, e.g. "uid 1000": the per-client staging
  // limit counts by it). `verify_checksums` false: the manifest carries no checksums; Commit
  // computes and records them (LoadFiles). Errors: INVALID_ARGUMENT (manifest, label, id over
  // kMaxVersionId), ALREADY_EXISTS / FAILED_PRECONDITION (id), RESOURCE_EXHAUSTED (needed and free
  // bytes in the message; too many staging versions; ids exhausted).
  // `deadline`: the caller's (the RPC's): a wait for memory during warm-up ends by then, and a
  // caller whose deadline passed gets DEADLINE_EXCEEDED instead of a version it can no longer use.
  // `may_retire` false: only free memory is used (RESOURCE_EXHAUSTED rather than retiring a
  // committed version to make room; a member's copy from a cluster update).
  // `transport`: VersionInfo.transport ("local", "cluster"); empty: "grpc" with verify_checksums,
  // else "files". `part`: one part of a version pushed in parts (see the top of this file):
  // ALREADY_EXISTS when that part is held or staging here, or the id is held whole;
  // FAILED_PRECONDITION when the id's other parts here name another count, or a tensor that a
  // committed part holds has another dtype, shape or checksum (when the manifest has checksums).
  absl::StatusOr<Begun> Begin(const v1::Manifest& manifest, uint64_t requested_version,
                              const std::string& label, const std::string& client = "",
                              bool verify_checksums = true,
                              absl::Time deadline = absl::InfiniteFuture(), bool may_retire = true,
                              const std::string& transport = "", PartOf part = {0, 0});

  // Copies `size` bytes to `offset` of `tensor`. Errors: NOT_FOUND (version not staging, unknown
  // tensor), PERMISSION_DENIED (token), OUT_OF_RANGE (past the tensor's end), FAILED_PRECONDITION
  // for a version begun with transport "local" (only its PushLocal stream writes it, through a
  // WriteLease; the same for Commit without expected checksums).
  absl::Status WriteChunk(uint64_t version, const std::string& token, const std::string& tensor,
                          uint64_t offset, const void* data, uint64_t size);

  // One part of a chunk that carries several tensors (Chunk.part_* in trainer.proto).
  struct ChunkPart {
    uint64_t tensor_index = 0;  // manifest order
    uint64_t offset = 0;
    uint64_t bytes = 0;
  };
  // At most this many parts in one chunk.
  static constexpr size_t kMaxChunkParts = 65536;
  // Part `k` of a `what` ("chunk", "window") against `manifest`: at least one byte, a tensor of
  // the manifest, inside it. INVALID_ARGUMENT or OUT_OF_RANGE naming the part.
  static absl::Status CheckPart(const v1::Manifest& manifest, absl::string_view what, size_t k,
                                const ChunkPart& part);

  // Copies `size` bytes of `data`, cut into `parts` in order, each to `offset` of its tensor. Every
  // part is checked before anything is written: INVALID_ARGUMENT (no parts, too many, a part of 0
  // bytes, the parts' bytes not adding up to `size`, an index past the manifest), OUT_OF_RANGE (a
  // part past its tensor's end); otherwise as WriteChunk.
  absl::Status WriteChunkParts(uint64_t version, const std::string& token,
                               const std::vector<ChunkPart>& parts, const void* data,
                               uint64_t size);

  // A reader that fills a STAGING version itself (LoadFiles) holds one of these while it writes:
  // it keeps the version's memory allocated (even if the version is aborted meanwhile), keeps the
  // staging reaper away, and lets Commit wait for it. Destroy it before Commit.
  class WriteLease {
   public:
    ~WriteLease();
    WriteLease(const WriteLease&) = delete;
    WriteLease& operator=(const WriteLease&) = delete;

    // The bytes of tensor i (manifest order): byte_size(i) writable bytes.
    uint8_t* data(int i) const;
    // Marks activity; false once the version was aborted or dropped (the writer should stop: its
    // bytes will never be committed).
    bool Touch();
    // Records bytes [offset, offset + bytes) of tensor i as received: INVALID_ARGUMENT for an
    // index past the manifest, OUT_OF_RANGE past the tensor's end, ABORTED when the version was
    // aborted.
    absl::Status MarkReceived(int i, uint64_t offset, uint64_t bytes);
    // Records every byte of every tensor as received. ABORTED when the version was aborted.
    absl::Status MarkAllReceived();
    // Counts bytes copied from a trainer's GPU memory (VersionInfo.ipc_bytes).
    void AddIpcBytes(uint64_t bytes);

   private:
    friend class VersionStore;
    WriteLease(VersionStore* store, std::shared_ptr<Version> v) : store_(store), v_(std::move(v)) {}
    VersionStore* store_;
    std::shared_ptr<Version> v_;
  };

  // A WriteLease on STAGING version `version`. Errors as for WriteChunk, and FAILED_PRECONDITION
  // while it is being committed.
  absl::StatusOr<std::unique_ptr<WriteLease>> OpenWriter(uint64_t version,
                                                         const std::string& token);

  // STAGING -> COMMITTED. FAILED_PRECONDITION listing tensors with missing bytes or a checksum
  // mismatch (the version stays STAGING: the trainer may resend and commit again, or abort).
  // `notify` false: the commit listener (auto_update) is not told. `expected_xxh3` (one per
  // tensor, manifest order) for a version begun without checksums (verify_checksums false): the
  // bytes are verified against them instead of only recorded (a local push, whose trainer hashes
  // while it copies). `computed_xxh3` (with expected_xxh3 only): the checksums of the version's
  // bytes, computed by the caller after its last write to each tensor (a local push hashes each
  // tensor once it is final), used instead of hashing them again here.
  absl::StatusOr<v1::VersionInfo> Commit(uint64_t version, const std::string& token,
                                         bool notify = true,
                                         const std::vector<uint64_t>* expected_xxh3 = nullptr,
                                         const std::vector<uint64_t>* computed_xxh3 = nullptr);

  // Forgets a STAGING version and frees its memory (once in-flight writers end). The token is
  // required (PERMISSION_DENIED when empty or wrong).
  absl::Status Abort(uint64_t version, const std::string& token, const std::string& why);

  // Retires a COMMITTED version or aborts a STAGING one (an operator's action: no token). NOT_FOUND
  // if neither.
  absl::Status Drop(uint64_t version);

  // STAGING and COMMITTED versions, by id.
  std::vector<v1::VersionInfo> List() const;
  absl::StatusOr<v1::GetVersionResponse> Get(uint64_t version) const;

  // Aborts STAGING versions idle since before now - staging_timeout. Returns how many.
  int AbortStale(absl::Time now);

  Usage GetUsage() const;
  // max_tensors_per_version (a cluster member checks manifests it is sent against it).
  uint64_t max_tensors() const { return options_.max_tensors; }

  // Totals since start, for metrics: commits by path (PushChunks with checksums from the trainer,
  // PushLocal, or LoadFiles), their bytes and seconds from Begin to commit, and staging versions
  // aborted.
  struct Counters {
    uint64_t commits_chunks = 0, commits_files = 0, commits_local = 0;
    uint64_t bytes_chunks = 0, bytes_files = 0, bytes_local = 0;
    double seconds_chunks = 0, seconds_files = 0, seconds_local = 0;
    uint64_t aborted = 0;
  };
  Counters GetCounters() const;

  // Makes an arena created with HostArena::Populate::kLater ready on a background thread: one
  // WarmUpStep after another until it ends. At most once; nothing happens for a ready arena.
  void StartWarmUp(WarmUpOptions options);
  // Stops the warm-up thread between pieces and joins it (a Pin already begun runs to its end);
  // a Begin waiting for memory stops waiting. Idempotent; not concurrently with itself. The
  // destructor calls it.
  void StopWarmUp();
  // One step of warm-up on the calling thread (what StartWarmUp's thread runs): populates the next
  // `piece_bytes`, or pins the arena once every piece is populated, then lets Begin use what is
  // ready. Returns true once warm-up has ended (ready, failed or stopped). Not concurrently with
  // itself or with the warm-up thread.
  bool WarmUpStep(uint64_t piece_bytes);

  // A COMMITTED version held for reading (an update sends it to workers; LeaseStaging: a STAGING
  // one, for an overlapped push + update): while a lease lives the
  // version is neither retired nor dropped (Drop answers FAILED_PRECONDITION). The store must
  // outlive its leases. (A STAGING version may still be aborted or dropped while leased: the
  // lease keeps its memory until it ends.)
  class ReadLease {
   public:
    ~ReadLease();
    ReadLease(const ReadLease&) = delete;
    ReadLease& operator=(const ReadLease&) = delete;

    uint64_t version() const;
    const v1::Manifest& manifest() const;
    // The bytes of tensor i (manifest order) and their offset in the host arena.
    const uint8_t* data(int i) const;
    uint64_t arena_offset(int i) const;
    // True once the version left the store (a STAGING one leased by LeaseStaging was aborted or
    // dropped: it will never commit).
    bool dropped() const;
    // Parts (see the top of this file): the count (0: pushed whole), the parts held, ascending,
    // tensor i's part, and whether every part is held here (always, for a version pushed whole).
    uint32_t part_count() const;
    const std::vector<uint32_t>& parts() const;
    uint32_t tensor_part(int i) const;
    bool complete() const;

   private:
    friend class VersionStore;
    ReadLease(VersionStore* store, std::shared_ptr<const Version> v)
        : store_(store), v_(std::move(v)) {}
    VersionStore* store_;
    std::shared_ptr<const Version> v_;
  };

  // Leases COMMITTED version `version` (0: the newest committed). NOT_FOUND for an unknown,
  // retired or still STAGING version (the message says which).
  absl::StatusOr<std::shared_ptr<ReadLease>> Lease(uint64_t version);

  // A STAGING version leased while it is still being pushed (an overlapped push + update,
  // UpdateEngine::StartOverlapped): its bytes stay allocated while the lease lives, even if the
  // push is aborted meanwhile, and once committed it is not retired until the lease ends. Which of
  // its bytes are final is the pusher's to say (PushFeed). `manifest` is a copy of the manifest as
  // begun: the lease's manifest() must not be read while the version may commit (the commit
  // rewrites it). Errors as for WriteChunk.
  struct StagingLease {
    std::shared_ptr<ReadLease> lease;
    std::shared_ptr<const v1::Manifest> manifest;
  };
  absl::StatusOr<StagingLease> LeaseStaging(uint64_t version, const std::string& token);

  const HostArena& arena() const { return *arena_; }

  // Called (outside the store's locks) after every commit with the new version's id; for
  // auto_update. Set once, before the store is shared.
  void SetCommitListener(std::function<void(uint64_t)> listener) {
    commit_listener_ = std::move(listener);
  }

 private:
  std::shared_ptr<Version> FindStaging(uint64_t version, const std::string& token,
                                       absl::Status* error) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // FindStaging under mu_ (shared).
  absl::StatusOr<std::shared_ptr<Version>> LookUpStaging(uint64_t version,
                                                         const std::string& token) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Registers a writer of `v` (Commit waits for writers; the reaper spares them) and marks
  // activity; FAILED_PRECONDITION once a commit has begun. The writer ends with --writers.
  absl::Status AddWriter(Version& v);
  // Bytes held by committed versions that may be retired to make room: all but the newest.
  uint64_t RetirableBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes the oldest retirable committed version; false if there is none.
  bool RetireOldest(std::vector<std::shared_ptr<Version>>* graveyard)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Retires the committed versions older than the newest max_versions, except leased ones (those
  // go when their last lease ends).
  void RetireBeyondMax(std::vector<std::shared_ptr<Version>>* graveyard)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `it` out of versions_ and marks it dropped (its writers stop); returns it.
  std::shared_ptr<Version> Remove(std::map<uint64_t, std::shared_ptr<Version>>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same for a staging part.
  using PartKey = std::pair<uint64_t, uint32_t>;  // version, part index
  std::shared_ptr<Version> RemovePart(std::map<PartKey, std::shared_ptr<Version>>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Begin's checks of part `part` of `version` against what is held and staging here.
  absl::Status CheckPartBeginLocked(const v1::Manifest& manifest, uint64_t version,
                                    const PartOf& part, bool verify_checksums) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The version `held` with the committed part `part` merged in (a new object); FAILED_PRECONDITION
  // naming a tensor both hold with other bytes.
  // (`part_manifest`: its manifest as it commits, with every checksum).
  absl::StatusOr<std::shared_ptr<Version>> MergePart(const Version& held, const Version& part,
                                                     const v1::Manifest& part_manifest);
  v1::VersionInfo Info(const Version& v) const;

  // The allocator's charge for `size` bytes (rounded up), nullopt past 2^64.
  std::optional<uint64_t> RoundedSize(uint64_t size) const;
  // While warm-up runs and less than `needed` is free in the ready part: waits (up to
  // options_.ready_wait) until it is, or warm-up ends, or the version could not fit anyway.
  void AwaitReadyFor(uint64_t needed, absl::Time deadline) ABSL_LOCKS_EXCLUDED(alloc_mu_);
  // UNAVAILABLE ("still getting memory ready ... retry") while warm-up runs and `needed` would fit
  // in `available` bytes plus what is not ready yet; OK otherwise.
  absl::Status StillWarmingUp(uint64_t needed, uint64_t available) const
      ABSL_LOCKS_EXCLUDED(alloc_mu_);
  // "; only X of the budget could be made ready (why)" after a failed warm-up; else empty.
  std::string UsableNote() const ABSL_LOCKS_EXCLUDED(alloc_mu_);
  // Time until `bytes` more are ready at the warm-up's pace so far; zero when unknown.
  absl::Duration ReadyEta(uint64_t bytes) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(alloc_mu_);
  void WarmUp(const WarmUpOptions& options);

  const std::unique_ptr<HostArena> arena_;
  const Options options_;
  // Bytes the allocator manages (the budget, rounded down to 256 bytes).
  const uint64_t allocator_capacity_;
  std::function<void(uint64_t)> commit_listener_;

  // Lock order: mu_ before alloc_mu_ (a version's ranges go back to the allocator when its last
  // reference drops, which may happen under mu_).
  mutable absl::Mutex mu_;
  std::map<uint64_t, std::shared_ptr<Version>> versions_ ABSL_GUARDED_BY(mu_);
  // STAGING parts (versions_ holds a parted version once its first part committed).
  std::map<PartKey, std::shared_ptr<Version>> part_staging_ ABSL_GUARDED_BY(mu_);
  uint64_t max_committed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t max_begun_ ABSL_GUARDED_BY(mu_) = 0;

  mutable absl::Mutex counters_mu_;
  Counters counters_ ABSL_GUARDED_BY(counters_mu_);

  mutable absl::Mutex alloc_mu_ ABSL_ACQUIRED_AFTER(mu_);
  // Its capacity is the ready part of the arena (it grows as warm-up goes).
  RangeAllocator allocator_ ABSL_GUARDED_BY(alloc_mu_);
  // Warm-up's state (under alloc_mu_: Begin waits on it).
  bool warm_ended_ ABSL_GUARDED_BY(alloc_mu_);
  std::string warm_error_ ABSL_GUARDED_BY(alloc_mu_);
  absl::Time warm_started_ ABSL_GUARDED_BY(alloc_mu_) = absl::InfinitePast();
  absl::Time warm_finished_ ABSL_GUARDED_BY(alloc_mu_) = absl::InfinitePast();
  uint64_t warm_start_bytes_ ABSL_GUARDED_BY(alloc_mu_) = 0;

  // The warm-up thread and its stop flag (a lock of its own, never held with another).
  absl::Mutex warm_mu_;
  bool warm_stop_ ABSL_GUARDED_BY(warm_mu_) = false;
  std::thread warm_thread_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_STORE_VERSION_STORE_H_
