#include "daemon/cluster/cluster.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netdb.h>

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/message_text.h"
#include "common/random_id.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// Compares without stopping at the first difference (the secret's length is not secret).
bool SameSecret(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    default:
      return "ERROR";
  }
}

}  // namespace

class Cluster::PeerService final : public v1::Peer::Service {
 public:
  explicit PeerService(Cluster* cluster) : cluster_(cluster) {}

  grpc::Status Hello(grpc::ServerContext* context, const v1::HelloRequest* request,
                     v1::HelloResponse* response) override {
    const ClusterOptions& o = cluster_->options_;
    if (!o.insecure) {
      const auto& metadata = context->client_metadata();
      auto it = metadata.find("authorization");
      if (it == metadata.end()) {
        Refused(context, "presented no cluster token");
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "no cluster token presented: this member needs the cluster's secret "
                            "(cluster_token_file)");
      }
      const absl::string_view value(it->second.data(), it->second.size());
      if (!absl::StartsWith(value, "Bearer ") || !SameSecret(value.substr(7), o.token)) {
        Refused(context, "presented a wrong cluster token");
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            absl::StrCat("the cluster token does not match member '", o.node_name,
                                         "''s cluster_token_file"));
      }
    }
    const uint32_t theirs = request->protocol_version();
    if (theirs + 1 < kPeerProtocolVersion || theirs > kPeerProtocolVersion + 1) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("Peer protocol version ", theirs,
                                       " is not adjacent to member '", o.node_name, "''s version ",
                                       kPeerProtocolVersion, ": upgrade one release at a time"));
    }
    if (request->instance() != cluster_->instance_ && request->node_name() == o.node_name) {
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          absl::StrCat("node_name '", QuoteForMessage(request->node_name(), 64),
                       "' is this member's own name: every member needs a node_name of its own"));
    }
    if (request->leaving()) cluster_->MarkLeft(request->node_name());
    *response = cluster_->self_();
    response->set_protocol_version(kPeerProtocolVersion);
    response->set_node_name(o.node_name);
    response->set_instance(cluster_->instance_);
    absl::MutexLock lock(&cluster_->mu_);
    response->set_leaving(cluster_->stopping_);
    return grpc::Status::OK;
  }

 private:
  // At most one line per 10 s: a misconfigured peer calls every round.
  void Refused(grpc::ServerContext* context, const char* what) {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (now - last_log_ < absl::Seconds(10)) return;
    last_log_ = now;
    spdlog::warn("cluster: a peer at {} {}; refused", context->peer(), what);
  }

  Cluster* const cluster_;
  absl::Mutex mu_;
  absl::Time last_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

Cluster::Cluster(ClusterOptions options, SelfInfo self)
    : options_(std::move(options)), self_(std::move(self)), instance_(RandomHex128()) {}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(ClusterOptions options, SelfInfo self) {
  auto listen = ParseListenAddress(options.listen);
  if (!listen.ok()) return Annotate(listen.status(), "cluster_listen");
  if (!options.insecure && options.token.empty()) {
    return absl::InvalidArgumentError("cluster: no secret and not insecure_peers");
  }
  std::unique_ptr<Cluster> c(new Cluster(std::move(options), std::move(self)));
  c->service_ = std::make_unique<PeerService>(c.get());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(c->options_.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(c->service_.get());
  builder.SetMaxReceiveMessageSize(64 << 10);  // a HelloRequest is a few hundred bytes
  c->server_ = builder.BuildAndStart();
  if (c->server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cluster_listen ", c->options_.listen,
                                               ": cannot listen (address in use or not local?)"));
  }
  PeerAddress bound = *listen;
  bound.port = port;
  c->address_ = bound.ToString();
  c->thread_ = std::thread([raw = c.get()] { raw->Loop(); });
  spdlog::info(
      "cluster: member '{}' serves the Peer API on {} ({}); members: {}", c->options_.node_name,
      c->address_,
      c->options_.insecure ? "peers NOT authenticated (insecure_peers)"
                           : "peers prove the cluster token",
      c->options_.members.dns_name.empty()
          ? absl::StrCat(c->options_.members.addresses.size(), " listed")
          : absl::StrCat("dns:", c->options_.members.dns_name, ":", c->options_.members.dns_port));
  if (c->options_.insecure) {
    spdlog::warn(
        "cluster: insecure_peers is set: anyone who reaches {} is taken for a member (trusted "
        "networks only)",
        c->address_);
  }
  return c;
}

