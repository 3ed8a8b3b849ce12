// gRPC's own log lines (gpr_log) go through spdlog, so that the daemon's stderr has one format, and
// can be captured while the server starts, so that a failed start reports gRPC's reason in its
// single line.
#ifndef CKPT_DAEMON_SERVER_GRPC_LOG_H_
#define CKPT_DAEMON_SERVER_GRPC_LOG_H_

#include <string>
#include <vector>

namespace ckpt::daemon {

// Installs the sink (idempotent, thread-safe). Until a capture is active, gRPC errors are logged at
// error level and other severities at debug.
void RouteGrpcLogsToSpdlog();

// While alive, gRPC log lines are held here instead of logged. One capture at a time (start-up
// only).
class GrpcLogCapture {
 public:
  GrpcLogCapture();
  // Logs nothing: what was captured and not taken is dropped at debug level.
  ~GrpcLogCapture();
  GrpcLogCapture(const GrpcLogCapture&) = delete;
  GrpcLogCapture& operator=(const GrpcLogCapture&) = delete;

  // The captured error lines, reduced to their gist: "No address added out of total 1 resolved for
  // '192.0.2.1:1' (Cannot assign requested address)". Empty when gRPC logged no error.
  std::string ErrorSummary() const;
};

// Reduces one gRPC error line (with its nested status dump) to a short phrase. Exposed for tests.
std::string SummarizeGrpcError(const std::string& message);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_GRPC_LOG_H_
