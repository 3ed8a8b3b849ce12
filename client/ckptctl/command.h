// What every ckptctl command shares: the global options, connecting, and the one-line failure.
//
// Each command lives in its own <name>_command.{h,cc}: Add<Name>Command registers its CLI11
// subcommand and options; Run<Name>Command runs it and returns the exit code (0 ok, 1 failed with
// one line on stderr). Formatting functions are separate so that tests can call them.
#ifndef CKPT_CLIENT_CKPTCTL_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_COMMAND_H_

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/daemon_client.h"

namespace ckpt::ctl {

struct GlobalOptions {
  std::string socket_path;
  std::string address;
  // TCP credentials (--tls-ca, --tls-cert, --tls-key, --token-file; else CKPT_TLS_* and
  // CKPT_TOKEN_FILE).
  client::Credentials credentials;
  // Deadline of each request (--timeout), parsed.
  absl::Duration timeout = absl::Seconds(5);
};

// Prints "ckptctl: <message>" on stderr and returns 1.
int Fail(const absl::Status& status);

// Bad usage found after parsing (e.g. a malformed version number): prints
// "ckptctl: <message> (see ckptctl --help)" on stderr and returns 2.
int UsageError(const absl::Status& status);

// After a parse that failed before any subcommand was recognized (`ckptctl bogus`, `ckptctl`):
// "unknown command 'bogus'; commands: status, versions, ..." or "a command is needed; commands:
// ...", the commands being `app`'s registered subcommands in their order. nullopt when a subcommand
// was recognized (its own error applies).
std::optional<std::string> MissingCommandText(const CLI::App& app);

// The endpoint of the global options (--socket, --address, $CKPT_SOCKET, default).
absl::StatusOr<client::Endpoint> ResolveEndpoint(const GlobalOptions& options);

// An Admin client for the global options.
absl::StatusOr<std::unique_ptr<client::DaemonClient>> ConnectAdmin(const GlobalOptions& options);

// A version id as typed: a positive decimal number. INVALID_ARGUMENT otherwise.
absl::StatusOr<uint64_t> ParseVersionId(const std::string& text);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_COMMAND_H_
