// LocalListener: the daemon's gRPC Unix socket (listen_unix), accepted by the daemon itself so that
// every call knows which uid made it.
//
// gRPC's own Unix listener does not tell a service who its peer is. This one accepts connections,
// reads each one's credentials (SO_PEERCRED: the peer's uid, gid and pid as of connect), records
// them under the connection's descriptor, and hands the descriptor to the gRPC server
// (AddInsecureChannelFromFd), whose calls then show the peer "fd:N". A call's roles come from that
// record (Authorizer, uid_roles).
//
// Why "fd:N" identifies the connection: gRPC closes a connection's descriptor only when the
// transport is destroyed, and every call holds a reference to its transport until it ends, so
// during a call the number N still names the socket that call came on. The record also keeps the
// socket's inode, and PeerOf checks it against what N names now, so a stale record (a number
// reused by a later connection or file) is never taken for the current one.
//
// Thread-safety: PeerOf and SetMode may be called from any thread; Serve and Stop from one.
#ifndef CKPT_DAEMON_SERVER_LOCAL_LISTENER_H_
#define CKPT_DAEMON_SERVER_LOCAL_LISTENER_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/fd_passing.h"
#include "common/scoped_fd.h"
#include "grpcpp/server.h"

namespace ckpt::daemon {

class LocalListener {
 public:
  // Binds `path` with `mode` (an existing socket file there is replaced: the caller holds the
  // daemon's SocketPathClaim). Connections wait in the backlog until Serve.
  static absl::StatusOr<std::unique_ptr<LocalListener>> Listen(const std::string& path,
                                                               mode_t mode);
  // Stops accepting and removes the socket file.
  ~LocalListener();
  LocalListener(const LocalListener&) = delete;
  LocalListener& operator=(const LocalListener&) = delete;

  // Starts accepting connections and handing them to `server` (which must outlive Stop). A
  // connection whose uid `may_connect` refuses (a uid without any role) is closed at once: it could
  // only be refused call by call, while holding descriptors and server threads.
  void Serve(grpc::Server* server, std::function<bool(uid_t)> may_connect);
  // Stops accepting (connections already handed over stay with the server). Idempotent.
  void Stop();

  // The credentials of the connection a call with gRPC peer `grpc_peer` ("fd:N") came on;
  // nullopt for any other peer or a descriptor this listener did not accept.
  std::optional<PeerCredentials> PeerOf(const std::string& grpc_peer) const;

  // chmod of the socket file (uid_roles decides who needs to connect; SIGHUP may change it).
  absl::Status SetMode(mode_t mode);

  const std::string& path() const { return path_; }

 private:
  LocalListener() = default;
  void AcceptLoop(grpc::Server* server, const std::function<bool(uid_t)>& may_connect);

  struct Connection {
    ino_t inode;
    dev_t device;
    PeerCredentials peer;
  };

  std::string path_;
  ScopedFd listener_;
  ScopedFd wake_;  // eventfd: Stop wakes the accept loop
  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::unordered_map<int, Connection> connections_ ABSL_GUARDED_BY(mu_);
  std::thread acceptor_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_LOCAL_LISTENER_H_
