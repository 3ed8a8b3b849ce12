// Defaults shared by the daemon and its clients.
#ifndef CKPT_COMMON_DEFAULTS_H_
#define CKPT_COMMON_DEFAULTS_H_

namespace ckpt {

// The daemon's Unix socket unless configured otherwise (clients: --socket or CKPT_SOCKET).
inline constexpr char kDefaultSocketPath[] = "/run/ckpt-engine/ckpt-engined.sock";

// The environment variable that names the socket for clients.
inline constexpr char kSocketEnvVar[] = "CKPT_SOCKET";

}  // namespace ckpt

#endif  // CKPT_COMMON_DEFAULTS_H_
