#include "daemon/api/auth.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/message_text.h"

namespace ckpt::daemon {
namespace {

constexpr struct {
  Role role;
  const char* name;
} kRoleNames[] = {{kRoleRead, "read"},
                  {kRoleTrainer, "trainer"},
                  {kRoleOperator, "operator"},
                  {kRoleWorker, "worker"},
                  {kRolePeer, "peer"}};

constexpr size_t kMinTokenBytes = 16;

// Equal strings, in time that depends on the lengths only (tokens are secrets).
bool SecretEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

bool IsTcpPeer(const std::string& peer) {
  return absl::StartsWith(peer, "ipv4:") || absl::StartsWith(peer, "ipv6:");
}

}  // namespace

bool IsTcpCall(const grpc::ServerContext& context) { return IsTcpPeer(context.peer()); }

absl::StatusOr<RoleSet> ParseRoles(const std::string& text) {
  RoleSet roles = 0;
  for (absl::string_view word : absl::StrSplit(text, absl::ByAnyChar(" ,+\t"), absl::SkipEmpty())) {
    if (word == "all") {
      roles |= kAllRoles;
      continue;
    }
    bool known = false;
    for (const auto& r : kRoleNames) {
      if (word == r.name) {
        roles |= r.role;
        known = true;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown role ", QuoteForMessage(word),
                       " (roles: read, trainer, operator, worker, peer, all)"));
    }
  }
  if (roles == 0) return absl::InvalidArgumentError("no role given");
  return roles | kRoleRead;
}

std::string RolesText(RoleSet roles) {
  std::vector<std::string> names;
  for (const auto& r : kRoleNames) {
    if (roles & r.role) names.push_back(r.name);
  }
  return names.empty() ? "none" : absl::StrJoin(names, " ");
}

namespace {

// "KEY=role role;KEY=role" -> map, each KEY turned into Key by `key_of` (an error names the entry).
template <typename Key, typename KeyOf>
absl::StatusOr<std::map<Key, RoleSet>> ParseRoleMap(const std::string& text, const char* example,
                                                    KeyOf key_of) {
  std::map<Key, RoleSet> out;
  for (absl::string_view entry : absl::StrSplit(text, ';', absl::SkipWhitespace())) {
    entry = absl::StripAsciiWhitespace(entry);
    const size_t eq = entry.rfind('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("entry ", QuoteForMessage(entry), " is not ", example));
    }
    absl::StatusOr<Key> key = key_of(absl::StripAsciiWhitespace(entry.substr(0, eq)));
    absl::StatusOr<RoleSet> roles =
        key.ok() ? ParseRoles(std::string(entry.substr(eq + 1))) : key.status();
    if (!roles.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("entry ", QuoteForMessage(entry), ": ", roles.status().message()));
    }
    out[*key] |= *roles;
  }
  return out;
}

}  // namespace

absl::StatusOr<std::map<std::string, RoleSet>> ParseSanRoles(const std::string& text) {
  return ParseRoleMap<std::string>(
      text, "SAN=ROLES (e.g. spiffe://c/trainer=trainer)",
      [](absl::string_view san) -> absl::StatusOr<std::string> { return std::string(san); });
}

absl::StatusOr<std::map<uid_t, RoleSet>> ParseUidRoles(const std::string& text) {
  return ParseRoleMap<uid_t>(
      text, "UID=ROLES or USER=ROLES (e.g. 1000=trainer)",
      [](absl::string_view who) -> absl::StatusOr<uid_t> {
        uint32_t uid = 0;
        if (absl::SimpleAtoi(who, &uid)) {
          if (uid == static_cast<uint32_t>(-1)) return absl::InvalidArgumentError("uid -1");
          return static_cast<uid_t>(uid);
        }
        std::string name(who);
        passwd pw;
        passwd* found = nullptr;
        std::vector<char> buffer(16384);
        const int error = ::getpwnam_r(name.c_str(), &pw, buffer.data(), buffer.size(), &found);
        if (error != 0 || found == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat("no user ", QuoteForMessage(name),
                                                         error != 0 ? ": " : "",
                                                         error != 0 ? std::strerror(error) : ""));
        }
        return found->pw_uid;
      });
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(AuthOptions options) {
  std::unique_ptr<Authorizer> a(new Authorizer(std::move(options)));
  auto tokens = a->ReadTokens();
  if (!tokens.ok()) return tokens.status();
  absl::MutexLock lock(&a->mu_);
  a->tokens_ = std::make_shared<const std::vector<Token>>(*std::move(tokens));
  a->uid_roles_ = a->options_.uid_roles;
  return a;
}

