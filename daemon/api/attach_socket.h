// AttachSocket: the descriptor socket beside the daemon's gRPC Unix socket (`<listen_unix>.fds`).
//
// gRPC neither carries file descriptors nor tells a service who its Unix peer is, so a worker first
// connects here (SOCK_SEQPACKET), sends the random nonce it will put in its AttachRequest, and
// keeps the connection open. The daemon learns the worker's pid and uid from this connection
// (SO_PEERCRED); the Consumer service matches the two by nonce, checks the identity, and answers on
// this connection: "ok" with the host backend's slot memfds attached, or the refusal.
//
// Trainers pass the descriptors of the files of a LoadFiles the same way: the nonce message
// carries up to kMaxFdsPerMessage descriptors, and the Trainer service claims them by the nonces
// in its LoadFilesRequest.
//
// Who may use it (Policy): a connection of a uid that may not present at all (no worker or trainer
// role) is closed at accept; only uids that may pass files attach descriptors; a nonce presented by
// one uid is never replaced by another's. What is held is bounded in total and, for uids other than
// root and the daemon's own, per uid, and one uid's entries never make room by evicting another's.
//
// Thread-safety: all methods may be called from any thread. One thread accepts and reads nonces
// of many connections at once (poll), so silent connections never delay another's attach; every
// wait has a deadline, and the connections held at any time are bounded.
#ifndef CKPT_DAEMON_API_ATTACH_SOCKET_H_
#define CKPT_DAEMON_API_ATTACH_SOCKET_H_

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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
    // The descriptors that came with the nonce (LoadFiles).
    std::vector<ScopedFd> fds;
  };

  // Descriptors received with nonces and not claimed yet, at most (in total, and per uid other
  // than root and the daemon's own: one LoadFiles of kMaxLoadFiles files fits).
  static constexpr size_t kMaxPendingFds = 8192;
  static constexpr size_t kMaxPendingFdsPerUid = 4096 + 64;

  struct Policy {
    // May connect and present a nonce (worker or trainer role).
    std::function<bool(uid_t)> may_present;
    // May attach descriptors to its nonce (trainer role).
    std::function<bool(uid_t)> may_pass_files;
    // Exempt from the per-uid bounds (root and the daemon's own uid).
    std::function<bool(uid_t)> trusted;
  };

  // Binds `path` with `mode` (an existing socket file there is replaced: the caller holds the
  // daemon's socket claim) and starts accepting.
  // Every function of `policy` must be set.
  static absl::StatusOr<std::unique_ptr<AttachSocket>> Listen(const std::string& path, mode_t mode,
                                                              Policy policy);
  // Stops accepting and removes the socket file.
  ~AttachSocket();
  AttachSocket(const AttachSocket&) = delete;
  AttachSocket& operator=(const AttachSocket&) = delete;

  const std::string& path() const { return path_; }
  // chmod of the socket file (SIGHUP may give other uids roles, or take them away).
  absl::Status SetMode(mode_t mode);

  // Takes the connection that presented `nonce`, waiting for it until `deadline`.
  // DEADLINE_EXCEEDED when none came.
  absl::StatusOr<Presented> Claim(const std::string& nonce, absl::Time deadline);

  // Nonces are 16 to 128 printable characters.
  static bool ValidNonce(const std::string& nonce);

 private:
  AttachSocket() = default;
  void AcceptLoop();
  struct Entry;
  // Adds a presented nonce, making room per the bounds; returns why it was refused ("" if added).
  std::string AddPending(const std::string& nonce, Presented presented)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::string path_;
  Policy policy_;
  ScopedFd listener_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  struct Entry {
    Presented presented;
    absl::Time arrived;
  };
  std::map<std::string, Entry> pending_ ABSL_GUARDED_BY(mu_);
  size_t pending_fds_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread acceptor_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_ATTACH_SOCKET_H_
