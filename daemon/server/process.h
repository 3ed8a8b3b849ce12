// Process-wide settings of ckpt-engined: the open-files limit and the forced exit after a stuck
// shutdown.
#ifndef CKPT_DAEMON_SERVER_PROCESS_H_
#define CKPT_DAEMON_SERVER_PROCESS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace ckpt::daemon {

// Raises the soft RLIMIT_NOFILE to the hard limit (LoadFiles holds up to 4096 files' descriptors
// and the descriptor socket up to 8192 unclaimed ones, besides every connection). Returns the soft
// limit in force afterwards.
uint64_t RaiseOpenFileLimit();

// Ends the process if the graceful shutdown does not: gRPC's Server::Wait waits for every handler,
// and a handler stuck in a system call would otherwise keep the daemon (and its socket path) for
// ever. After `delay` a detached thread logs, removes `files` (while this process still holds the
// socket's lock, so no other daemon's files can be removed) and exits with code 1.
void ForceExitAfter(absl::Duration delay, std::vector<std::string> files);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_PROCESS_H_