Cluster::~Cluster() { Stop(absl::Now() + absl::Seconds(2)); }

void Cluster::Stop(absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  Round(/*leaving=*/true, deadline);
  if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(deadline));
}

std::vector<PeerAddress> Cluster::Resolve(std::string* error) const {
  const ClusterMembers& m = options_.members;
  if (m.dns_name.empty()) return m.addresses;
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  // Bounded by the resolver's own timeout and attempts (resolv.conf), not by cluster_timeout.
  const int rc = ::getaddrinfo(m.dns_name.c_str(), nullptr, &hints, &found);
  if (rc != 0) {
    *error = absl::StrCat("resolving dns:", m.dns_name, ": ", ::gai_strerror(rc));
    return {};
  }
  std::vector<PeerAddress> out;
  std::set<std::string> seen;
  for (addrinfo* a = found; a != nullptr && out.size() < kMaxClusterMembers; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* where =
        a->ai_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr)
            : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr);
    if (::inet_ntop(a->ai_family, where, text, sizeof(text)) == nullptr) continue;
    if (!seen.insert(text).second) continue;
    out.push_back(PeerAddress{text, m.dns_port});
  }
  ::freeaddrinfo(found);
  if (out.empty()) *error = absl::StrCat("dns:", m.dns_name, " has no A or AAAA records");
  return out;
}

void Cluster::Loop() {
  for (;;) {
    Round(/*leaving=*/false, absl::InfiniteFuture());
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.interval)) return;
  }
}

