// C++ client of a local or remote ckpt-engined: finds the daemon's endpoint and calls its Admin
// API (status, versions). The Trainer API is in trainer_client.h.
//
// Errors come back as absl::Status with one-line messages meant for operators: the daemon is not
// running, the socket is not accessible, the call timed out, ...
#ifndef CKPT_CLIENT_DAEMON_CLIENT_H_
#define CKPT_CLIENT_DAEMON_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "proto/admin.grpc.pb.h"

namespace ckpt::client {

// How a TCP client proves who it is (the daemon's Unix socket needs none: the caller's uid
// decides). Empty fields are taken from $CKPT_TLS_CA, $CKPT_TLS_CERT, $CKPT_TLS_KEY and
// $CKPT_TOKEN_FILE.
struct Credentials {
  std::string tls_ca;      // PEM CA that signed the daemon's certificate: TLS on
  std::string tls_cert;    // PEM client certificate (mTLS); needs tls_key
  std::string tls_key;     // PEM key of tls_cert
  std::string token_file;  // a file whose first line is the bearer token
};

struct Endpoint {
  // gRPC target: "unix:/run/ckpt-engine/ckpt-engined.sock" or "host:port".
  std::string target;
  // Set for Unix sockets: the socket's path.
  std::string unix_path;
  // TCP only: TLS files (read when a channel is opened) and the bearer token (read at resolve).
  Credentials credentials;
  std::string token;
};

// Picks the endpoint: `socket_path` if set, else `address` if set, else $CKPT_SOCKET, else the
// default socket. Setting both is INVALID_ARGUMENT. For TCP, fills `credentials` (see
// Credentials) and reads the token file: FAILED_PRECONDITION naming the file when it cannot be
// read or is empty; INVALID_ARGUMENT when tls_cert and tls_key are not given together.
absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& socket_path,
                                         const std::string& address,
                                         const Credentials& credentials = {});

// Converts a failed RPC into a Status whose message says what failed where. Codes are kept. The
// daemon's message gets "<rpc> failed: " in front unless it names the call already ("update to
// version 7: ...", "Status needs the read role ..."): the context is said once.
absl::Status FromGrpc(const grpc::Status& status, const std::string& rpc, const Endpoint& endpoint);

// Checks what can be checked before connecting (a Unix socket exists, is a socket, is accessible)
// and creates a channel to `endpoint`:
//   UNAVAILABLE: no socket at the path (daemon not running);
//   PERMISSION_DENIED: the socket exists but this user may not use it;
//   FAILED_PRECONDITION: the path is not a socket.
// The connection itself is made lazily by the first call. `private_connection`: the channel gets
// its own connection instead of sharing one with other channels to the same target (parallel
// upload streams use one each). Responses up to 256 MiB are accepted (large manifests).
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const Endpoint& endpoint,
                                                           bool private_connection = false);

// Thread-safe; one channel per client.
class DaemonClient {
 public:
  // The checks and errors of OpenChannel.
  static absl::StatusOr<std::unique_ptr<DaemonClient>> Connect(const Endpoint& endpoint);

  // Admin.Status with a deadline of now + `timeout`.
  absl::StatusOr<v1::StatusResponse> Status(absl::Duration timeout);

  // Admin.ListVersions: every version the daemon holds (STAGING and COMMITTED), as the daemon
  // orders them.
  absl::StatusOr<v1::ListVersionsResponse> ListVersions(absl::Duration timeout);

  // Admin.GetVersion: one version with its manifest; NOT_FOUND for an unknown or retired version.
  absl::StatusOr<v1::GetVersionResponse> GetVersion(uint64_t version, absl::Duration timeout);

  // Admin.Drop: retires a COMMITTED version (FAILED_PRECONDITION while workers read it) or aborts a
  // STAGING one; NOT_FOUND for an unknown version.
  absl::Status Drop(uint64_t version, absl::Duration timeout);
  // Admin.Pull: copies a version from the cluster's members (0: the newest), then with `update`
  // sends it to this daemon's workers.
  absl::StatusOr<v1::PullResponse> Pull(uint64_t version, bool update, absl::Duration timeout);

  // Admin.Update: sends a committed version to the attached workers and waits until they have it
  // (or `timeout`). The daemon's errors keep their code (see UpdateEngine::Update).
  absl::StatusOr<v1::UpdateResponse> Update(const v1::UpdateRequest& request,
                                            absl::Duration timeout);

  // Admin.WaitLoaded: waits up to `timeout` until every attached worker holds `version` (0: the
  // newest committed) or an update of it failed for some of them. OK with loaded = true, or
  // loaded = false and the summary naming who failed and why; DEADLINE_EXCEEDED naming the workers
  // that lack it when the timeout passes first.
  absl::StatusOr<v1::WaitLoadedResponse> WaitLoaded(uint64_t version, absl::Duration timeout);

  const Endpoint& endpoint() const { return endpoint_; }

 private:
  DaemonClient(Endpoint endpoint, std::unique_ptr<v1::Admin::Stub> admin)
      : endpoint_(std::move(endpoint)), admin_(std::move(admin)) {}

  const Endpoint endpoint_;
  const std::unique_ptr<v1::Admin::Stub> admin_;
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_DAEMON_CLIENT_H_
