#include "daemon/api/attach_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "daemon/server/socket_path.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// A connection that does not send its nonce this fast is dropped. Connections are served
// concurrently, so a silent one costs a slot of kMaxAwaiting for this long, never another's time.
constexpr absl::Duration kNonceTimeout = absl::Seconds(2);
// Presented connections not claimed by an Attach within this time are closed (an Attach claims
// its nonce within its identity timeout, 5 s).
constexpr absl::Duration kPendingLifetime = absl::Seconds(10);
// Connections waiting for their nonce, and presented ones waiting for their Attach, at most: past
// these a new connection is closed at once (awaiting) or the oldest presented one is (pending).
constexpr size_t kMaxAwaiting = 128;
constexpr size_t kMaxPending = 256;
// The same per uid, for uids other than root and the daemon's own.
constexpr size_t kMaxAwaitingPerUid = 64;
constexpr size_t kMaxPendingPerUid = 128;

}  // namespace

bool AttachSocket::ValidNonce(const std::string& nonce) {
  if (nonce.size() < 16 || nonce.size() > 128) return false;
  for (char c : nonce) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<AttachSocket>> AttachSocket::Listen(const std::string& path,
                                                                   mode_t mode, Policy policy) {
  std::unique_ptr<AttachSocket> s(new AttachSocket);
  s->path_ = path;
  s->policy_ = std::move(policy);
  ASSIGN_OR_RETURN(s->listener_, ListenUnix(path, SOCK_SEQPACKET, mode, "descriptor socket"));
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

absl::Status AttachSocket::SetMode(mode_t mode) {
  return ChmodSocket(path_, mode, "descriptor socket");
}

void AttachSocket::AcceptLoop() {
  struct Awaiting {
    ScopedFd fd;
    PeerCredentials peer;
    absl::Time deadline;
  };
  std::vector<Awaiting> awaiting;  // accepted, nonce not read yet; owned by this thread
  // Drops are logged at most once per 10 s with a count, so a flood cannot flood the log.
  uint64_t dropped = 0;
  std::string last_drop;
  absl::Time next_drop_log = absl::InfinitePast();
  auto drop = [&](const PeerCredentials* peer, absl::string_view why) {
    ++dropped;
    last_drop = absl::StrCat(peer != nullptr ? absl::StrCat("pid ", peer->pid, ": ") : "", why);
    const absl::Time now = absl::Now();
    if (now >= next_drop_log) {
      spdlog::warn("descriptor socket: dropped {} connection(s) (last: {})", dropped, last_drop);
      dropped = 0;
      next_drop_log = now + absl::Seconds(10);
    }
  };
  for (;;) {
    const absl::Time now = absl::Now();
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (now - it->second.arrived > kPendingLifetime) {
          pending_fds_ -= it->second.presented.fds.size();
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto it = awaiting.begin(); it != awaiting.end();) {
      if (now < it->deadline) {
        ++it;
        continue;
      }
      drop(&it->peer, absl::StrCat("no nonce within ", absl::FormatDuration(kNonceTimeout)));
      it = awaiting.erase(it);
    }

    std::vector<pollfd> fds;
    fds.push_back({listener_.get(), POLLIN, 0});
    for (const Awaiting& a : awaiting) fds.push_back({a.fd.get(), POLLIN, 0});
    if (::poll(fds.data(), fds.size(), 100) <= 0) continue;

    // Nonces first (the connections polled above), then new connections.
    std::vector<Awaiting> still;
    for (size_t i = 0; i < awaiting.size(); ++i) {
      Awaiting& a = awaiting[i];
      if ((fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
        still.push_back(std::move(a));
        continue;
      }
      // Readable: the message is there (or the peer left); this does not wait.
      auto message = ReceiveWithFds(a.fd.get(), absl::Now(), 256);
      if (!message.ok() || !ValidNonce(message->payload)) {
        drop(&a.peer, message.ok() ? "no valid nonce" : message.status().message());
        continue;
      }
      if (!message->fds.empty() && !policy_.may_pass_files(a.peer.uid)) {
        drop(&a.peer,
             absl::StrCat("uid ", a.peer.uid, " sent descriptors but has no trainer role"));
        continue;
      }
      absl::MutexLock lock(&mu_);
      if (auto why = AddPending(message->payload,
                                Presented{a.peer, std::move(a.fd), std::move(message->fds)});
          !why.empty()) {
        drop(&a.peer, why);
      }
    }
    awaiting = std::move(still);
    if ((fds[0].revents & POLLIN) == 0) continue;
    for (;;) {
      ScopedFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!conn.valid()) break;  // EAGAIN: no more for now (or an error: try again next round)
      auto peer = GetPeerCredentials(conn.get());
      if (!peer.ok()) {
        drop(nullptr, peer.status().message());
        continue;
      }
      // A uid that may neither attach nor pass files has nothing to do here: closed at once, so
      // it cannot take the room of those who do.
      if (!policy_.may_present(peer->uid)) {
        drop(&*peer, absl::StrCat("uid ", peer->uid, " has no worker or trainer role"));
        continue;
      }
      if (awaiting.size() >= kMaxAwaiting) {
        drop(&*peer, absl::StrCat(kMaxAwaiting, " connections are waiting for their nonce"));
        continue;
      }
      if (!policy_.trusted(peer->uid)) {
        size_t mine = 0;
        for (const Awaiting& w : awaiting) mine += w.peer.uid == peer->uid;
        if (mine >= kMaxAwaitingPerUid) {
          drop(&*peer, absl::StrCat("uid ", peer->uid, " has ", mine,
                                    " connections waiting for their nonce"));
          continue;
        }
      }
      awaiting.push_back(Awaiting{std::move(conn), *peer, absl::Now() + kNonceTimeout});
    }
  }
}

std::string AttachSocket::AddPending(const std::string& nonce, Presented presented) {
  const uid_t uid = presented.peer.uid;
  const size_t fds = presented.fds.size();
  auto erase = [&](std::map<std::string, Entry>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    pending_fds_ -= it->second.presented.fds.size();
    return pending_.erase(it);
  };
  if (auto same = pending_.find(nonce); same != pending_.end()) {
    // The same nonce again: only its own uid may replace it (nonces are random; another uid that
    // learned one must not substitute its own descriptors or identity).
    if (same->second.presented.peer.uid != uid)
      return "its nonce is already presented by another uid";
    erase(same);
  }
  // Room: a uid other than root and the daemon's own holds at most kMaxPendingPerUid nonces and
  // kMaxPendingFdsPerUid descriptors; the totals are bounded too. Only the presenter's own oldest
  // entries make room: one uid never evicts another's.
  const bool trusted = policy_.trusted(uid);
  for (;;) {
    size_t my_entries = 0, my_fds = 0;
    auto my_oldest = pending_.end();
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->second.presented.peer.uid != uid) continue;
      ++my_entries;
      my_fds += it->second.presented.fds.size();
      if (my_oldest == pending_.end() || it->second.arrived < my_oldest->second.arrived) {
        my_oldest = it;
      }
    }
    const bool full =
        pending_.size() >= kMaxPending || pending_fds_ + fds > kMaxPendingFds ||
        (!trusted && (my_entries >= kMaxPendingPerUid || my_fds + fds > kMaxPendingFdsPerUid));
    if (!full) break;
    if (my_oldest == pending_.end()) {
      return absl::StrCat("no room: ", pending_.size(), " nonces with ", pending_fds_,
                          " descriptors are waiting for their calls");
    }
    erase(my_oldest);
  }
  pending_fds_ += fds;
  pending_[nonce] = Entry{std::move(presented), absl::Now()};
  return "";
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
        absl::StrCat("no connection on ", path_, " presented this nonce"));
  }
  Presented out = std::move(it->second.presented);
  pending_fds_ -= out.fds.size();
  pending_.erase(it);
  return out;
}

}  // namespace ckpt::daemon
