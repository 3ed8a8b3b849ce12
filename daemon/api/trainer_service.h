// The Trainer gRPC service (proto/trainer.proto) over the version store.
#ifndef CKPT_DAEMON_API_TRAINER_SERVICE_H_
#define CKPT_DAEMON_API_TRAINER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/time/time.h"
#include "daemon/api/attach_socket.h"
#include "daemon/api/auth.h"
#include "daemon/api/local_pull.h"
#include "daemon/api/local_push.h"
#include "daemon/api/stream_watchdog.h"
#include "daemon/store/file_loader.h"
#include "daemon/store/version_store.h"
#include "daemon/transfer/gpu_ingest.h"
#include "daemon/update/push_feed.h"
#include "daemon/update/update_engine.h"
#include "proto/trainer.grpc.pb.h"

namespace ckpt::daemon {

// Thread-safe (the store is). `store` must outlive the service.
class TrainerService final : public v1::Trainer::Service {
 public:
  struct Options {
    // Threads that read files in LoadFiles.
    int load_threads = 8;
    // Upper bound of one LoadFiles call (the client's deadline applies too).
    absl::Duration load_timeout = absl::Minutes(30);
    // Directories under which TCP callers may load files; empty: LoadFiles over TCP is refused.
    std::vector<std::string> load_files_dirs;
    // The descriptor socket, where local callers of LoadFiles pass their files' descriptors; null
    // without a Unix socket.
    AttachSocket* descriptors = nullptr;
    // A PushChunks stream that receives no chunk for this long is cancelled (its versions are
    // aborted); null watchdog: never.
    StreamWatchdog* watchdog = nullptr;
    absl::Duration push_idle_timeout = absl::Minutes(5);
    // Threads that copy one PushLocal window into the store.
    int local_copy_threads = 8;
    // The cuda backend's copy of a local trainer's CUDA tensors (PushLocal's ipc step); null on
    // the host backend (no GPU is offered to trainers then). Must outlive the service.
    const GpuIngest* gpu_ingest = nullptr;
    // The update engine, for a local push that an update follows (LocalPushBegin.update, or every
    // local push with auto_update): the push is sent to the workers while it arrives
    // (UpdateEngine::StartOverlapped). Null: never. Must outlive the service.
    UpdateEngine* engine = nullptr;
    bool auto_update = false;
    // Config local_pull: a local trainer's host tensors may be read straight out of its memory
    // (PushLocal's pull steps, process_vm_readv) instead of through its windows.
    bool local_pull = true;
    // Threads that read one pull step out of the trainer's memory.
    int pull_lanes = 8;
  };

  // Every call needs the trainer role (`auth`); the caller's name is the per-client key of the
  // store's staging limits. `store` and `auth` must outlive the service.
  TrainerService(VersionStore* store, const Authorizer* auth, Options options)
      : store_(store), auth_(auth), options_(std::move(options)) {}

  grpc::Status BeginVersion(grpc::ServerContext* context, const v1::BeginVersionRequest* request,
                            v1::BeginVersionResponse* response) override;
  // A stream that breaks before the client closes it (the trainer died or disconnected), or that
  // stays silent for push_idle_timeout, aborts the versions its chunks were for.
  grpc::Status PushChunks(grpc::ServerContext* context, grpc::ServerReader<v1::Chunk>* reader,
                          v1::PushChunksResponse* response) override;
  grpc::Status Commit(grpc::ServerContext* context, const v1::CommitRequest* request,
                      v1::VersionInfo* response) override;
  grpc::Status Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                     v1::AbortResponse* response) override;
  // Over TCP the daemon opens the files (under load_files_dirs only). On the Unix socket it never
  // opens a path: the caller passes the descriptors (LoadFilesRequest.fd_nonces), which must come
  // from a process of the caller's uid.
  // A path may name a directory or an index file (common/load_paths.h): over TCP the daemon
  // expands it (below load_files_dirs only); local callers expand before opening the files. A
  // caller that goes away while the bytes are read stops the load (its version is aborted).
  grpc::Status LoadFiles(grpc::ServerContext* context, const v1::LoadFilesRequest* request,
                         v1::VersionInfo* response) override;
  // LoadFiles that streams its progress: the load runs on a thread of its own while this one
  // sends at most one update per kProgressInterval (plus one when each stage begins), dropping
  // the updates a slow reader could not take, so the reads never wait for the stream. The last
  // message carries the committed version. A write that blocks past push_idle_timeout gets the
  // stream cancelled by the watchdog (and so the load aborted, if it still reads).
  grpc::Status LoadFilesWithProgress(grpc::ServerContext* context,
                                     const v1::LoadFilesRequest* request,
                                     grpc::ServerWriter<v1::LoadFilesProgress>* writer) override;

