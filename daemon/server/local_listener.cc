#include "daemon/server/local_listener.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "daemon/server/socket_path.h"
#include "grpcpp/server_posix.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

absl::StatusOr<std::unique_ptr<LocalListener>> LocalListener::Listen(const std::string& path,
                                                                     mode_t mode) {
  std::unique_ptr<LocalListener> l(new LocalListener);
  l->path_ = path;
  l->wake_ = ScopedFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!l->wake_.valid()) {
    return absl::InternalError(absl::StrCat("socket ", path, ": eventfd: ", std::strerror(errno)));
  }
  ASSIGN_OR_RETURN(l->listener_, ListenUnix(path, SOCK_STREAM, mode, "socket"));
  return l;
}

LocalListener::~LocalListener() {
  Stop();
  if (listener_.valid()) ::unlink(path_.c_str());
}

void LocalListener::Serve(grpc::Server* server, std::function<bool(uid_t)> may_connect) {
  acceptor_ = std::thread(
      [this, server, may_connect = std::move(may_connect)] { AcceptLoop(server, may_connect); });
}

void LocalListener::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  if (wake_.valid()) (void)!::write(wake_.get(), &one, sizeof(one));
  if (acceptor_.joinable()) acceptor_.join();
}

absl::Status LocalListener::SetMode(mode_t mode) { return ChmodSocket(path_, mode, "socket"); }

std::optional<PeerCredentials> LocalListener::PeerOf(const std::string& grpc_peer) const {
  absl::string_view rest = grpc_peer;
  int fd = -1;
  if (!absl::ConsumePrefix(&rest, "fd:") || !absl::SimpleAtoi(rest, &fd) || fd < 0) {
    return std::nullopt;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return std::nullopt;
  absl::MutexLock lock(&mu_);
  auto it = connections_.find(fd);
  if (it == connections_.end() || it->second.inode != st.st_ino || it->second.device != st.st_dev) {
    return std::nullopt;
  }
  return it->second.peer;
}

void LocalListener::AcceptLoop(grpc::Server* server,
                               const std::function<bool(uid_t)>& may_connect) {
  absl::Time next_error_log = absl::InfinitePast();
  absl::Time next_refusal_log = absl::InfinitePast();
  uint64_t refused = 0;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    pollfd fds[2] = {{listener_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    if (::poll(fds, 2, 1000) <= 0 || (fds[0].revents & POLLIN) == 0) continue;
    for (;;) {
      ScopedFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!conn.valid()) {
        const int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED) break;
        // Out of descriptors (EMFILE, ENFILE) or memory: the connection stays in the backlog;
        // back off instead of spinning, and say so at most every 10 s.
        const absl::Time now = absl::Now();
        if (now >= next_error_log) {
          spdlog::error("socket {}: accept: {}; retrying", path_, std::strerror(err));
          next_error_log = now + absl::Seconds(10);
        }
        absl::SleepFor(absl::Milliseconds(100));
        break;
      }
      auto peer = GetPeerCredentials(conn.get());
      struct stat st;
      if (!peer.ok() || ::fstat(conn.get(), &st) != 0) continue;  // closes it
      if (!may_connect(peer->uid)) {
        // Logged at most every 10 s with a count: a flood must not flood the log.
        ++refused;
        const absl::Time now = absl::Now();
        if (now >= next_refusal_log) {
          spdlog::warn(
              "socket {}: closed {} connection(s) of uids without any role (last: uid {}, "
              "pid {}; config key uid_roles)",
              path_, refused, peer->uid, peer->pid);
          refused = 0;
          next_refusal_log = now + absl::Seconds(10);
        }
        continue;
      }
      {
        absl::MutexLock lock(&mu_);
        connections_[conn.get()] = Connection{st.st_ino, st.st_dev, *peer};
      }
      // gRPC owns the descriptor from here on (it needs it non-blocking, as accepted).
      grpc::AddInsecureChannelFromFd(server, conn.release());
    }
  }
}

}  // namespace ckpt::daemon
