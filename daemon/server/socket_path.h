// Claims the path of the daemon's Unix socket for this process.
//
// A lock file beside the socket ("<path>.lock", flock) tells a live daemon from a stale socket left
// by a dead one: the lock dies with its process. Claiming makes the socket's directory if missing,
// refuses a path held by a live daemon, replaces a stale socket, and refuses to remove anything
// that is not a socket.
#ifndef CKPT_DAEMON_SERVER_SOCKET_PATH_H_
#define CKPT_DAEMON_SERVER_SOCKET_PATH_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/scoped_fd.h"

namespace ckpt::daemon {

class SocketPathClaim {
 public:
  // Claims `socket_path` (absolute, at most 107 bytes). Errors, all naming the path:
  //   FAILED_PRECONDITION: the directory cannot be created or written, or the path is not a socket;
  //   ALREADY_EXISTS: a live daemon holds the path (its pid is in the message).
  // On success the socket path is free to bind, and the lock file holds this process's pid.
  static absl::StatusOr<SocketPathClaim> Claim(const std::string& socket_path);

  SocketPathClaim() = default;
  SocketPathClaim(SocketPathClaim&&) = default;
  SocketPathClaim& operator=(SocketPathClaim&&);
  ~SocketPathClaim();

  const std::string& path() const { return path_; }

 private:
  // Removes the socket and the lock file (while still holding the lock), then releases the lock.
  void Release();

  std::string path_;
  ScopedFd lock_fd_;
};

// The files the daemon makes beside each other for `socket_path`: the gRPC socket, the descriptor
// socket ("<path>.fds") and the lock file ("<path>.lock").
std::string DescriptorSocketPath(const std::string& socket_path);
std::string LockFilePath(const std::string& socket_path);
std::vector<std::string> SocketFiles(const std::string& socket_path);

// chmod of the socket file at `path` (`what` names it in the error).
absl::Status ChmodSocket(const std::string& path, mode_t mode, const char* what);

// A listening Unix socket of `type` (SOCK_STREAM, SOCK_SEQPACKET) bound at `path` with `mode`:
// non-blocking and close-on-exec. The socket file never has wider permissions than `mode` (it is
// bound under umask 0177, then chmod-ed). An existing socket file at `path` is replaced (the caller
// holds the daemon's SocketPathClaim); anything else there is refused. `what` names the socket in
// errors ("descriptor socket").
absl::StatusOr<ScopedFd> ListenUnix(const std::string& path, int type, mode_t mode,
                                    const char* what);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_SOCKET_PATH_H_
