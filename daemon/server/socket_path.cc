#include "daemon/server/socket_path.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

std::string Errno() { return std::strerror(errno); }

// mkdir -p with mode 0755 for the directories it creates.
absl::Status MakeDirs(const std::string& dir) {
  if (dir.empty() || dir == "/") return absl::OkStatus();
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat("socket directory ", dir, " exists and is not a directory"));
    }
    return absl::OkStatus();
  }
  size_t slash = dir.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    if (auto s = MakeDirs(dir.substr(0, slash)); !s.ok()) return s;
  }
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create socket directory ", dir, ": ", Errno()));
  }
  return absl::OkStatus();
}

std::string ReadPid(int fd) {
  char buf[32] = {};
  ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  if (n <= 0) return "unknown";
  int pid;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buf, n)), &pid)) {
    return "unknown";
  }
  return absl::StrCat(pid);
}

}  // namespace

std::string DescriptorSocketPath(const std::string& socket_path) { return socket_path + ".fds"; }
std::string LockFilePath(const std::string& socket_path) { return socket_path + ".lock"; }
std::vector<std::string> SocketFiles(const std::string& socket_path) {
  return {socket_path, DescriptorSocketPath(socket_path), LockFilePath(socket_path)};
}

absl::StatusOr<SocketPathClaim> SocketPathClaim::Claim(const std::string& socket_path) {
  size_t slash = socket_path.rfind('/');
  if (socket_path.empty() || socket_path[0] != '/' || slash == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", socket_path, "' is not an absolute path"));
  }
  std::string dir = slash == 0 ? "/" : socket_path.substr(0, slash);
  if (auto s = MakeDirs(dir); !s.ok()) return s;
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", dir, " is not writable: ", Errno()));
  }

  std::string lock_path = LockFilePath(socket_path);
  ScopedFd fd;
  // The lock file of a daemon that is exiting may be unlinked between our open() and flock(); then
  // we hold a lock on a dead inode, so check that the path still names the file we locked, and
  // retry.
  for (int attempt = 0;; ++attempt) {
    fd.reset(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd.valid()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open lock file ", lock_path, ": ", Errno()));
    }
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        return absl::AlreadyExistsError(absl::StrCat("socket path ", socket_path,
                                                     " is in use by a running ckpt-engined (pid ",
                                                     ReadPid(fd.get()), ")"));
      }
      return absl::FailedPreconditionError(absl::StrCat("cannot lock ", lock_path, ": ", Errno()));
    }
    struct stat held, named;
    if (::fstat(fd.get(), &held) == 0 && ::stat(lock_path.c_str(), &named) == 0 &&
        held.st_ino == named.st_ino && held.st_dev == named.st_dev) {
      break;
    }
    if (attempt >= 10) {
      return absl::FailedPreconditionError(
          absl::StrCat("lock file ", lock_path, " keeps being replaced by another process"));
    }
  }

  struct stat st;
  if (::lstat(socket_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "socket path ", socket_path, " exists and is not a socket; refusing to replace it"));
    }
    // We hold the lock, so no live daemon serves on it: the socket is stale.
    if (::unlink(socket_path.c_str()) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot remove stale socket ", socket_path, ": ", Errno()));
    }
    spdlog::warn("replaced stale socket {} left by a daemon that is no longer running",
                 socket_path);
  } else if (errno != ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot inspect socket path ", socket_path, ": ", Errno()));
  }

  std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd.get(), 0) != 0 ||
      ::pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write lock file ", lock_path, ": ", Errno()));
  }
  SocketPathClaim claim;
  claim.path_ = socket_path;
  claim.lock_fd_ = std::move(fd);
  return claim;
}

SocketPathClaim& SocketPathClaim::operator=(SocketPathClaim&& other) {
  if (this != &other) {
    Release();
    path_ = std::move(other.path_);
    lock_fd_ = std::move(other.lock_fd_);
    other.path_.clear();
  }
  return *this;
}

SocketPathClaim::~SocketPathClaim() { Release(); }

void SocketPathClaim::Release() {
  if (!lock_fd_.valid()) return;
  ::unlink(path_.c_str());
  ::unlink(LockFilePath(path_).c_str());
  lock_fd_.reset();
  path_.clear();
}

absl::Status ChmodSocket(const std::string& path, mode_t mode, const char* what) {
  if (::chmod(path.c_str(), mode) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot chmod ", what, " ", path, ": ", Errno()));
  }
  return absl::OkStatus();
}

absl::StatusOr<ScopedFd> ListenUnix(const std::string& path, int type, mode_t mode,
                                    const char* what) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " path ", path, " is longer than ",
                                                   sizeof(addr.sun_path) - 1, " bytes"));
  }
  ScopedFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat(what, ": socket: ", Errno()));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, " path ", path, " exists and is not a socket; remove it or move listen_unix"));
    }
    ::unlink(path.c_str());  // a stale one of a previous daemon (the caller holds the claim)
  }
  // umask is process-wide; this runs during start-up, before any thread creates files.
  const mode_t old_umask = ::umask(0177);
  const int bound = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  const int bind_errno = errno;
  ::umask(old_umask);
  if (bound != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot bind ", what, " ", path, ": ", std::strerror(bind_errno)));
  }
  if (::chmod(path.c_str(), mode) != 0 || ::listen(fd.get(), 128) != 0) {
    absl::Status error =
        absl::FailedPreconditionError(absl::StrCat(what, " ", path, ": ", Errno()));
    ::unlink(path.c_str());
    return error;
  }
  return fd;
}

}  // namespace ckpt::daemon
