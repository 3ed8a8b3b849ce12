#include "daemon/daemon.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "daemon/backend.h"
#include "daemon/grpc_log.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace ckpt::daemon {

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const Config& config) {
  std::unique_ptr<Daemon> d(new Daemon());
  d->gpus_ = gpu::ProbeGpus();
  ASSIGN_OR_RETURN(d->backend_, ResolveBackend(config.backend, d->gpus_));

  DaemonFacts facts;
  facts.backend = d->backend_;
  facts.gpus = d->gpus_;
  facts.host_memory_budget_bytes = config.host_memory_budget;
  facts.started = absl::Now();
  d->admin_ = std::make_unique<AdminService>(std::move(facts));

  grpc::ServerBuilder builder;
  if (!config.listen_unix.empty()) {
    ASSIGN_OR_RETURN(d->socket_claim_, SocketPathClaim::Claim(config.listen_unix));
    builder.AddListeningPort("unix:" + config.listen_unix, grpc::InsecureServerCredentials());
  }
  int tcp_port = -1;
  if (!config.listen_tcp.empty()) {
    builder.AddListeningPort(config.listen_tcp, grpc::InsecureServerCredentials(), &tcp_port);
  }
  builder.RegisterService(d->admin_.get());

  // The socket must never be reachable with wider permissions than 0600: gRPC creates it with the
  // process umask, so narrow that around the bind (nothing else creates files at this point), then
  // chmod.
  GrpcLogCapture grpc_log;
  mode_t old_umask = ::umask(0177);
  d->server_ = builder.BuildAndStart();
  ::umask(old_umask);
  if (d->server_ == nullptr) {
    std::string what;
    if (!config.listen_unix.empty()) what = absl::StrCat("unix:", config.listen_unix);
    if (!config.listen_tcp.empty()) {
      absl::StrAppend(&what, what.empty() ? "" : " and ", "tcp ", config.listen_tcp);
    }
    std::string why = grpc_log.ErrorSummary();
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot listen on ", what, ": ", why.empty() ? "address in use or not available" : why));
  }
  if (!config.listen_unix.empty()) {
    if (::chmod(config.listen_unix.c_str(), 0600) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot set mode 0600 on socket ", config.listen_unix, ": ", std::strerror(errno)));
    }
    d->listen_addresses_.push_back("unix:" + config.listen_unix);
  }
  if (!config.listen_tcp.empty()) {
    std::string host = config.listen_tcp.substr(0, config.listen_tcp.rfind(':'));
    d->listen_addresses_.push_back(absl::StrCat(host, ":", tcp_port));
  }
  d->admin_->SetListenAddresses(d->listen_addresses_);
  return d;
}

Daemon::~Daemon() { Shutdown(absl::ZeroDuration()); }

void Daemon::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
  server_.reset();
}

}  // namespace ckpt::daemon
