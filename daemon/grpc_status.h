// absl::Status -> grpc::Status for the service layer (the only place where gRPC statuses are made).
#ifndef CKPT_DAEMON_GRPC_STATUS_H_
#define CKPT_DAEMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace ckpt::daemon {

// Same code (the canonical codes share their numbers) and message.
inline grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_GRPC_STATUS_H_
