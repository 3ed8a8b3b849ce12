#include "daemon/cluster/cluster_token.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/scoped_fd.h"

namespace ckpt::daemon {

absl::StatusOr<std::string> ReadClusterToken(const std::string& path) {
  auto unreadable = [&](const char* why) {
    return absl::FailedPreconditionError(absl::StrCat("cluster_token_file ", path, ": ", why));
  };
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid() && errno == ELOOP) {
    // O_NOFOLLOW: the last component is a link. Kubernetes Secret volumes are made of them.
    return unreadable(
        "a symbolic link, which is not followed (the keys of a Kubernetes Secret volume are "
        "links: mount the key itself with subPath; docs/operations.md, Running on Kubernetes)");
  }
  if (!fd.valid()) return unreadable(std::strerror(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return unreadable(std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return unreadable("not a regular file");
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cluster_token_file ", path, " is accessible by group or others (mode ",
                     absl::StrFormat("%04o", st.st_mode & 07777),
                     "); it holds the cluster's secret: chmod 600 it"));
  }
  constexpr size_t kMaxBytes = 4096;
  if (st.st_size > static_cast<off_t>(kMaxBytes)) {
    return absl::InvalidArgumentError(absl::StrCat("cluster_token_file ", path, " has ", st.st_size,
                                                   " bytes; at most ", kMaxBytes));
  }
  std::string text(kMaxBytes + 1, '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return unreadable(std::strerror(errno));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > kMaxBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster_token_file ", path, " grew past ", kMaxBytes, " bytes"));
  }
  text.resize(got);
  std::string token;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster_token_file ", path, " line ", line_number, ": ", why));
    };
    if (!token.empty()) return bad("a second token; the file holds one line with the secret");
    for (char c : line) {
      if (!absl::ascii_isgraph(static_cast<unsigned char>(c))) {
        return bad("the secret may only have printable characters without spaces");
      }
    }
    if (line.size() < kMinClusterTokenBytes || line.size() > 1024) {
      return bad(absl::StrCat("a secret of ", line.size(), " characters; ", kMinClusterTokenBytes,
                              " to 1024 are required (e.g. openssl rand -hex 32)"));
    }
    token = std::string(line);
  }
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster_token_file ", path, " holds no secret (only blank or '#' lines)"));
  }
  return token;
}

}  // namespace ckpt::daemon
