#include "client/daemon_client.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/defaults.h"
#include "common/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"

namespace ckpt::client {

namespace {

std::string FromEnv(const std::string& given, const char* var) {
  if (!given.empty()) return given;
  const char* v = std::getenv(var);
  return v != nullptr ? v : "";
}

absl::StatusOr<std::string> ReadFileText(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read ", what, " ", path, ": ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Adds "authorization: Bearer TOKEN" to every call of a channel.
class TokenInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const std::string& value) : value_(value) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", value_});
    }
    methods->Proceed();
  }

 private:
  const std::string& value_;
};

class TokenInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(const std::string& token) : value_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    return new TokenInterceptor(value_);
  }

 private:
  const std::string value_;
};

}  // namespace

absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& socket_path, const std::string& address,
                                         const Credentials& credentials) {
  if (!socket_path.empty() && !address.empty()) {
    return absl::InvalidArgumentError("give either --socket or --address, not both");
  }
  Endpoint e;
  if (!address.empty()) {
    e.target = address;
    Credentials& c = e.credentials;
    c.tls_ca = FromEnv(credentials.tls_ca, "CKPT_TLS_CA");
    c.tls_cert = FromEnv(credentials.tls_cert, "CKPT_TLS_CERT");
    c.tls_key = FromEnv(credentials.tls_key, "CKPT_TLS_KEY");
    c.token_file = FromEnv(credentials.token_file, "CKPT_TOKEN_FILE");
    if (c.tls_cert.empty() != c.tls_key.empty()) {
      return absl::InvalidArgumentError(
          "a TLS client certificate and its key go together: give "
          "both --tls-cert and --tls-key (or CKPT_TLS_CERT and "
          "CKPT_TLS_KEY)");
    }
    if (!c.token_file.empty()) {
      auto text = ReadFileText(c.token_file, "token file");
      if (!text.ok()) return text.status();
      std::string first = text->substr(0, text->find('\n'));
      e.token = std::string(absl::StripAsciiWhitespace(first));
      if (e.token.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("token file ", c.token_file, " is empty"));
      }
    }
    return e;
  }
  std::string path = socket_path;
  if (path.empty()) {
    const char* env = std::getenv(kSocketEnvVar);
    path = env != nullptr && *env != '\0' ? env : kDefaultSocketPath;
  }
  e.unix_path = path;
  e.target = "unix:" + path;
  return e;
}

namespace {

// The daemon's message with "<rpc> failed: " in front, unless it names the call already: it begins
// with the call's name in any case, not followed by a lower-case letter ("Status needs the read
// role ...", "LoadFilesWithProgress needs ...", "update to version 7: 1 of 2 workers failed ..."),
// so that the context is said once.
std::string WithCall(const std::string& rpc, const std::string& message) {
  const bool named = absl::StartsWithIgnoreCase(message, rpc) &&
                     (message.size() == rpc.size() || !absl::ascii_islower(message[rpc.size()]));
  return named ? message : absl::StrCat(rpc, " failed: ", message);
}

}  // namespace

absl::Status FromGrpc(const grpc::Status& status, const std::string& rpc,
                      const Endpoint& endpoint) {
  auto code = static_cast<absl::StatusCode>(status.error_code());
  std::string where = endpoint.unix_path.empty() ? endpoint.target : endpoint.unix_path;
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      // The daemon's own UNAVAILABLE: it serves, but its store is still warming up after start-up
      // (VersionStore::Begin: "the store is still getting memory ready: ...; retry").
      if (absl::StrContains(status.error_message(), "the store is still getting memory ready")) {
        return absl::UnavailableError(WithCall(rpc, status.error_message()));
      }
      if (!endpoint.unix_path.empty() && absl::StrContains(status.error_message(), "refused")) {
        return absl::UnavailableError(absl::StrCat("ckpt-engined is not running at ", where,
                                                   " (connection refused: the socket is stale)"));
      }
      return absl::UnavailableError(absl::StrCat(
          "cannot reach ckpt-engined at ", where, ": ", status.error_message(),
          endpoint.unix_path.empty()
              ? ""
              : absl::StrCat(
                    " (the daemon closes the connections of uids without any role: is uid ",
                    ::getuid(), " in its uid_roles?)")));
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      // gRPC's own words when this call's deadline passed; any other message is the daemon's
      // (e.g. a worker that did not ack in time during an Update).
      if (status.error_message() == "Deadline Exceeded") {
        return absl::DeadlineExceededError(
            absl::StrCat("ckpt-engined at ", where, " did not answer ", rpc, " in time"));
      }
      return absl::DeadlineExceededError(WithCall(rpc, status.error_message()));
    case grpc::StatusCode::UNIMPLEMENTED:
      return absl::UnimplementedError(absl::StrCat("ckpt-engined at ", where, " does not support ",
                                                   rpc, " (is it an older release?)"));
    default:
      return absl::Status(code, WithCall(rpc, status.error_message()));
  }
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const Endpoint& endpoint,
                                                           bool private_connection) {
  if (!endpoint.unix_path.empty()) {
    const std::string& path = endpoint.unix_path;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) {
        return absl::UnavailableError(absl::StrCat(
            "no ckpt-engined socket at ", path,
            " (is the daemon running? choose the socket with --socket or CKPT_SOCKET)"));
      }
      return absl::Status(
          errno == EACCES ? absl::StatusCode::kPermissionDenied : absl::StatusCode::kUnavailable,
          absl::StrCat("cannot access ", path, ": ", std::strerror(errno)));
    }
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(path, " is not a socket"));
    }
    if (::access(path.c_str(), R_OK | W_OK) != 0) {
      return absl::PermissionDeniedError(
          absl::StrCat("permission denied on ", path,
                       " (the socket is mode 0600 while no other uid has a role: run as the "
                       "daemon's user or root, or give this uid a role with uid_roles)"));
    }
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  // Channels with equal arguments share a subchannel (one connection) through gRPC's global pool;
  // a local pool gives this channel a connection of its own.
  if (private_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  const Credentials& c = endpoint.credentials;
  if (!c.tls_ca.empty() || !c.tls_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!c.tls_ca.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFileText(c.tls_ca, "TLS CA file"));
    }
    if (!c.tls_cert.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFileText(c.tls_cert, "TLS certificate"));
      ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFileText(c.tls_key, "TLS key"));
    }
    creds = grpc::SslCredentials(ssl);
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (!endpoint.token.empty()) {
    interceptors.push_back(std::make_unique<TokenInterceptorFactory>(endpoint.token));
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(endpoint.target, creds, args,
                                                                 std::move(interceptors));
}

