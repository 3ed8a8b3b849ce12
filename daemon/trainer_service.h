// The Trainer gRPC service (proto/trainer.proto) over the version store.
#ifndef CKPT_DAEMON_TRAINER_SERVICE_H_
#define CKPT_DAEMON_TRAINER_SERVICE_H_

#include "absl/time/time.h"
#include "daemon/auth.h"
#include "daemon/version_store.h"
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
  };

  // Every call needs the trainer role (`auth`); the caller's name is the per-client key of the
  // store's staging limits. `store` and `auth` must outlive the service.
  TrainerService(VersionStore* store, const Authorizer* auth, Options options)
      : store_(store), auth_(auth), options_(std::move(options)) {}

  grpc::Status BeginVersion(grpc::ServerContext* context, const v1::BeginVersionRequest* request,
                            v1::BeginVersionResponse* response) override;
  // A stream that breaks before the client closes it (the trainer died or disconnected) aborts the
  // versions its chunks were for.
  grpc::Status PushChunks(grpc::ServerContext* context, grpc::ServerReader<v1::Chunk>* reader,
                          v1::PushChunksResponse* response) override;
  grpc::Status Commit(grpc::ServerContext* context, const v1::CommitRequest* request,
                      v1::VersionInfo* response) override;
  grpc::Status Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                     v1::AbortResponse* response) override;
  grpc::Status LoadFiles(grpc::ServerContext* context, const v1::LoadFilesRequest* request,
                         v1::VersionInfo* response) override;

 private:
  VersionStore* const store_;
  const Authorizer* const auth_;
  const Options options_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_TRAINER_SERVICE_H_
