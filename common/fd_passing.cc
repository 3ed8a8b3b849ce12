#include "common/fd_passing.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ckpt {
namespace {

std::string Errno() { return std::strerror(errno); }

// Waits until `fd` is ready for `events` or the deadline passes. A deadline already passed still
// looks once without waiting, so a caller that knows the socket is ready can pass absl::Now().
absl::Status WaitFor(int fd, short events, absl::Time deadline, const char* what) {
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    pollfd p{fd, events, 0};
    const int ms =
        left <= absl::ZeroDuration()
            ? 0
            : static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
    int r = ::poll(&p, 1, ms);
    if (r > 0) return absl::OkStatus();
    if (r < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat(what, ": poll: ", Errno()));
    }
    if (r == 0 && left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
    }
  }
}

}  // namespace

absl::StatusOr<PeerCredentials> GetPeerCredentials(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::InternalError(absl::StrCat("SO_PEERCRED: ", Errno()));
  }
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

absl::Status SendWithFds(int socket, const std::string& payload, const std::vector<int>& fds,
                         absl::Time deadline) {
  if (payload.empty() || payload.size() > (64u << 10)) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload of ", payload.size(), " bytes (1 to 65536 allowed)"));
  }
  if (fds.size() > static_cast<size_t>(kMaxFdsPerMessage)) {
    return absl::InvalidArgumentError(
        absl::StrCat(fds.size(), " descriptors in one message (at most ", kMaxFdsPerMessage, ")"));
  }
  if (auto s = WaitFor(socket, POLLOUT, deadline, "sending descriptors"); !s.ok()) return s;
  iovec iov{const_cast<char*>(payload.data()), payload.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = ::sendmsg(socket, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::UnavailableError(absl::StrCat("sendmsg: ", Errno()));
  if (static_cast<size_t>(n) != payload.size()) {
    // Only possible on stream sockets with a full buffer; the message framing is then broken.
    return absl::DataLossError(absl::StrCat("sendmsg sent ", n, " of ", payload.size(), " bytes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ReceivedMessage> ReceiveWithFds(int socket, absl::Time deadline,
                                               size_t max_payload) {
  if (auto s = WaitFor(socket, POLLIN, deadline, "receiving descriptors"); !s.ok()) return s;
  ReceivedMessage out;
  out.payload.resize(max_payload);
  iovec iov{out.payload.data(), out.payload.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::UnavailableError(absl::StrCat("recvmsg: ", Errno()));
  // Take ownership of whatever arrived before judging the message, so nothing leaks.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      out.fds.emplace_back(fd);
    }
  }
  if (n == 0) return absl::UnavailableError("the peer closed the socket");
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    return absl::DataLossError("descriptors were truncated (too many in one message)");
  }
  if ((msg.msg_flags & MSG_TRUNC) != 0) {
    return absl::DataLossError(
        absl::StrCat("message longer than ", max_payload, " bytes was truncated"));
  }
  out.payload.resize(n);
  return out;
}

}  // namespace ckpt
