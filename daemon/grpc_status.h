// absl::Status -> grpc::Status for the service layer (the only place where gRPC statuses are made).
#ifndef CKPT_DAEMON_GRPC_STATUS_H_
#define CKPT_DAEMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "common/message_text.h"
#include "grpcpp/support/status.h"

namespace ckpt::daemon {

// Same code (the canonical codes share their numbers) and message, the message cut to
// kMaxStatusMessageBytes so that no error can exceed a client's metadata limit.
inline grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const absl::Status bounded = BoundStatusMessage(status);
  return grpc::Status(static_cast<grpc::StatusCode>(bounded.code()),
                      std::string(bounded.message()));
}

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_GRPC_STATUS_H_
