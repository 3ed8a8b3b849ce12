#include "daemon/attach_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// A connection that does not send its nonce this fast is dropped.
constexpr absl::Duration kNonceTimeout = absl::Seconds(2);
// Presented connections not claimed by an Attach within this time are closed.
constexpr absl::Duration kPendingLifetime = absl::Seconds(30);

}  // namespace

bool AttachSocket::ValidNonce(const std::string& nonce) {
  if (nonce.size() < 16 || nonce.size() > 128) return false;
  for (char c : nonce) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<AttachSocket>> AttachSocket::Listen(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "descriptor socket path ", path, " is longer than ", sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::unique_ptr<AttachSocket> s(new AttachSocket);
  s->path_ = path;
  s->listener_ = ScopedFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s->listener_.valid()) {
    return absl::InternalError(absl::StrCat("descriptor socket: socket: ", std::strerror(errno)));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat("descriptor socket path ", path,
                       " exists and is not a socket; remove it or move listen_unix"));
    }
    ::unlink(path.c_str());  // a stale one of a previous daemon (we hold the socket claim)
  }
  if (::bind(s->listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot bind descriptor socket ", path, ": ", std::strerror(errno)));
  }
  if (::chmod(path.c_str(), 0600) != 0 || ::listen(s->listener_.get(), 64) != 0) {
    absl::Status error = absl::FailedPreconditionError(
        absl::StrCat("descriptor socket ", path, ": ", std::strerror(errno)));
    ::unlink(path.c_str());
    return error;
  }
  s->acceptor_ = std::thread([raw = s.get()] { raw->AcceptLoop(); });
  return s;
}

AttachSocket::~AttachSocket() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (acceptor_.joinable()) acceptor_.join();
  ::unlink(path_.c_str());
}

void AttachSocket::AcceptLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const absl::Time now = absl::Now();
      for (auto it = pending_.begin(); it != pending_.end();) {
        it = now - it->second.arrived > kPendingLifetime ? pending_.erase(it) : std::next(it);
      }
    }
    pollfd p{listener_.get(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ScopedFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) continue;
    auto peer = GetPeerCredentials(conn.get());
    auto message = ReceiveWithFds(conn.get(), absl::Now() + kNonceTimeout, 256);
    if (!peer.ok() || !message.ok() || !ValidNonce(message->payload)) {
      spdlog::warn("descriptor socket: dropped a connection{}: {}",
                   peer.ok() ? absl::StrCat(" from pid ", peer->pid) : "",
                   !peer.ok()      ? std::string(peer.status().message())
                   : !message.ok() ? std::string(message.status().message())
                                   : "no valid nonce");
      continue;
    }
    absl::MutexLock lock(&mu_);
    pending_[message->payload] = Entry{Presented{*peer, std::move(conn)}, absl::Now()};
  }
}

absl::StatusOr<AttachSocket::Presented> AttachSocket::Claim(const std::string& nonce,
                                                            absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || pending_.count(nonce) > 0;
  };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  auto it = pending_.find(nonce);
  if (it == pending_.end()) {
    return absl::DeadlineExceededError(
        absl::StrCat("no connection on ", path_, " presented this attach's nonce"));
  }
  Presented out = std::move(it->second.presented);
  pending_.erase(it);
  return out;
}

}  // namespace ckpt::daemon
