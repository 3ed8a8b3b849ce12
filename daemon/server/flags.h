// Command line of ckpt-engined: every config key is also a flag (--listen-unix for listen_unix,
// ...);
// --config FILE reads a TOML file first, and flags given on the command line override it.
#ifndef CKPT_DAEMON_SERVER_FLAGS_H_
#define CKPT_DAEMON_SERVER_FLAGS_H_

#include <string>

#include "absl/status/statusor.h"
#include "daemon/server/config.h"

namespace ckpt::daemon {

struct CommandLine {
  Config config;
  // Set for --help and --version: print `output` to stdout and exit 0 without starting.
  bool exit_now = false;
  std::string output;
  // --check-config: check the configuration (Daemon::CheckConfig) instead of starting.
  bool check_config = false;
};

// Parses argv. Errors (unknown flag, bad value, unreadable or invalid config file) come back as
// one-line INVALID_ARGUMENT / FAILED_PRECONDITION statuses naming the flag, key or file.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_FLAGS_H_
