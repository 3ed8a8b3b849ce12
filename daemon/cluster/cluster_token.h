// The cluster's shared secret (cluster_token_file): peers without TLS prove they belong to the
// cluster with it (docs/security.md, "The Peer API").
#ifndef CKPT_DAEMON_CLUSTER_CLUSTER_TOKEN_H_
#define CKPT_DAEMON_CLUSTER_CLUSTER_TOKEN_H_

#include <string>

#include "absl/status/statusor.h"

namespace ckpt::daemon {

// Secrets shorter than this are refused (a random 32-character token has ~190 bits).
inline constexpr size_t kMinClusterTokenBytes = 32;

// Reads the token: a regular file (not a link), mode 0600 or stricter, at most 4 KiB, holding one
// line of 32 to 1024 printable characters without spaces ('#' lines and blank lines ignored).
// FAILED_PRECONDITION (unreadable, not a regular file, group/other access) or INVALID_ARGUMENT
// (content), naming the file; the secret itself is never in a message.
absl::StatusOr<std::string> ReadClusterToken(const std::string& path);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CLUSTER_CLUSTER_TOKEN_H_