absl::StatusOr<std::vector<Authorizer::Token>> Authorizer::ReadTokens() const {
  std::vector<Token> tokens;
  const std::string& path = options_.auth_tokens_file;
  if (path.empty()) return tokens;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("auth_tokens_file ", path, ": ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("auth_tokens_file ", path, ": not a regular file"));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "auth_tokens_file ", path, " is accessible by group or others (mode ",
        absl::StrFormat("%04o", st.st_mode & 07777), "); it holds secrets: chmod 600 it"));
  }
  std::ifstream in(path);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("auth_tokens_file ", path, ": ", std::strerror(errno)));
  }
  std::string line;
  std::set<std::string> seen;
  for (int n = 1; std::getline(in, line); ++n) {
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    const size_t space = text.find_first_of(" \t");
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("auth_tokens_file ", path, " line ", n, ": ", why));
    };
    if (space == absl::string_view::npos) return bad("expected TOKEN ROLE... (no role given)");
    std::string secret(text.substr(0, space));
    if (secret.size() < kMinTokenBytes) {
      return bad(absl::StrCat("token of ", secret.size(), " characters; at least ", kMinTokenBytes,
                              " are required"));
    }
    auto roles = ParseRoles(std::string(text.substr(space + 1)));
    if (!roles.ok()) return bad(roles.status().message());
    if (!seen.insert(secret).second) return bad("the same token is listed twice");
    tokens.push_back(Token{std::move(secret), *roles, n});
  }
  return tokens;
}

absl::StatusOr<std::string> Authorizer::Reload(std::map<uid_t, RoleSet> uid_roles) {
  auto fresh = ReadTokens();
  if (!fresh.ok()) return fresh.status();
  absl::MutexLock lock(&mu_);
  std::set<std::string> before, after;
  for (const Token& t : *tokens_) before.insert(t.secret);
  for (const Token& t : *fresh) after.insert(t.secret);
  int added = 0, removed = 0;
  for (const std::string& t : after) added += before.count(t) == 0;
  for (const std::string& t : before) removed += after.count(t) == 0;
  int uids_added = 0, uids_removed = 0, uids_changed = 0;
  for (const auto& [uid, roles] : uid_roles) {
    auto old = uid_roles_.find(uid);
    if (old == uid_roles_.end()) {
      ++uids_added;
    } else if (old->second != roles) {
      ++uids_changed;
    }
  }
  for (const auto& [uid, roles] : uid_roles_) uids_removed += uid_roles.count(uid) == 0;
  tokens_ = std::make_shared<const std::vector<Token>>(*std::move(fresh));
  uid_roles_ = std::move(uid_roles);
  std::string summary =
      absl::StrCat(uid_roles_.size(), " uid(s) with roles (", uids_added, " added, ", uids_removed,
                   " removed, ", uids_changed, " changed)");
  if (!options_.auth_tokens_file.empty()) {
    summary = absl::StrCat(tokens_->size(), " token(s) (", added, " added, ", removed,
                           " removed); ", summary);
  }
  return summary;
}

void Authorizer::SetLocalPeers(LocalPeerLookup lookup) { local_peers_ = std::move(lookup); }

RoleSet Authorizer::LocalRoles(uid_t uid) const {
  if (uid == 0 || uid == ::getuid()) return kAllRoles;
  absl::MutexLock lock(&mu_);
  auto it = uid_roles_.find(uid);
  return it == uid_roles_.end() ? 0 : it->second;
}

bool Authorizer::OtherUidsHaveRoles() const {
  absl::MutexLock lock(&mu_);
  for (const auto& [uid, roles] : uid_roles_) {
    if (uid != 0 && uid != ::getuid() && roles != 0) return true;
  }
  return false;
}