void Cluster::Round(bool leaving, absl::Time deadline) {
  std::string resolve_error;
  const std::vector<PeerAddress> addresses = Resolve(&resolve_error);
  struct Call {
    std::string address;
    grpc::ClientContext context;
    v1::HelloRequest request;
    v1::HelloResponse response;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<Call>> calls;
  {
    absl::MutexLock lock(&mu_);
    resolve_error_ = resolve_error;
    if (resolve_error.empty() && !options_.members.dns_name.empty()) {
      // Members whose records are gone are gone (a headless Service drops pods that are not ready).
      std::set<std::string> now;
      for (const PeerAddress& a : addresses) now.insert(a.ToString());
      for (auto it = members_.begin(); it != members_.end();) {
        it = now.count(it->first) == 0 ? members_.erase(it) : std::next(it);
      }
    }
    for (const PeerAddress& a : addresses) {
      const std::string key = a.ToString();
      Member& m = members_[key];
      if (m.stub == nullptr) {
        grpc::ChannelArguments args;
        args.SetMaxReceiveMessageSize(4 << 20);
        m.stub = v1::Peer::NewStub(
            grpc::CreateCustomChannel(key, grpc::InsecureChannelCredentials(), args));
        m.shown.set_address(key);
        m.shown.set_state("unreachable");
        m.shown.set_error("not called yet");
      }
      if (m.shown.state() == "self") continue;
      if (leaving && m.shown.state() != "up") continue;
      auto call = std::make_unique<Call>();
      call->address = key;
      call->request.set_protocol_version(kPeerProtocolVersion);
      call->request.set_node_name(options_.node_name);
      call->request.set_cluster_listen(options_.listen);
      call->request.set_instance(instance_);
      call->request.set_leaving(leaving);
      call->context.set_deadline(
          absl::ToChronoTime(std::min(deadline, absl::Now() + options_.timeout)));
      if (!options_.insecure)
        call->context.AddMetadata("authorization", "Bearer " + options_.token);
      calls.push_back(std::move(call));
    }
  }
  // Every call at once; each bounded by cluster_timeout.
  absl::Mutex calls_mu;
  size_t pending = calls.size();
  for (auto& call : calls) {
    v1::Peer::Stub* stub;
    {
      absl::MutexLock lock(&mu_);
      stub = members_[call->address].stub.get();
    }
    Call* raw = call.get();
    stub->async()->Hello(&raw->context, &raw->request, &raw->response,
                         [raw, &calls_mu, &pending](grpc::Status s) {
                           absl::MutexLock lock(&calls_mu);
                           raw->status = std::move(s);
                           --pending;
                         });
  }
  {
    absl::MutexLock lock(&calls_mu);
    auto done = [&pending]() { return pending == 0; };
    if (!calls_mu.AwaitWithTimeout(absl::Condition(&done), options_.timeout + absl::Seconds(5))) {
      for (auto& call : calls) call->context.TryCancel();
      // A cancelled call completes promptly; its callback must run before the Call goes.
      calls_mu.Await(absl::Condition(&done));
    }
  }
  absl::MutexLock lock(&mu_);
  for (const auto& call : calls) {
    auto it = members_.find(call->address);
    if (it == members_.end()) continue;
    v1::ClusterMember& shown = it->second.shown;
    if (call->status.ok()) {
      const v1::HelloResponse& r = call->response;
      if (r.instance() == instance_) {
        shown.set_state("self");  // this daemon's own address is in the list
        continue;
      }
      const bool first = shown.state() != "up";
      shown.set_node_name(r.node_name());
      shown.set_state(r.leaving() ? "left" : "up");
      shown.clear_error();
      *shown.mutable_gpu_uuids() = r.gpu_uuids();
      *shown.mutable_versions() = r.versions();
      shown.set_workers(r.workers());
      shown.set_release(r.release());
      shown.set_last_seen_unix_ms(absl::ToUnixMillis(absl::Now()));
      if (first && !leaving) {
        spdlog::info("cluster: member '{}' at {} is up ({} GPUs)", r.node_name(), call->address,
                     r.gpu_uuids_size());
      }
      continue;
    }
    const grpc::StatusCode code = call->status.error_code();
    const bool refused =
        code == grpc::StatusCode::UNAUTHENTICATED || code == grpc::StatusCode::PERMISSION_DENIED ||
        code == grpc::StatusCode::FAILED_PRECONDITION || code == grpc::StatusCode::UNIMPLEMENTED ||
        code == grpc::StatusCode::INVALID_ARGUMENT;
    const std::string error = absl::StrCat(CodeName(code), ": ", call->status.error_message());
    if (!refused && shown.state() == "left") continue;  // it said it was stopping
    const std::string state = refused ? "refused" : "unreachable";
    if (shown.state() != state || shown.error() != error) {
      if (!leaving) {
        spdlog::warn("cluster: member {}{} is {}: {}", call->address,
                     shown.node_name().empty() ? "" : absl::StrCat(" ('", shown.node_name(), "')"),
                     state, error);
      }
    }
    shown.set_state(state);
    shown.set_error(error);
  }
}

void Cluster::MarkLeft(const std::string& node_name) {
  absl::MutexLock lock(&mu_);
  for (auto& [address, m] : members_) {
    if (m.shown.node_name() == node_name && m.shown.state() != "self") {
      m.shown.set_state("left");
      m.shown.clear_error();
      spdlog::info("cluster: member '{}' at {} left", node_name, address);
    }
  }
}

std::vector<v1::ClusterMember> Cluster::Members() const {
  std::vector<v1::ClusterMember> out;
  v1::HelloResponse me = self_();
  v1::ClusterMember self;
  self.set_address(address_);
  self.set_node_name(options_.node_name);
  self.set_state("self");
  *self.mutable_gpu_uuids() = me.gpu_uuids();
  *self.mutable_versions() = me.versions();
  self.set_workers(me.workers());
  self.set_release(me.release());
  self.set_last_seen_unix_ms(absl::ToUnixMillis(absl::Now()));
  out.push_back(std::move(self));
  absl::MutexLock lock(&mu_);
  for (const auto& [address, m] : members_) {
    if (m.shown.state() != "self") out.push_back(m.shown);
  }
  if (!resolve_error_.empty() && out.size() == 1) {
    v1::ClusterMember none;
    none.set_address(
        absl::StrCat("dns:", options_.members.dns_name, ":", options_.members.dns_port));
    none.set_state("unreachable");
    none.set_error(resolve_error_);
    out.push_back(std::move(none));
  }
  return out;
}

}  // namespace ckpt::daemon
