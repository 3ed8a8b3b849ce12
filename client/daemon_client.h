// C++ client of a local or remote ckpt-engined: finds the daemon's endpoint and calls its Admin
// API.
//
// Errors come back as absl::Status with one-line messages meant for operators: the daemon is not
// running, the socket is not accessible, the call timed out, ...
#ifndef CKPT_CLIENT_DAEMON_CLIENT_H_
#define CKPT_CLIENT_DAEMON_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/admin.grpc.pb.h"

namespace ckpt::client {

struct Endpoint {
  // gRPC target: "unix:/run/ckpt-engine/ckpt-engined.sock" or "host:port".
  std::string target;
  // Set for Unix sockets: the socket's path.
  std::string unix_path;
};

// Picks the endpoint: `socket_path` if set, else `address` if set, else $CKPT_SOCKET, else the
// default socket. Setting both is INVALID_ARGUMENT.
absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& socket_path,
                                         const std::string& address);

// Converts a failed RPC into a Status whose message says what failed where. Codes are kept.
absl::Status FromGrpc(const grpc::Status& status, const std::string& rpc, const Endpoint& endpoint);

// Thread-safe; one channel per client.
class DaemonClient {
 public:
  // Checks what can be checked before connecting (a Unix socket exists, is a socket, is
  // accessible):
  //   UNAVAILABLE: no socket at the path (daemon not running);
  //   PERMISSION_DENIED: the socket exists but this user may not use it;
  //   FAILED_PRECONDITION: the path is not a socket.
  // The connection itself is made lazily by the first call.
  static absl::StatusOr<std::unique_ptr<DaemonClient>> Connect(const Endpoint& endpoint);

  // Admin.Status with a deadline of now + `timeout`.
  absl::StatusOr<v1::StatusResponse> Status(absl::Duration timeout);

  const Endpoint& endpoint() const { return endpoint_; }

 private:
  DaemonClient(Endpoint endpoint, std::unique_ptr<v1::Admin::Stub> admin)
      : endpoint_(std::move(endpoint)), admin_(std::move(admin)) {}

  const Endpoint endpoint_;
  const std::unique_ptr<v1::Admin::Stub> admin_;
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_DAEMON_CLIENT_H_
