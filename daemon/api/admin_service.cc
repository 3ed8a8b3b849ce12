#include "daemon/api/admin_service.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/version.h"
#include "daemon/api/grpc_status.h"

namespace ckpt::daemon {

void AdminService::SetListeners(std::vector<v1::ListenerStatus> listeners, bool insecure_tcp) {
  absl::MutexLock lock(&mu_);
  listeners_ = std::move(listeners);
  insecure_tcp_ = insecure_tcp;
}

grpc::Status AdminService::Status(grpc::ServerContext* context, const v1::StatusRequest* request,
                                  v1::StatusResponse* response) {
  if (auto s = auth_->Check(*context, kRoleRead, "Status"); !s.ok()) return s;
  absl::Time now = absl::Now();
  response->set_daemon_version(kVersion);
  response->set_pid(::getpid());
  response->set_uptime_seconds(absl::ToDoubleSeconds(now - facts_.started));
  response->set_started_unix_ms(absl::ToUnixMillis(facts_.started));
  response->set_backend(std::string(BackendName(facts_.backend)));
  for (const gpu::GpuInfo& g : facts_.gpus.gpus) {
    v1::GpuStatus* out = response->add_gpus();
    out->set_index(g.index);
    out->set_name(g.name);
    out->set_uuid(g.uuid);
    out->set_total_memory_bytes(g.total_memory_bytes);
    out->set_pci_bus_id(g.pci_bus_id);
  }
  response->set_no_gpu_reason(facts_.gpus.no_gpu_reason);
  VersionStore::Usage usage = store_->GetUsage();
  response->set_host_memory_budget_bytes(usage.budget_bytes);
  response->set_host_memory_used_bytes(usage.used_bytes);
  response->set_latest_committed_version(usage.latest_committed);
  response->set_staging_versions(usage.staging);
  response->set_committed_versions(usage.committed);
  response->set_store_ready_bytes(usage.ready_bytes);
  response->set_store_ready(usage.ready);
  response->set_store_error(usage.ready_error);
  response->set_store_warmup_seconds(absl::ToDoubleSeconds(usage.warmup_elapsed));
  response->set_store_pinned(usage.pinned);
  response->set_gpu_memory_per_gpu_bytes(engine_->transfer().gpu_bytes_per_gpu());
  response->set_bucket_bytes(engine_->options().bucket_bytes);
  response->set_slots_per_gpu(engine_->options().slots_per_gpu);
  response->set_updating_version(engine_->updating_version());
  for (v1::WorkerStatus& w : engine_->Workers()) *response->add_workers() = std::move(w);
  if (auto last = engine_->LastUpdate(); last.has_value()) *response->mutable_last_update() = *last;
  if (auto pull = engine_->LastPull(); pull.has_value()) *response->mutable_pull() = *pull;
  response->set_attached_workers(response->workers_size());
  ClusterView cluster;
  {
    absl::MutexLock lock(&mu_);
    cluster = cluster_;
  }
  // Outside this service's lock: Members() asks the store and the engine.
  if (cluster) {
    for (v1::ClusterMember& m : cluster()) *response->add_cluster_members() = std::move(m);
  }
  absl::MutexLock lock(&mu_);
  for (const v1::ListenerStatus& l : listeners_) {
    response->add_listen_addresses(l.address());
    *response->add_listeners() = l;
  }
  response->set_insecure_tcp(insecure_tcp_);
  response->set_node_name(node_name_);
  response->set_cluster_listen(cluster_address_);
  return grpc::Status::OK;
}

void AdminService::SetCluster(std::string node_name, std::string address, ClusterView members) {
  absl::MutexLock lock(&mu_);
  node_name_ = std::move(node_name);
  cluster_address_ = std::move(address);
  cluster_ = std::move(members);
}

grpc::Status AdminService::ListVersions(grpc::ServerContext* context,
                                        const v1::ListVersionsRequest* request,
                                        v1::ListVersionsResponse* response) {
  if (auto s = auth_->Check(*context, kRoleRead, "ListVersions"); !s.ok()) return s;
  for (v1::VersionInfo& info : store_->List()) *response->add_versions() = std::move(info);
  return grpc::Status::OK;
}

grpc::Status AdminService::GetVersion(grpc::ServerContext* context,
                                      const v1::GetVersionRequest* request,
                                      v1::GetVersionResponse* response) {
  if (auto s = auth_->Check(*context, kRoleRead, "GetVersion"); !s.ok()) return s;
  auto got = store_->Get(request->version());
  if (!got.ok()) return ToGrpc(got.status());
  *response = std::move(*got);
  return grpc::Status::OK;
}

grpc::Status AdminService::Drop(grpc::ServerContext* context, const v1::DropRequest* request,
                                v1::DropResponse* response) {
  if (auto s = auth_->Check(*context, kRoleOperator, "Drop"); !s.ok()) return s;
  return ToGrpc(store_->Drop(request->version()));
}

grpc::Status AdminService::WaitLoaded(grpc::ServerContext* context,
                                      const v1::WaitLoadedRequest* request,
                                      v1::WaitLoadedResponse* response) {
  if (auto s = auth_->Check(*context, kRoleRead, "WaitLoaded"); !s.ok()) return s;
  const double seconds = request->timeout_seconds();
  if (!(seconds >= 0) || seconds > 7 * 24 * 3600.0) {
    return ToGrpc(absl::InvalidArgumentError(absl::StrCat(
        "timeout_seconds ", seconds, " must be between 0 and one week (0: 10 minutes)")));
  }
  const absl::Time deadline =
      std::min(CallDeadline(*context),
               absl::Now() + (seconds == 0 ? absl::Minutes(10) : absl::Seconds(seconds)));
  auto result = engine_->WaitLoaded(request->version(), deadline,
                                    [context] { return context->IsCancelled(); });
  if (!result.ok()) return ToGrpc(result.status());
  *response = std::move(*result);
  return grpc::Status::OK;
}

grpc::Status AdminService::Update(grpc::ServerContext* context, const v1::UpdateRequest* request,
                                  v1::UpdateResponse* response) {
  if (auto s = auth_->Check(*context, kRoleOperator, "Update"); !s.ok()) return s;
  auto result = engine_->Update(*request, CallDeadline(*context), "request",
                                [context] { return context->IsCancelled(); });
  if (!result.ok()) return ToGrpc(result.status());
  *response = std::move(*result);
  return grpc::Status::OK;
}

grpc::Status AdminService::Pull(grpc::ServerContext* context, const v1::PullRequest* request,
                                v1::PullResponse* response) {
  if (auto s = auth_->Check(*context, kRoleOperator, "Pull"); !s.ok()) return s;
  auto result = engine_->PullVersion(*request, CallDeadline(*context),
                                     [context] { return context->IsCancelled(); });
  if (!result.ok()) return ToGrpc(result.status());
  *response = std::move(*result);
  return grpc::Status::OK;
}

}  // namespace ckpt::daemon
