// absl::Status -> grpc::Status for the service layer (the only place where gRPC statuses are made).
#ifndef CKPT_DAEMON_API_GRPC_STATUS_H_
#define CKPT_DAEMON_API_GRPC_STATUS_H_

#include <chrono>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/message_text.h"
#include "grpcpp/server_context.h"
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

// The call's deadline as absl::Time; a call without one (gRPC's far-future time point) gets
// absl::InfiniteFuture(). Waits a handler does for its caller end by it.
inline absl::Time CallDeadline(const grpc::ServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_GRPC_STATUS_H_
