#include "client/descriptor_socket.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/fd_passing.h"
#include "common/random_id.h"
#include "common/status_macros.h"

namespace ckpt::client {

absl::StatusOr<Presentation> PresentOnDescriptorSocket(const std::string& unix_socket_path,
                                                       const std::vector<int>& fds,
                                                       absl::Time deadline) {
  const std::string path = unix_socket_path + ".fds";
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path ", path, " is too long"));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  // Non-blocking: a full backlog is an error now, not a wait without a deadline.
  Presentation p;
  p.connection = ScopedFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!p.connection.valid()) {
    return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  if (::connect(p.connection.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    return absl::UnavailableError(absl::StrCat(
        "cannot connect to the daemon's descriptor socket ", path, ": ", std::strerror(err),
        err == ENOENT || err == ECONNREFUSED ? " (is ckpt-engined running on this socket?)"
        : err == EAGAIN                      ? " (the daemon is not accepting: overloaded?)"
                                             : ""));
  }
  p.nonce = RandomHex128();
  absl::Status sent = SendWithFds(p.connection.get(), p.nonce, fds, deadline);
  if (!sent.ok()) {
    return absl::Status(
        sent.code(),
        absl::StrCat("presenting on the daemon's descriptor socket ", path, ": ", sent.message(),
                     sent.code() == absl::StatusCode::kUnavailable
                         ? absl::StrCat(" (the daemon closes it for uids without a worker or "
                                        "trainer role: is uid ",
                                        ::getuid(), " in its uid_roles?)")
                         : ""));
  }
  return p;
}

}  // namespace ckpt::client
