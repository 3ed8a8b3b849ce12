// File descriptors across Unix sockets (SCM_RIGHTS) and the identity of a socket's peer
// (SO_PEERCRED).
//
// The host backend shares its staging slots (memfds) with local workers this way; gRPC cannot carry
// descriptors, so they travel on a plain Unix socket beside the gRPC one. Every wait has a
// deadline.
#ifndef CKPT_COMMON_FD_PASSING_H_
#define CKPT_COMMON_FD_PASSING_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/scoped_fd.h"

namespace ckpt {

// At most this many descriptors in one message.
inline constexpr int kMaxFdsPerMessage = 64;

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// The credentials of the process at the other end of the connected Unix socket `fd` (as of
// connect).
absl::StatusOr<PeerCredentials> GetPeerCredentials(int fd);

// Sends `payload` (1..64 KiB) with `fds` (0..kMaxFdsPerMessage) attached, as one message on the
// connected SOCK_SEQPACKET or SOCK_STREAM socket `socket`. The descriptors stay owned by the caller
// (the receiver gets duplicates). DEADLINE_EXCEEDED if the socket does not become writable in time.
absl::Status SendWithFds(int socket, const std::string& payload, const std::vector<int>& fds,
                         absl::Time deadline);

struct ReceivedMessage {
  std::string payload;
  std::vector<ScopedFd> fds;  // owned by the receiver
};

// Receives one message (payload up to `max_payload` bytes) and the descriptors attached to it.
// UNAVAILABLE when the peer closed the socket; DEADLINE_EXCEEDED when nothing came in time;
// DATA_LOSS when the payload or the descriptors were truncated (the received ones are closed).
absl::StatusOr<ReceivedMessage> ReceiveWithFds(int socket, absl::Time deadline,
                                               size_t max_payload = 64 << 10);

}  // namespace ckpt

#endif  // CKPT_COMMON_FD_PASSING_H_