absl::StatusOr<std::unique_ptr<DaemonClient>> DaemonClient::Connect(const Endpoint& endpoint) {
  auto channel = OpenChannel(endpoint);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<DaemonClient>(
      new DaemonClient(endpoint, v1::Admin::NewStub(*std::move(channel))));
}

absl::StatusOr<v1::StatusResponse> DaemonClient::Status(absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::StatusResponse response;
  grpc::Status s = admin_->Status(&context, v1::StatusRequest(), &response);
  if (!s.ok()) return FromGrpc(s, "Status", endpoint_);
  return response;
}

namespace {

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

}  // namespace

absl::StatusOr<v1::ListVersionsResponse> DaemonClient::ListVersions(absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout);
  v1::ListVersionsResponse response;
  grpc::Status s = admin_->ListVersions(&context, v1::ListVersionsRequest(), &response);
  if (!s.ok()) return FromGrpc(s, "ListVersions", endpoint_);
  return response;
}

absl::StatusOr<v1::GetVersionResponse> DaemonClient::GetVersion(uint64_t version,
                                                                absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout);
  v1::GetVersionRequest request;
  request.set_version(version);
  v1::GetVersionResponse response;
  grpc::Status s = admin_->GetVersion(&context, request, &response);
  if (!s.ok()) return FromGrpc(s, "GetVersion", endpoint_);
  return response;
}

absl::Status DaemonClient::Drop(uint64_t version, absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout);
  v1::DropRequest request;
  request.set_version(version);
  v1::DropResponse response;
  grpc::Status s = admin_->Drop(&context, request, &response);
  if (!s.ok()) return FromGrpc(s, "Drop", endpoint_);
  return absl::OkStatus();
}

absl::StatusOr<v1::PullResponse> DaemonClient::Pull(uint64_t version, bool update,
                                                    absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout);
  v1::PullRequest request;
  request.set_version(version);
  request.set_update(update);
  v1::PullResponse response;
  grpc::Status s = admin_->Pull(&context, request, &response);
  if (!s.ok()) return FromGrpc(s, "Pull", endpoint_);
  return response;
}

absl::StatusOr<v1::UpdateResponse> DaemonClient::Update(const v1::UpdateRequest& request,
                                                        absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout);
  v1::UpdateResponse response;
  grpc::Status s = admin_->Update(&context, request, &response);
  if (!s.ok()) return FromGrpc(s, "Update", endpoint_);
  return response;
}

absl::StatusOr<v1::WaitLoadedResponse> DaemonClient::WaitLoaded(uint64_t version,
                                                                absl::Duration timeout) {
  grpc::ClientContext context;
  // The daemon answers DEADLINE_EXCEEDED with the workers that lack the version at `timeout`; the
  // call's own deadline comes a little later so that this answer arrives.
  SetDeadline(&context, timeout + absl::Seconds(5));
  v1::WaitLoadedRequest request;
  request.set_version(version);
  request.set_timeout_seconds(absl::ToDoubleSeconds(timeout));
  v1::WaitLoadedResponse response;
  grpc::Status s = admin_->WaitLoaded(&context, request, &response);
  if (!s.ok()) return FromGrpc(s, "WaitLoaded", endpoint_);
  return response;
}

}  // namespace ckpt::client
