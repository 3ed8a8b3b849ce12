// The client side of the daemon's descriptor socket (`<listen_unix>.fds`, see
// daemon/api/attach_socket.h): a process presents a random nonce there, with descriptors attached
// or not, and then names the nonce in a gRPC call (AttachRequest.nonce,
// LoadFilesRequest.fd_nonces), so that the daemon learns the caller's pid and uid (SO_PEERCRED) and
// receives the descriptors.
#ifndef CKPT_CLIENT_DESCRIPTOR_SOCKET_H_
#define CKPT_CLIENT_DESCRIPTOR_SOCKET_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/scoped_fd.h"

namespace ckpt::client {

struct Presentation {
  // Keep it open until the call that names `nonce` has ended (the daemon may answer on it).
  ScopedFd connection;
  std::string nonce;
};

// Connects to `<unix_socket_path>.fds` and sends a fresh nonce with `fds` attached (at most
// kMaxFdsPerMessage; they stay owned by the caller). UNAVAILABLE naming the socket when it cannot
// connect (daemon not running, backlog full); DEADLINE_EXCEEDED when the send does not fit in time.
absl::StatusOr<Presentation> PresentOnDescriptorSocket(const std::string& unix_socket_path,
                                                       const std::vector<int>& fds,
                                                       absl::Time deadline);

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_DESCRIPTOR_SOCKET_H_
