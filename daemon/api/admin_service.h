// The Admin gRPC service (proto/admin.proto): status for ckptctl and operators.
#ifndef CKPT_DAEMON_API_ADMIN_SERVICE_H_
#define CKPT_DAEMON_API_ADMIN_SERVICE_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/api/auth.h"
#include "daemon/server/config.h"
#include "daemon/store/version_store.h"
#include "daemon/update/update_engine.h"
#include "gpu/gpu_info.h"
#include "proto/admin.grpc.pb.h"

namespace ckpt::daemon {

// What Status reports that does not change while the daemon runs.
struct DaemonFacts {
  BackendKind backend = BackendKind::kHost;
  gpu::GpuProbe gpus;
  absl::Time started = absl::Now();
};

// Thread-safe. The listen addresses are known only once the server has bound its ports (TCP port
// 0), so they are set after start; everything else is fixed at construction.
class AdminService final : public v1::Admin::Service {
 public:
  // Status, ListVersions and GetVersion need the read role, Update and Drop the operator role.
  AdminService(DaemonFacts facts, VersionStore* store, UpdateEngine* engine, const Authorizer* auth)
      : facts_(std::move(facts)), store_(store), engine_(engine), auth_(auth) {}

  void SetListeners(std::vector<v1::ListenerStatus> listeners, bool insecure_tcp)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The cluster's members for Status (set once the Peer API serves; unset: no cluster).
  using ClusterView = std::function<std::vector<v1::ClusterMember>()>;
  void SetCluster(std::string node_name, std::string address, ClusterView members)
      ABSL_LOCKS_EXCLUDED(mu_);

  grpc::Status Status(grpc::ServerContext* context, const v1::StatusRequest* request,
                      v1::StatusResponse* response) override ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status ListVersions(grpc::ServerContext* context, const v1::ListVersionsRequest* request,
                            v1::ListVersionsResponse* response) override;
  grpc::Status GetVersion(grpc::ServerContext* context, const v1::GetVersionRequest* request,
                          v1::GetVersionResponse* response) override;
  grpc::Status Drop(grpc::ServerContext* context, const v1::DropRequest* request,
                    v1::DropResponse* response) override;
  // Blocks until the update ends (UpdateEngine::Update), at most until the call's deadline when
  // it joins a running update.
  grpc::Status Update(grpc::ServerContext* context, const v1::UpdateRequest* request,
                      v1::UpdateResponse* response) override;
  // Operator role. Blocks until the pull (and its update) ends, by the call's deadline.
  grpc::Status Pull(grpc::ServerContext* context, const v1::PullRequest* request,
                    v1::PullResponse* response) override;
  // Read role. Blocks until the verdict or min(call deadline, timeout_seconds).
  grpc::Status WaitLoaded(grpc::ServerContext* context, const v1::WaitLoadedRequest* request,
                          v1::WaitLoadedResponse* response) override;

 private:
  const DaemonFacts facts_;
  VersionStore* const store_;
  UpdateEngine* const engine_;
  const Authorizer* const auth_;
  absl::Mutex mu_;
  std::vector<v1::ListenerStatus> listeners_ ABSL_GUARDED_BY(mu_);
  bool insecure_tcp_ ABSL_GUARDED_BY(mu_) = false;
  std::string node_name_ ABSL_GUARDED_BY(mu_);
  std::string cluster_address_ ABSL_GUARDED_BY(mu_);
  ClusterView cluster_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_ADMIN_SERVICE_H_
