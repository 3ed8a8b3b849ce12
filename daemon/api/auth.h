// Who may call what: roles, and the credentials that grant them.
//
// Roles: read (Status, ListVersions, GetVersion), trainer (the Trainer API), operator (Update,
// Drop), worker (Consumer.Attach), peer (the cluster's Peer API). Every authenticated caller has
// read.
//
// Where roles come from:
// - the Unix socket: the caller's uid (SO_PEERCRED, from LocalListener). The daemon's own uid and
//   root have every role; uid_roles ("UID=role role;USER=role") grants roles to others, and every
//   uid in allowed_uids has the worker role. Any other uid has none (the socket is mode 0600 when
//   no other uid has a role, else 0666: every call is checked, so the mode is not the gate);
// - TCP: a bearer token ("authorization: Bearer TOKEN" metadata) listed in auth_tokens_file (one
//   "TOKEN ROLE..." per line, '#' comments; the file must not be readable or writable by group or
//   others), or a client certificate (mTLS, tls_client_ca set) whose subject alternative names map
//   to roles through san_roles ("SAN=role role;SAN=role"); both may be configured, and a call's
//   roles are the union of what its token and its certificate grant;
// - TCP with neither configured (insecure_tcp = true only): every role, as before authentication
//   existed; the daemon refuses such a listener unless insecure_tcp is set.
//
// Thread-safety: Check, Identify and the accessors may be called from any thread; Reload (SIGHUP)
// swaps the token table and the uid map atomically, so calls see either the old or the new ones.
#ifndef CKPT_DAEMON_API_AUTH_H_
#define CKPT_DAEMON_API_AUTH_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/fd_passing.h"
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
inline constexpr RoleSet kAllRoles =
    kRoleRead | kRoleTrainer | kRoleOperator | kRoleWorker | kRolePeer;

// True for a call that came over TCP (peer "ipv4:..." or "ipv6:..."), false for the Unix socket.
bool IsTcpCall(const grpc::ServerContext& context);

// "trainer operator" -> roles (separated by spaces, commas or '+'); INVALID_ARGUMENT naming an
// unknown role. "all" is every role. Read is always added.
absl::StatusOr<RoleSet> ParseRoles(const std::string& text);
// "read trainer", in a fixed order.
std::string RolesText(RoleSet roles);

// "SAN=role role;SAN=role" -> map. INVALID_ARGUMENT naming the bad entry.
absl::StatusOr<std::map<std::string, RoleSet>> ParseSanRoles(const std::string& text);

// "1000=trainer;vllm=worker read" -> map by uid (a user name is looked up in the user database).
// INVALID_ARGUMENT naming the bad entry or the unknown user.
absl::StatusOr<std::map<uid_t, RoleSet>> ParseUidRoles(const std::string& text);

// The credentials of a Unix-socket call's connection, by gRPC peer ("fd:N"); nullopt if unknown.
using LocalPeerLookup = std::function<std::optional<PeerCredentials>(const std::string& peer)>;

struct AuthOptions {
  std::string auth_tokens_file;
  // mTLS: set when client certificates are required and checked (tls_client_ca).
  bool client_certificates = false;
  std::map<std::string, RoleSet> san_roles;
  bool insecure_tcp = false;
  // Roles of local uids other than the daemon's own and root (uid_roles, plus the worker role of
  // allowed_uids). Replaced by Reload.
  std::map<uid_t, RoleSet> uid_roles;
};

// Who made a call, as far as the daemon could tell.
struct Principal {
  RoleSet roles = 0;
  // For logs and per-client limits: "uid 1000", "token of line 3 from ipv4:10.0.0.5",
  // "certificate 'x' from ...", "insecure TCP from ...".
  std::string name;
  // A Unix-socket caller: its uid and pid (as of connect).
  bool local = false;
  uid_t uid = 0;
  pid_t pid = 0;
};

class Authorizer {
 public:
  // Reads the tokens file (if set). Errors name the file and line: unreadable, readable by
  // others, a line without roles, an unknown role, a token shorter than 16 characters, the same
  // token twice.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(AuthOptions options);

  // Re-reads the tokens file and takes `uid_roles` as the new uid map. On error nothing changes.
  // Returns a one-line summary of what changed ("3 token(s) (1 added, 0 removed); 2 uid(s) with
  // roles (1 added, 0 removed, 1 changed)").
  absl::StatusOr<std::string> Reload(std::map<uid_t, RoleSet> uid_roles);

  // How Unix-socket calls are mapped to their connection's credentials; set before serving.
  // Without it no local call has any role.
  void SetLocalPeers(LocalPeerLookup lookup);

  // The caller of `context` and its roles.
  Principal Identify(const grpc::ServerContext& context) const;

  // Roles of a local uid: every role for the daemon's own uid and root, else uid_roles.
  RoleSet LocalRoles(uid_t uid) const;
  // True when a uid other than the daemon's own and root has a role (the socket must be 0666).
  bool OtherUidsHaveRoles() const;
  // "root and the daemon's uid 990: all roles; uid 1000: read worker" for ckptctl status.
  std::string LocalAuthText() const;

  // OK when the caller holds `role`; UNAUTHENTICATED when it presented nothing usable (TCP),
  // PERMISSION_DENIED (naming the caller, the method's role and the roles it has) otherwise.
  // `who` (if not null) receives the caller's name.
  grpc::Status Check(const grpc::ServerContext& context, Role role, const char* method,
                     std::string* who = nullptr) const;
  // Check that also returns the caller (`principal` set whatever the outcome).
  grpc::Status Check(const grpc::ServerContext& context, Role role, const char* method,
                     Principal* principal) const;

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
  LocalPeerLookup local_peers_;  // set once, before any call
  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<Token>> tokens_ ABSL_GUARDED_BY(mu_);
  std::map<uid_t, RoleSet> uid_roles_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_AUTH_H_