  // A push from a trainer on this node through shared-memory windows (docs/local-push.md). Unix
  // socket only (FAILED_PRECONDITION over TCP); the windows' memfds must come from the caller's
  // uid. A stream that breaks, errs or ends before its commit aborts its version; one silent for
  // push_idle_timeout is cancelled.
  grpc::Status PushLocal(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::LocalPushReply, v1::LocalPushRequest>* stream) override;

  // How often LoadFilesWithProgress sends an update while the counts change.
  static constexpr absl::Duration kProgressInterval = absl::Milliseconds(250);

 private:
  // How long LoadFiles waits for the descriptors of its nonces to arrive.
  static constexpr absl::Duration kPassedFilesTimeout = absl::Seconds(5);
  // Passed descriptors all LoadFiles calls together may hold at once (each holds at most its
  // paths' count plus one batch while it claims).
  static constexpr int64_t kMaxHeldPassedFds = 16384;

  // Counts descriptors against held_passed_fds_ while they are held; releases on destruction.
  class HeldFds {
   public:
    explicit HeldFds(std::atomic<int64_t>* held) : held_(held) {}
    ~HeldFds() { held_->fetch_sub(count_); }
    HeldFds(const HeldFds&) = delete;
    HeldFds& operator=(const HeldFds&) = delete;
    // False (and nothing added) when `n` more would pass kMaxHeldPassedFds.
    bool Add(int64_t n);

   private:
    std::atomic<int64_t>* held_;
    int64_t count_ = 0;
  };

  // The load of a LoadFiles or LoadFilesWithProgress call by `caller` (already authorized), ending
  // by `deadline`: over TCP (`tcp`) from the paths, else from the passed descriptors. `progress`
  // may be null. Stops when `context` is cancelled.
  absl::StatusOr<v1::VersionInfo> RunLoad(grpc::ServerContext* context,
                                          const v1::LoadFilesRequest& request,
                                          const Principal& caller, bool tcp, absl::Time deadline,
                                          LoadProgress* progress);
  // The end of a load started now: load_timeout, or the caller's deadline if sooner.
  absl::Time LoadDeadline(const grpc::ServerContext& context) const;

  // The one memfd a local caller passed with `nonce` for a PushLocal window, counted in `held`.
  absl::StatusOr<ScopedFd> ClaimWindow(const std::string& nonce, const Principal& caller,
                                       HeldFds& held);
  // One ipc step of a local push: checks its tensors, claims them in `copier`, copies them from
  // the trainer's GPUs into the version and records their checksums; adds their bytes to
  // `*ipc_bytes`. `feed` (may be null: no update follows the push) hears of each tensor as it is
  // in.
  absl::Status CopyIpcStep(const v1::LocalPushIpc& ipc, const v1::Manifest& manifest,
                           const std::map<std::string, int>& ipc_gpus, LocalPushCopier& copier,
                           uint64_t version, const std::string& token,
                           const std::function<bool()>& cancelled, uint64_t* ipc_bytes,
                           PushFeed* feed);
  // One pull step of a local push: checks its tensors and the nonce (`memory` null: the daemon
  // offered no pull), claims the tensors in `copier`, reads them from the trainer's memory into
  // the version and records their checksums; a step without tensors is a probe (`pulled->ok`;
  // one per push, counted in `*probes`).
  // `feed` (may be null) hears of each tensor as it is in.
  absl::Status PullStep(const v1::LocalPushPull& pull, const v1::Manifest& manifest,
                        const TrainerMemory* memory, const std::string& nonce,
                        LocalPushCopier& copier, uint64_t version, const std::string& token,
                        const std::function<bool()>& cancelled, PushFeed* feed, int* probes,
                        v1::LocalPushPulled* pulled);
  // The part of PushLocal after its first message: begins the version, copies the windows,
  // commits. Aborts the version on any failure.
  grpc::Status RunLocalPush(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::LocalPushReply, v1::LocalPushRequest>* stream,
      const Principal& caller, const v1::LocalPushBegin& begin, StreamWatchdog::Guard& watch);

  // The descriptors a local caller passed for `request`, one per path, in order, counted in `held`.
  absl::StatusOr<std::vector<LoadFile>> ClaimPassedFiles(const v1::LoadFilesRequest& request,
                                                         const Principal& caller, HeldFds& held);

  VersionStore* const store_;
  const Authorizer* const auth_;
  const Options options_;
  std::atomic<int64_t> held_passed_fds_{0};
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_TRAINER_SERVICE_H_
