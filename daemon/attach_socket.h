// AttachSocket: the descriptor socket beside the daemon's gRPC Unix socket (`<listen_unix>.fds`).
//
// gRPC neither carries file descriptors nor tells a service who its Unix peer is, so a worker first
// connects here (SOCK_SEQPACKET), sends the random nonce it will put in its AttachRequest, and
// keeps the connection open. The daemon learns the worker's pid and uid from this connection
// (SO_PEERCRED); the Consumer service matches the two by nonce, checks the identity, and answers on
// this connection: "ok" with the host backend's slot memfds attached, or the refusal.
//
// Thread-safety: all methods may be called from any thread. One thread accepts and reads nonces
// of many connections at once (poll), so silent connections never delay another's attach; every
// wait has a deadline, and the connections held at any time are bounded.
#ifndef CKPT_DAEMON_ATTACH_SOCKET_H_
#define CKPT_DAEMON_ATTACH_SOCKET_H_

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/fd_passing.h"
#include "common/scoped_fd.h"

namespace ckpt::daemon {

class AttachSocket {
 public:
  // A connection that presented a nonce.
  struct Presented {
    PeerCredentials peer;
    ScopedFd connection;
  };

  // Binds `path` (mode 0600; an existing socket file there is replaced: the caller holds the
  // daemon's socket claim) and starts accepting.
  static absl::StatusOr<std::unique_ptr<AttachSocket>> Listen(const std::string& path);
  // Stops accepting and removes the socket file.
  ~AttachSocket();
  AttachSocket(const AttachSocket&) = delete;
  AttachSocket& operator=(const AttachSocket&) = delete;

  const std::string& path() const { return path_; }

  // Takes the connection that presented `nonce`, waiting for it until `deadline`.
  // DEADLINE_EXCEEDED when none came.
  absl::StatusOr<Presented> Claim(const std::string& nonce, absl::Time deadline);

  // Nonces are 16 to 128 printable characters.
  static bool ValidNonce(const std::string& nonce);

 private:
  AttachSocket() = default;
  void AcceptLoop();

  std::string path_;
  ScopedFd listener_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  struct Entry {
    Presented presented;
    absl::Time arrived;
  };
  std::map<std::string, Entry> pending_ ABSL_GUARDED_BY(mu_);
  std::thread acceptor_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_ATTACH_SOCKET_H_