std::string Authorizer::LocalAuthText() const {
  std::string text = ::getuid() == 0
                         ? std::string("root (the daemon's uid): all roles")
                         : absl::StrCat("root and the daemon's uid ", ::getuid(), ": all roles");
  absl::MutexLock lock(&mu_);
  for (const auto& [uid, roles] : uid_roles_) {
    if (uid == 0 || uid == ::getuid()) continue;
    absl::StrAppend(&text, "; uid ", uid, ": ", RolesText(roles));
  }
  return text;
}

Principal Authorizer::Identify(const grpc::ServerContext& context) const {
  Principal p;
  const std::string peer = context.peer();
  if (!IsTcpPeer(peer)) {
    // The Unix socket: the connection's uid, as LocalListener recorded it.
    std::optional<PeerCredentials> cred;
    if (local_peers_) cred = local_peers_(peer);
    if (!cred.has_value()) {
      p.name = absl::StrCat("unidentified local connection ", EscapeForMessage(peer, 64));
      return p;
    }
    p.roles = LocalRoles(cred->uid);
    p.name = absl::StrCat("uid ", cred->uid);
    p.local = true;
    p.uid = cred->uid;
    p.pid = cred->pid;
    return p;
  }
  std::vector<std::string> names;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end()) {
    absl::string_view value(it->second.data(), it->second.size());
    if (absl::ConsumePrefix(&value, "Bearer ")) {
      std::shared_ptr<const std::vector<Token>> tokens;
      {
        absl::MutexLock lock(&mu_);
        tokens = tokens_;
      }
      for (const Token& t : *tokens) {
        if (SecretEquals(value, t.secret)) {
          p.roles |= t.roles;
          names.push_back(absl::StrCat("token of line ", t.line));
        }
      }
    }
  }
  if (options_.client_certificates) {
    std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
    if (auth != nullptr && auth->IsPeerAuthenticated()) {
      for (const grpc::string_ref& san :
           auth->FindPropertyValues("x509_subject_alternative_name")) {
        std::string name(san.data(), san.size());
        auto found = options_.san_roles.find(name);
        if (found == options_.san_roles.end()) continue;
        p.roles |= found->second;
        names.push_back(absl::StrCat("certificate ", QuoteForMessage(name, 64)));
      }
    }
  }
  if (options_.insecure_tcp && options_.auth_tokens_file.empty() && !options_.client_certificates) {
    p.roles = kAllRoles;
    names.push_back("insecure TCP");
  }
  p.name = names.empty() ? absl::StrCat("anonymous ", EscapeForMessage(peer, 64))
                         : absl::StrCat(absl::StrJoin(names, " + "), " from ",
                                        EscapeForMessage(peer.substr(0, peer.rfind(':')), 64));
  return p;
}

grpc::Status Authorizer::Check(const grpc::ServerContext& context, Role role, const char* method,
                               std::string* who) const {
  Principal p;
  grpc::Status status = Check(context, role, method, &p);
  if (who != nullptr) *who = p.name;
  return status;
}

grpc::Status Authorizer::Check(const grpc::ServerContext& context, Role role, const char* method,
                               Principal* principal) const {
  Principal& p = *principal;
  p = Identify(context);
  if (p.roles & role) return grpc::Status::OK;
  if (p.roles == 0 && !IsTcpPeer(context.peer())) {
    return grpc::Status(
        grpc::StatusCode::PERMISSION_DENIED,
        absl::StrCat(
            method, " needs the ", RolesText(role), " role; ", p.name,
            " has no role on the Unix socket (config key uid_roles grants roles to uids)"));
  }
  if (p.roles == 0) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        absl::StrCat(method,
                                     " needs credentials on TCP: a bearer token from "
                                     "auth_tokens_file or a client certificate"));
  }
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat(method, " needs the ", RolesText(role), " role; ", p.name,
                                   " has ", RolesText(p.roles)));
}

std::string Authorizer::TcpAuthText(bool tls) const {
  std::vector<std::string> parts;
  if (options_.client_certificates) parts.push_back("mTLS");
  if (!options_.auth_tokens_file.empty()) parts.push_back(tls ? "TLS + token" : "token");
  if (parts.empty())
    return tls ? "TLS, no client authentication (insecure_tcp)" : "none (insecure_tcp)";
  return absl::StrJoin(parts, " or ");
}

}  // namespace ckpt::daemon
