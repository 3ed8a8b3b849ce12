// Who may call what: roles, and the credentials that grant them.
//
// Roles: read (Status, ListVersions, GetVersion), trainer (the Trainer API), operator (Update,
// Drop), worker (Consumer.Attach), peer (the cluster's Peer API). Every authenticated caller has
// read.
//
// Where roles come from:
// - the Unix socket: it is mode 0600, so only the daemon's own uid and root can connect; such a
//   caller has every role;
// - TCP: a bearer token ("authorization: Bearer TOKEN" metadata) listed in auth_tokens_file (one
//   "TOKEN ROLE..." per line, '#' comments; the file must not be readable or writable by group or
//   others), or a client certificate (mTLS, tls_client_ca set) whose subject alternative names map
//   to roles through san_roles ("SAN=role role;SAN=role"); both may be configured, and a call's
//   roles are the union of what its token and its certificate grant;
// - TCP with neither configured (insecure_tcp = true only): every role, as before authentication
//   existed; the daemon refuses such a listener unless insecure_tcp is set.
//
// Thread-safety: Check and Describe may be called from any thread; Reload (SIGHUP) swaps the token
// table atomically, so calls see either the old or the new one.
#ifndef CKPT_DAEMON_AUTH_H_
#define CKPT_DAEMON_AUTH_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace ckpt::daemon {

enum Role : uint32_t {
  kRoleRead = 1,
  kRoleTrainer = 2,
  kRoleOperator = 4,
  kRoleWorker = 8,
  kRolePeer = 16,
};
using RoleSet = uint32_t;
inline constexpr RoleSet kAllRoles = kRoleRead | kRoleTrainer | kRoleOperator | kRoleWorker |
                                     kRolePeer;

// True for a call that came over TCP (peer "ipv4:..." or "ipv6:..."), false for the Unix socket.
bool IsTcpCall(const grpc::ServerContext& context);

// "trainer operator" -> roles (separated by spaces, commas or '+'); INVALID_ARGUMENT naming an
// unknown role. "all" is every role. Read is always added.
absl::StatusOr<RoleSet> ParseRoles(const std::string& text);
// "read trainer", in a fixed order.
std::string RolesText(RoleSet roles);

// "SAN=role role;SAN=role" -> map. INVALID_ARGUMENT naming the bad entry.
absl::StatusOr<std::map<std::string, RoleSet>> ParseSanRoles(const std::string& text);

struct AuthOptions {
  std::string auth_tokens_file;
  // mTLS: set when client certificates are required and checked (tls_client_ca).
  bool client_certificates = false;
  std::map<std::string, RoleSet> san_roles;
  bool insecure_tcp = false;
};

// Who made a call, as far as the daemon could tell.
struct Principal {
  RoleSet roles = 0;
  // For logs and per-client limits: "local", "token 'ops' (line 3)", "certificate SAN 'x'",
  // "insecure TCP ipv4:10.0.0.5".
  std::string name;
};

class Authorizer {
 public:
  // Reads the tokens file (if set). Errors name the file and line: unreadable, readable by
  // others, a line without roles, an unknown role, a token shorter than 16 characters, the same
  // token twice.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(AuthOptions options);

  // Re-reads the tokens file. On error the old tokens stay in force. Returns a one-line summary of
  // what changed ("3 tokens (1 added, 0 removed)").
  absl::StatusOr<std::string> Reload();

  // The caller of `context` and its roles. Unix socket: "local", every role.
  Principal Identify(const grpc::ServerContext& context) const;

  // OK when the caller holds `role`; UNAUTHENTICATED when it presented nothing usable (TCP),
  // PERMISSION_DENIED (naming the caller, the method's role and the roles it has) otherwise.
  // `who` (if not null) receives the caller's name.
  grpc::Status Check(const grpc::ServerContext& context, Role role, const char* method,
                     std::string* who = nullptr) const;

  const AuthOptions& options() const { return options_; }
  // How TCP callers authenticate: "mTLS + token", "token", "mTLS", or "none (insecure_tcp)".
  std::string TcpAuthText(bool tls) const;

 private:
  explicit Authorizer(AuthOptions options) : options_(std::move(options)) {}

  struct Token {
    std::string secret;
    RoleSet roles;
    int line;
  };
  absl::StatusOr<std::vector<Token>> ReadTokens() const;

  const AuthOptions options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<Token>> tokens_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_AUTH_H_
