#include "daemon/cluster/cluster.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>
#include <netdb.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/message_text.h"
#include "common/random_id.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "daemon/cluster/peer_proof.h"
#include "daemon/cluster/peer_session.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// One of at most `most` calls of a kind at once (`count` of them run), held while it lives.
class CallSlot {
 public:
  CallSlot(std::atomic<int>& count, int most)
      : count_(count), most_(most), taken_(count.fetch_add(1) < most) {}
  ~CallSlot() { count_.fetch_sub(1); }
  bool taken() const { return taken_; }
  // RESOURCE_EXHAUSTED for a call of `what` that found every slot taken.
  grpc::Status Refusal(const std::string& node_name, const char* what) const {
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("member '", node_name, "' serves ", most_, " ", what, " calls at once"));
  }

 private:
  std::atomic<int>& count_;
  const int most_;
  const bool taken_;
};

// Where a caller listens: the host of its bound cluster_listen, or (a wildcard host) the address
// its call came from (gRPC's "ipv4:A.B.C.D:PORT" / "ipv6:[ADDR]:PORT"), with that port.
std::optional<PeerAddress> CallerAddress(const std::string& grpc_peer, const std::string& listen) {
  auto bound = ParseListenAddress(listen);
  if (!bound.ok() || bound->port == 0) return std::nullopt;
  if (bound->host != "0.0.0.0" && bound->host != "::" && !bound->host.empty()) return *bound;
  std::string host;
  if (absl::StartsWith(grpc_peer, "ipv4:")) {
    host = grpc_peer.substr(5, grpc_peer.rfind(':') - 5);
  } else if (absl::StartsWith(grpc_peer, "ipv6:[")) {
    const size_t end = grpc_peer.find(']');
    if (end == std::string::npos) return std::nullopt;
    host = grpc_peer.substr(6, end - 6);
  } else {
    return std::nullopt;
  }
  auto parsed = ParseClusterMembers(absl::StrCat(
      host.find(':') != std::string::npos ? absl::StrCat("[", host, "]") : host, ":", bound->port));
  if (!parsed.ok() || parsed->addresses.size() != 1) return std::nullopt;
  return parsed->addresses[0];
}

}  // namespace

class Cluster::PeerService final : public v1::Peer::Service {
 public:
  explicit PeerService(Cluster* cluster) : cluster_(cluster) {}

  grpc::Status Hello(grpc::ServerContext* context, const v1::HelloRequest* request,
                     v1::HelloResponse* response) override {
    const ClusterOptions& o = cluster_->options_;
    if (!o.token.empty()) {
      if (request->proof().empty() || request->nonce().size() != kPeerNonceBytes) {
        Refused(context, "proved no cluster token");
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "no proof of the cluster token: this member needs the cluster's secret "
                            "(cluster_token_file)");
      }
      if (!SameProof(request->proof(), RequestProof(o.token, *request))) {
        Refused(context, "proved a wrong cluster token");
        return grpc::Status(
            grpc::StatusCode::UNAUTHENTICATED,
            absl::StrCat("the cluster token does not match the cluster_token_file of member '",
                         o.node_name, "'"));
      }
    }
    if (o.tls.enabled()) {
      absl::Status named =
          PeerNamed(PeerCertificateNames(context->auth_context().get()), request->node_name(),
                    absl::StrCat("the peer at ", EscapeForMessage(context->peer(), 64)));
      if (!named.ok()) {
        Refused(context, "presented a certificate that does not name its node_name");
        return ToGrpc(named);
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
          absl::StrCat("node_name ", QuoteForMessage(request->node_name(), 64),
                       " is this member's own name: every member needs a node_name of its own"));
    }
    if (request->leaving()) cluster_->MarkLeft(request->node_name(), request->instance());
    if (theirs >= kPeerPartsVersion && !request->leaving() &&
        request->instance() != cluster_->instance_) {
      // Scale-out: a proved caller this member does not list is a member all the same; it is
      // called back at its bound port (at the address the call came from, when it listens on a
      // wildcard address).
      if (auto at = CallerAddress(context->peer(), request->cluster_listen()); at.has_value()) {
        cluster_->LearnCaller(*at, request->node_name(), request->instance());
      }
    }
    *response = cluster_->self_();
    // A caller of protocol 3 knows no parts or peers (its proof would not cover them).
    if (theirs < kPeerPartsVersion) {
      response->clear_held();
      response->clear_updating();
      response->clear_pulling();
      response->clear_pull_received_bytes();
      response->clear_pull_total_bytes();
    } else {
      for (std::string& p : cluster_->UpPeers(request->instance())) {
        response->add_peers(std::move(p));
      }
    }
    response->set_protocol_version(kPeerProtocolVersion);
    response->set_node_name(o.node_name);
    response->set_instance(cluster_->instance_);
    absl::MutexLock lock(&cluster_->mu_);
    response->set_leaving(cluster_->stopping_);
    if (!o.token.empty()) response->set_proof(ResponseProof(o.token, request->nonce(), *response));
    return grpc::Status::OK;
  }

  grpc::Status Rendezvous(grpc::ServerContext* context, const v1::PeerEnvelope* request,
                          v1::PeerEnvelope* response) override {
    const ClusterOptions& o = cluster_->options_;
    PeerSession session(o.token, "Rendezvous", PeerSession::Side::kCallee);
    v1::RendezvousRequest r;
    if (absl::Status s = session.Open(*request, &r, "the request"); !s.ok()) {
      Refused(context, "sent a rendezvous request without a valid proof");
      return ToGrpc(s);
    }
    auto answer = cluster_->rendezvous_.Serve(r);
    if (!answer.ok()) return ToGrpc(answer.status());
    return ToGrpc(session.Seal(*answer, response));
  }

  grpc::Status VersionManifest(grpc::ServerContext* context, const v1::PeerEnvelope* request,
                               v1::PeerEnvelope* response) override {
    const ClusterOptions& o = cluster_->options_;
    PeerSession session(o.token, "VersionManifest", PeerSession::Side::kCallee);
    v1::VersionManifestRequest r;
    if (absl::Status s = session.Open(*request, &r, "the request"); !s.ok()) {
      Refused(context, "sent a manifest request without a valid proof");
      return ToGrpc(s);
    }
    VersionManifestHandler handler;
    {
      absl::MutexLock lock(&cluster_->hooks_mu_);
      handler = cluster_->manifest_handler_;
    }
    if (!handler) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this member serves no manifests");
    }
    auto answer = handler(r);
    if (!answer.ok()) return ToGrpc(answer.status());
    return ToGrpc(session.Seal(*answer, response));
  }

  grpc::Status ReadTensors(grpc::ServerContext* context, const v1::PeerEnvelope* request,
                           grpc::ServerWriter<v1::TensorChunk>* writer) override {
    const ClusterOptions& o = cluster_->options_;
    PeerSession session(o.token, "ReadTensors", PeerSession::Side::kCallee);
    v1::ReadTensorsRequest r;
    if (absl::Status s = session.Open(*request, &r, "the request"); !s.ok()) {
      Refused(context, "sent a read request without a valid proof");
      return ToGrpc(s);
    }
    ReadTensorsHandler handler;
    {
      absl::MutexLock lock(&cluster_->hooks_mu_);
      handler = cluster_->read_handler_;
    }
    if (!handler) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this member serves no tensors");
    }
    // A few at once: the Peer server's other threads stay free for Hello and updates.
    CallSlot slot(read_calls_, kMaxReadCalls);
    if (!slot.taken()) return slot.Refusal(o.node_name, "ReadTensors");
    return ToGrpc(handler(r, [context, writer](const v1::TensorChunk& c) {
      return !context->IsCancelled() && writer->Write(c);
    }));
  }

  grpc::Status MemberUpdate(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::PeerEnvelope, v1::PeerEnvelope>* stream) override {
    const ClusterOptions& o = cluster_->options_;
    if (!cluster_->member_update_) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this member takes no cluster updates");
    }
    // One update runs at a time: a few calls at once are plenty, and the Peer server's other
    // threads stay free for Hello and Rendezvous whatever a caller opens.
    CallSlot slot(member_calls_, kMaxMemberUpdateCalls);
    if (!slot.taken()) return slot.Refusal(o.node_name, "MemberUpdate");
    class Stream final : public MemberUpdateStream {
     public:
      Stream(grpc::ServerContext* context,
             grpc::ServerReaderWriter<v1::PeerEnvelope, v1::PeerEnvelope>* stream,
             std::string secret, bool tls)
          : context_(context),
            stream_(stream),
            tls_(tls),
            session_(std::move(secret), "MemberUpdate", PeerSession::Side::kCallee) {}
      absl::Status Read(v1::MemberUpdateIn* in, absl::string_view what) override {
        v1::PeerEnvelope e;
        if (!stream_->Read(&e)) {
          return absl::CancelledError(
              absl::StrCat("the coordinator ended the update before sending ", what));
        }
        return session_.Open(e, in, what);
      }
      absl::Status Write(const v1::MemberUpdateOut& out) override {
        v1::PeerEnvelope e;
        RETURN_IF_ERROR(session_.Seal(out, &e));
        if (!stream_->Write(e)) return absl::CancelledError("the coordinator ended the update");
        return absl::OkStatus();
      }
      bool cancelled() const override { return context_->IsCancelled(); }
      void Cancel() override { context_->TryCancel(); }
      absl::Status CheckCaller(absl::string_view node_name) const override {
        if (!tls_) return absl::OkStatus();
        return PeerNamed(
            PeerCertificateNames(context_->auth_context().get()), node_name,
            absl::StrCat("the coordinator at ", EscapeForMessage(context_->peer(), 64)));
      }

     private:
      grpc::ServerContext* const context_;
      grpc::ServerReaderWriter<v1::PeerEnvelope, v1::PeerEnvelope>* const stream_;
      const bool tls_;
      PeerSession session_;
    };
    Stream s(context, stream, o.token, o.tls.enabled());
    absl::Status status = cluster_->member_update_(s);
    if (absl::IsUnauthenticated(status)) Refused(context, "sent an update without a valid proof");
    return ToGrpc(status);
  }

 private:
  static grpc::Status ToGrpc(const absl::Status& s) {
    if (s.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
  }

  // At most one line per 10 s: a misconfigured peer calls every round.
  void Refused(grpc::ServerContext* context, const char* what) {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (now - last_log_ < absl::Seconds(10)) return;
    last_log_ = now;
    spdlog::warn("cluster: a peer at {} {}; refused", context->peer(), what);
  }

  static constexpr int kMaxMemberUpdateCalls = 4;
  static constexpr int kMaxReadCalls = 8;
  std::atomic<int> read_calls_{0};
  Cluster* const cluster_;
  std::atomic<int> member_calls_{0};
  absl::Mutex mu_;
  absl::Time last_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

Cluster::Cluster(ClusterOptions options, SelfInfo self, MemberUpdateHandler member_update)
    : options_(std::move(options)),
      self_(std::move(self)),
      member_update_(std::move(member_update)),
      instance_(RandomHex128()) {}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(ClusterOptions options, SelfInfo self,
                                                        MemberUpdateHandler member_update) {
  auto listen = ParseListenAddress(options.listen);
  if (!listen.ok()) return Annotate(listen.status(), "cluster_listen");
  if (!options.insecure && options.token.empty() && !options.tls.enabled()) {
    return absl::InvalidArgumentError("cluster: no secret, no TLS and not insecure_peers");
  }
  if (options.tls.enabled()) {
    RETURN_IF_ERROR(CheckPeerTls(options.tls, options.node_name));
  }
  std::unique_ptr<Cluster> c(
      new Cluster(std::move(options), std::move(self), std::move(member_update)));
  c->service_ = std::make_unique<PeerService>(c.get());
  c->channel_credentials_ = c->options_.tls.enabled() ? PeerChannelCredentials(c->options_.tls)
                                                      : grpc::InsecureChannelCredentials();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(c->options_.listen,
                           c->options_.tls.enabled() ? PeerServerCredentials(c->options_.tls)
                                                     : grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(c->service_.get());
  // A HelloRequest is a few hundred bytes; envelopes carry at most 48 KiB of manifest or
  // rendezvous data: nothing larger is read before its proof is checked.
  builder.SetMaxReceiveMessageSize(64 << 10);
  // A second daemon on the same port must fail to bind, not share the Peer traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 16);
  grpc::ResourceQuota quota("ckpt-engined-peer");
  quota.SetMaxThreads(32);
  builder.SetResourceQuota(quota);
  c->server_ = builder.BuildAndStart();
  if (c->server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cluster_listen ", c->options_.listen,
                                               ": cannot listen (address in use or not local?)"));
  }
  PeerAddress bound = *listen;
  bound.port = port;
  {
    absl::MutexLock lock(&c->mu_);  // a Hello may already be learning (LearnLocked reads it)
    c->address_ = bound.ToString();
  }
  c->thread_ = std::thread([raw = c.get()] { raw->Loop(); });
  c->after_thread_ = std::thread([raw = c.get()] { raw->AfterRounds(); });
  spdlog::info(
      "cluster: member '{}' serves the Peer API on {} ({}); members: {}", c->options_.node_name,
      c->address_,
      c->options_.insecure         ? "peers NOT authenticated (insecure_peers)"
      : !c->options_.tls.enabled() ? "peers prove the cluster token"
      : c->options_.token.empty()  ? "TLS, peers named by their certificates (cluster_ca)"
                                   : "TLS, peers named by their certificates and proving the token",
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
  if (thread_.joinable()) thread_.join();  // its round ends at once (cancelled)
  {
    absl::MutexLock lock(&hooks_mu_);
    after_stop_ = true;
  }
  if (server_ != nullptr) {  // else Start failed before serving
    Round(/*leaving=*/true, deadline);
    server_->Shutdown(absl::ToChronoTime(deadline));
  }
  // A catalog fetch still running ends by its own deadline (UpdateEngine::FetchHolding).
  if (after_thread_.joinable()) after_thread_.join();
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

void Cluster::SetVersionManifestHandler(VersionManifestHandler handler) {
  absl::MutexLock lock(&hooks_mu_);
  manifest_handler_ = std::move(handler);
}

void Cluster::SetReadTensorsHandler(ReadTensorsHandler handler) {
  absl::MutexLock lock(&hooks_mu_);
  read_handler_ = std::move(handler);
}

absl::Status Cluster::CallReadTensors(
    const std::string& node_name, const v1::ReadTensorsRequest& request, absl::Time deadline,
    absl::Duration idle, const std::function<bool()>& stop,
    const std::function<absl::Status(const v1::TensorChunk&)>& on_chunk) {
  ASSIGN_OR_RETURN(PeerStub peer, StubOf(node_name));
  PeerSession session(options_.token, "ReadTensors", PeerSession::Side::kCaller);
  v1::PeerEnvelope in;
  RETURN_IF_ERROR(session.Seal(request, &in));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  std::unique_ptr<grpc::ClientReader<v1::TensorChunk>> reader =
      peer.stub->ReadTensors(&context, in);
  // The watchdog: a holder that stops sending (stopped, cut off: TCP may never say so) or a pull
  // being stopped ends the call.
  absl::Mutex watch_mu;
  bool finished = false;
  absl::Time last_chunk = absl::Now();
  std::string why;
  std::thread watchdog([&] {
    absl::MutexLock lock(&watch_mu);
    while (!finished) {
      watch_mu.AwaitWithTimeout(absl::Condition(&finished), absl::Milliseconds(100));
      if (finished) break;
      if (stop && stop()) {
        why = "the pull was stopped";
      } else if (absl::Now() - last_chunk > idle) {
        why = absl::StrCat("member '", node_name, "' sent nothing for ", HumanDuration(idle));
      } else {
        continue;
      }
      context.TryCancel();
      break;
    }
  });
  v1::TensorChunk chunk;
  absl::Status failed;
  while (reader->Read(&chunk)) {
    {
      absl::MutexLock lock(&watch_mu);
      last_chunk = absl::Now();
    }
    failed = on_chunk(chunk);
    if (!failed.ok()) {
      context.TryCancel();
      break;
    }
  }
  grpc::Status s = reader->Finish();
  {
    absl::MutexLock lock(&watch_mu);
    finished = true;
  }
  watchdog.join();
  if (!failed.ok()) return failed;
  if (!why.empty()) return absl::UnavailableError(absl::StrCat("reading tensors: ", why));
  if (!s.ok()) {
    return absl::Status(
        static_cast<absl::StatusCode>(s.error_code()),
        absl::StrCat("reading tensors of version ", request.version(), " from member '", node_name,
                     "': ", EscapeForMessage(s.error_message(), 400)));
  }
  if (options_.tls.enabled()) {
    RETURN_IF_ERROR(PeerNamed(PeerCertificateNames(context.auth_context().get()), node_name,
                              absl::StrCat("member '", node_name, "'")));
  }
  return absl::OkStatus();
}

void Cluster::SetAfterRound(std::function<void()> after_round) {
  absl::MutexLock lock(&hooks_mu_);
  after_round_ = std::move(after_round);
}

void Cluster::LearnLocked(const PeerAddress& address, const std::string& how) {
  const std::string key = address.ToString();
  if (members_.count(key) != 0 || key == address_ || address_.empty()) return;
  if (auto alias = aliases_.find(key); alias != aliases_.end()) {
    if (absl::Now() < alias->second) return;
    aliases_.erase(alias);
  }
  if (members_.size() >= kMaxClusterMembers) {
    spdlog::warn("cluster: {} members are listed, the most: the member at {} is not learned",
                 kMaxClusterMembers, key);
    return;
  }
  Member& m = members_[key];
  m.address = address;
  m.learned = true;
  m.last_answer = absl::Now();  // the forget clock starts now
  m.shown.set_address(key);
  m.shown.set_state("unreachable");
  m.shown.set_error("not called yet");
  spdlog::info("cluster: learned of a member at {} ({})", key, how);
}

void Cluster::LearnCaller(const PeerAddress& address, const std::string& node_name,
                          const std::string& instance) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  for (const auto& [key, m] : members_) {
    if (m.shown.instance() == instance) return;  // known already, under another address
  }
  LearnLocked(address, absl::StrCat("'", EscapeForMessage(node_name, 64),
                                    "' called this member; it is not in cluster_members"));
}

std::vector<std::string> Cluster::UpPeers(const std::string& caller) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [key, m] : members_) {
    if (m.shown.state() != "up" || m.shown.instance() == caller) continue;
    if (out.size() < kMaxClusterMembers) out.push_back(key);
  }
  return out;
}

void Cluster::AfterRounds() {
  for (;;) {
    std::function<void()> after;
    {
      absl::MutexLock lock(&hooks_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(hooks_mu_) {
        return after_pending_ || after_stop_;
      };
      hooks_mu_.Await(absl::Condition(&ready));
      if (after_stop_) return;
      after_pending_ = false;
      after = after_round_;
    }
    if (after) after();
  }
}

void Cluster::Loop() {
  for (;;) {
    Round(/*leaving=*/false, absl::InfiniteFuture());
    {
      absl::MutexLock lock(&hooks_mu_);
      after_pending_ = true;  // AfterRounds runs the hook
    }
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.interval)) return;
  }
}

void Cluster::Round(bool leaving, absl::Time deadline) {
  std::string resolve_error;
  std::vector<PeerAddress> addresses;
  if (!leaving) {
    addresses = Resolve(&resolve_error);
  } else {
    // The goodbye goes to the members known now: no DNS lookup (no deadline) while stopping.
    absl::MutexLock lock(&mu_);
    for (const auto& [key, m] : members_) addresses.push_back(m.address);
  }
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
    if (!leaving) resolve_error_ = resolve_error;
    if (!resolve_error.empty()) {
      // DNS failed this round: keep calling the members known so far (their states stay true).
      for (const auto& [key, m] : members_) addresses.push_back(m.address);
    } else if (!leaving && !options_.members.dns_name.empty()) {
      // Members whose records are gone are gone (a headless Service drops pods that are not ready);
      // learned ones stay until they are forgotten.
      std::set<std::string> now;
      for (const PeerAddress& a : addresses) now.insert(a.ToString());
      for (auto it = members_.begin(); it != members_.end();) {
        it = now.count(it->first) == 0 && !it->second.learned ? members_.erase(it) : std::next(it);
      }
    }
    if (!leaving) {
      // Learned members are called too; those silent for kForgetLearned are forgotten.
      std::set<std::string> listed;
      for (const PeerAddress& a : addresses) listed.insert(a.ToString());
      const absl::Time now = absl::Now();
      for (auto it = members_.begin(); it != members_.end();) {
        if (listed.count(it->first) != 0) it->second.learned = false;  // listed (DNS) now
        if (!it->second.learned) {
          ++it;
          continue;
        }
        if (it->second.shown.state() == "self") {
          // This member under another address: dropped, and not learned again for a while.
          aliases_[it->first] = now + kForgetLearned;
          it = members_.erase(it);
          continue;
        }
        if (it->second.shown.state() != "up" && now - it->second.last_answer > kForgetLearned) {
          spdlog::info("cluster: forgot the member at {} (learned; silent for {})", it->first,
                       HumanDuration(now - it->second.last_answer));
          it = members_.erase(it);
          continue;
        }
        addresses.push_back(it->second.address);
        ++it;
      }
    }
    for (const PeerAddress& a : addresses) {
      const std::string key = a.ToString();
      Member& m = members_[key];
      if (m.stub == nullptr) {
        grpc::ChannelArguments args;
        // Answers: a HelloResponse (small, fields capped below), rendezvous values, a member's
        // update result (one line per worker).
        args.SetMaxReceiveMessageSize(4 << 20);
        // A member that restarts is seen within a round or two, not after gRPC's default backoff
        // of up to 120 s.
        const int backoff_ms =
            static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(options_.interval), 5000));
        args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::max(100, backoff_ms / 2));
        args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, std::max(100, backoff_ms / 2));
        args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, std::max(200, backoff_ms));
        m.channel = grpc::CreateCustomChannel(key, channel_credentials_, args);
        m.stub = v1::Peer::NewStub(m.channel);
        m.address = a;
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
      // As bound (port 0 in the configuration is the port picked): a member that does not list
      // this one can call it back.
      call->request.set_cluster_listen(address_);
      call->request.set_instance(instance_);
      call->request.set_leaving(leaving);
      call->context.set_deadline(
          absl::ToChronoTime(std::min(deadline, absl::Now() + options_.timeout)));
      if (!options_.token.empty()) {
        // The secret itself never travels: a proof over a fresh nonce and this request.
        call->request.set_nonce(PeerNonce());
        call->request.set_proof(RequestProof(options_.token, call->request));
      }
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
    // Every call has its deadline; a round that is not the goodbye also ends at once when the
    // daemon stops (its calls cancelled), so Stop never waits for a slow member.
    const absl::Time limit = absl::Now() + options_.timeout + absl::Seconds(5);
    auto done = [&pending]() { return pending == 0; };
    bool cancel = false;
    for (;;) {
      {
        absl::MutexLock lock(&calls_mu);
        if (calls_mu.AwaitWithTimeout(absl::Condition(&done), absl::Milliseconds(100))) break;
      }
      bool stopping;
      {
        absl::MutexLock lock(&mu_);
        stopping = stopping_;
      }
      if ((!leaving && stopping) || absl::Now() > limit) {
        cancel = true;
        break;
      }
    }
    if (cancel) {
      for (auto& call : calls) call->context.TryCancel();
      // A cancelled call completes promptly; its callback must run before the Call goes.
      absl::MutexLock lock(&calls_mu);
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
      if (!options_.token.empty() &&
          !SameProof(r.proof(), ResponseProof(options_.token, call->request.nonce(), r))) {
        // Whoever answered there does not hold the secret (a stale address, a spoofed name): it
        // is told nothing it could not learn already, and believed in nothing.
        if (shown.state() != "refused") {
          spdlog::warn("cluster: the answer from {} carries no valid proof of the cluster token",
                       call->address);
        }
        shown.set_state("refused");
        shown.set_error(
            "its answer does not prove the cluster token (not a member, or another "
            "cluster's)");
        continue;
      }
      // First, so that nothing the answer says (its instance, its name) is believed unproved.
      if (options_.tls.enabled()) {
        absl::Status named = PeerNamed(PeerCertificateNames(call->context.auth_context().get()),
                                       r.node_name(), call->address);
        if (!named.ok()) {
          if (shown.state() != "refused") spdlog::warn("cluster: {}", std::string(named.message()));
          shown.set_state("refused");
          shown.set_error(std::string(named.message()));
          continue;
        }
      }
      if (r.instance() == instance_ && r.node_name() == options_.node_name) {
        shown.set_state("self");  // this daemon's own address is in the list
        continue;
      }
      if (absl::Status bad = CheckNodeName(r.node_name()); !bad.ok()) {
        shown.set_state("refused");
        shown.set_error(absl::StrCat("it answered with an invalid name: ", bad.message()));
        continue;
      }
      if (r.instance() == it->second.left_instance && !r.leaving()) {
        continue;  // an answer sent before that process said goodbye: it stays left
      }
      if (it->second.learned) {
        // Known already under another address (a host name in the list, its IP learned): the
        // learned entry goes.
        bool known = false;
        for (const auto& [key, other] : members_) {
          known = known || (key != it->first && other.shown.state() == "up" &&
                            other.shown.instance() == r.instance());
        }
        if (known) {
          aliases_[it->first] = absl::Now() + kForgetLearned;
          members_.erase(it);
          continue;
        }
      }
      const bool first = shown.state() != "up";
      it->second.last_answer = absl::Now();
      // Scale-out: the members it sees up that this one does not know yet.
      for (int i = 0; i < std::min(r.peers_size(), static_cast<int>(kMaxClusterMembers)); ++i) {
        auto parsed = ParseClusterMembers(r.peers(i));
        if (parsed.ok() && parsed->addresses.size() == 1) {
          LearnLocked(parsed->addresses[0],
                      absl::StrCat("member '", r.node_name(), "' sees it up"));
        }
      }
      shown.set_node_name(r.node_name());
      shown.set_state(r.leaving() ? "left" : "up");
      if (r.leaving()) it->second.left_instance = r.instance();
      shown.clear_error();
      // Bounded: what a member says about itself is shown, not trusted to be small.
      shown.clear_gpu_uuids();
      for (int i = 0; i < std::min(r.gpu_uuids_size(), 64); ++i) {
        shown.add_gpu_uuids(EscapeForMessage(r.gpu_uuids(i), 64));
      }
      shown.clear_versions();
      for (int i = 0; i < std::min(r.versions_size(), 1024); ++i) shown.add_versions(r.versions(i));
      // Bounded and checked: parts ascending, below a count of 2..4096.
      shown.clear_held();
      for (int i = 0; i < std::min(r.held_size(), 1024); ++i) {
        const v1::HeldVersion& h = r.held(i);
        bool well_formed = h.part_count() == 0
                               ? h.parts_size() == 0
                               : h.part_count() >= 2 && h.part_count() <= 4096 &&
                                     h.parts_size() <= static_cast<int>(h.part_count());
        for (int k = 0; well_formed && k < h.parts_size(); ++k) {
          well_formed = h.parts(k) < h.part_count() && (k == 0 || h.parts(k - 1) < h.parts(k));
        }
        if (well_formed) *shown.add_held() = h;
      }
      shown.set_workers(r.workers());
      shown.set_updating_version(r.updating());
      shown.set_pulling_version(r.pulling());
      shown.set_pull_received_bytes(r.pulling() != 0 ? r.pull_received_bytes() : 0);
      shown.set_pull_total_bytes(r.pulling() != 0 ? r.pull_total_bytes() : 0);
      shown.set_release(EscapeForMessage(r.release(), 64));
      shown.set_instance(EscapeForMessage(r.instance(), 64));
      shown.set_protocol_version(r.protocol_version());
      shown.set_backend(EscapeForMessage(r.backend(), 16));
      shown.set_last_seen_unix_ms(absl::ToUnixMillis(absl::Now()));
      if (first && !leaving) {
        spdlog::info("cluster: member '{}' at {} is up ({} GPUs)", r.node_name(), call->address,
                     r.gpu_uuids_size());
      }
      continue;
    }
    const grpc::StatusCode code = call->status.error_code();
    // A TLS handshake that failed (a certificate of another CA, none, an expired one) is a
    // refusal, not an outage.
    const bool handshake = options_.tls.enabled() && code == grpc::StatusCode::UNAVAILABLE &&
                           (absl::StrContains(call->status.error_message(), "andshake") ||
                            absl::StrContains(call->status.error_message(), "CERTIFICATE"));
    const bool refused =
        code == grpc::StatusCode::UNAUTHENTICATED || code == grpc::StatusCode::PERMISSION_DENIED ||
        code == grpc::StatusCode::FAILED_PRECONDITION || code == grpc::StatusCode::UNIMPLEMENTED ||
        code == grpc::StatusCode::INVALID_ARGUMENT || handshake;
    // The peer's message is its text: quoted and cut before it reaches logs and Status.
    const std::string error =
        absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(code)), ": ",
                     EscapeForMessage(call->status.error_message(), 200));
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
  if (!joined_late_.has_value() && !leaving) {
    // Decided once, in the same critical section that shows the members up.
    bool any_up = false, any_held = false;
    for (const auto& [key, m] : members_) {
      if (m.shown.state() != "up") continue;
      any_up = true;
      any_held = any_held || m.shown.held_size() > 0 || m.shown.versions_size() > 0;
    }
    if (any_up) joined_late_ = any_held;
  }
}

std::optional<bool> Cluster::JoinedLate() const {
  absl::MutexLock lock(&mu_);
  return joined_late_;
}

void Cluster::MarkLeft(const std::string& node_name, const std::string& instance) {
  absl::MutexLock lock(&mu_);
  for (auto& [address, m] : members_) {
    if (m.shown.node_name() == node_name && m.shown.state() != "self") {
      m.shown.set_state("left");
      m.shown.clear_error();
      m.left_instance = instance;
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
  *self.mutable_held() = me.held();
  self.set_updating_version(me.updating());
  self.set_pulling_version(me.pulling());
  self.set_pull_received_bytes(me.pull_received_bytes());
  self.set_pull_total_bytes(me.pull_total_bytes());
  self.set_workers(me.workers());
  self.set_release(me.release());
  self.set_instance(instance_);
  self.set_protocol_version(kPeerProtocolVersion);
  self.set_backend(me.backend());
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

std::string Cluster::DataHost() const {
  auto listen = ParseListenAddress(options_.listen);
  if (listen.ok() && listen->host != "0.0.0.0" && listen->host != "::" && !listen->host.empty()) {
    return listen->host;
  }
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "localhost";
  return name;
}

absl::StatusOr<Cluster::PeerStub> Cluster::StubOf(const std::string& node_name) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [address, m] : members_) {
    if (m.shown.node_name() == node_name && m.shown.state() == "up") {
      return PeerStub{m.channel, m.stub};
    }
  }
  return absl::UnavailableError(
      absl::StrCat("member '", node_name, "' is not up (ckptctl cluster shows why)"));
}

namespace {

// A peer's text for our messages: printable ASCII kept as it is (quotes included), anything else
// escaped, cut at `max_bytes`.
std::string SafeText(absl::string_view text, size_t max_bytes) {
  std::string out;
  for (char ch : text.substr(0, max_bytes)) {
    if (ch >= 0x20 && ch < 0x7f) {
      out.push_back(ch);
    } else {
      out += EscapeForMessage(absl::string_view(&ch, 1), 8);
    }
  }
  if (text.size() > max_bytes) absl::StrAppend(&out, " ... (", text.size(), " bytes)");
  return out;
}

class GrpcMemberCall final : public Cluster::MemberCall {
 public:
  GrpcMemberCall(std::shared_ptr<v1::Peer::Stub> stub, std::string node_name, std::string secret,
                 bool tls)
      : stub_(std::move(stub)),
        node_name_(std::move(node_name)),
        tls_(tls),
        session_(std::move(secret), "MemberUpdate", PeerSession::Side::kCaller) {
    stream_ = stub_->MemberUpdate(&context_);
  }
  ~GrpcMemberCall() override {
    context_.TryCancel();
    if (stream_ != nullptr) stream_->Finish().ok();
  }
  absl::Status Write(const v1::MemberUpdateIn& in) override {
    v1::PeerEnvelope e;
    RETURN_IF_ERROR(session_.Seal(in, &e));
    if (!stream_->Write(e)) return Ended("sending to it");
    return absl::OkStatus();
  }
  absl::Status Read(v1::MemberUpdateOut* out, absl::string_view what) override {
    v1::PeerEnvelope e;
    if (!stream_->Read(&e)) return Ended(absl::StrCat("waiting for ", what));
    if (tls_ && !named_) {
      // The member answered over this connection: its certificate must name it.
      RETURN_IF_ERROR(PeerNamed(PeerCertificateNames(context_.auth_context().get()), node_name_,
                                absl::StrCat("member '", node_name_, "'")));
      named_ = true;
    }
    absl::Status s = session_.Open(e, out, what);
    if (!s.ok())
      return absl::Status(s.code(), absl::StrCat("member '", node_name_, "': ", s.message()));
    return absl::OkStatus();
  }
  void Cancel() override { context_.TryCancel(); }
  void Close(absl::Time deadline) override {
    if (stream_ == nullptr) return;
    stream_->WritesDone();
    absl::Notification ended;
    std::thread timer([&] {
      if (!ended.WaitForNotificationWithDeadline(deadline)) context_.TryCancel();
    });
    stream_->Finish().ok();  // its status was reported with its result already
    ended.Notify();
    timer.join();
    stream_.reset();
  }

 private:
  // The call ended: its status says why (the member's refusal, or the connection).
  absl::Status Ended(const std::string& doing) {
    grpc::Status s = stream_->Finish();
    stream_.reset();
    if (s.ok()) {
      return absl::AbortedError(
          absl::StrCat("member '", node_name_, "' ended the update while ", doing));
    }
    // The member's own messages begin with its name; others (the connection's) get it here.
    const std::string said = SafeText(s.error_message(), 600);
    const std::string prefix = absl::StrCat("member '", node_name_, "'");
    return absl::Status(
        static_cast<absl::StatusCode>(s.error_code()),
        absl::StartsWith(said, prefix) ? said : absl::StrCat(prefix, " (", doing, "): ", said));
  }

  const std::shared_ptr<v1::Peer::Stub> stub_;
  const std::string node_name_;
  const bool tls_;
  bool named_ = false;
  PeerSession session_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::PeerEnvelope, v1::PeerEnvelope>> stream_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Cluster::MemberCall>> Cluster::CallMemberUpdate(
    const std::string& node_name, absl::Time connect_by) {
  ASSIGN_OR_RETURN(PeerStub peer, StubOf(node_name));
  // Opening the call waits for a connection: bounded here (a member that stopped answering since
  // its last Hello, or whose connection is being made again, is named instead of delaying the
  // start past cluster_timeout).
  if (!peer.channel->WaitForConnected(
          absl::ToChronoTime(std::min(connect_by, absl::Now() + options_.timeout)))) {
    return absl::UnavailableError(
        absl::StrCat("member '", node_name, "' could not be connected to within cluster_timeout ",
                     absl::FormatDuration(options_.timeout)));
  }
  return std::unique_ptr<MemberCall>(std::make_unique<GrpcMemberCall>(
      std::move(peer.stub), node_name, options_.token, options_.tls.enabled()));
}

absl::StatusOr<v1::VersionManifestResponse> Cluster::CallVersionManifest(
    const std::string& node_name, const v1::VersionManifestRequest& request, absl::Time deadline) {
  ASSIGN_OR_RETURN(PeerStub peer, StubOf(node_name));
  PeerSession session(options_.token, "VersionManifest", PeerSession::Side::kCaller);
  v1::PeerEnvelope in, out;
  RETURN_IF_ERROR(session.Seal(request, &in));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + options_.timeout)));
  grpc::Status s = peer.stub->VersionManifest(&context, in, &out);
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                        absl::StrCat("the manifest of version ", request.version(), " at member '",
                                     node_name, "': ", EscapeForMessage(s.error_message(), 400)));
  }
  if (options_.tls.enabled()) {
    RETURN_IF_ERROR(PeerNamed(PeerCertificateNames(context.auth_context().get()), node_name,
                              absl::StrCat("member '", node_name, "'")));
  }
  v1::VersionManifestResponse response;
  RETURN_IF_ERROR(session.Open(out, &response, "the manifest answer"));
  return response;
}

absl::StatusOr<v1::RendezvousResponse> Cluster::CallRendezvous(const std::string& node_name,
                                                               const v1::RendezvousRequest& request,
                                                               absl::Time deadline) {
  ASSIGN_OR_RETURN(PeerStub peer, StubOf(node_name));
  const std::shared_ptr<v1::Peer::Stub>& stub = peer.stub;
  PeerSession session(options_.token, "Rendezvous", PeerSession::Side::kCaller);
  v1::PeerEnvelope in, out;
  RETURN_IF_ERROR(session.Seal(request, &in));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  grpc::Status s = stub->Rendezvous(&context, in, &out);
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                        absl::StrCat("rendezvous at member '", node_name,
                                     "': ", EscapeForMessage(s.error_message(), 400)));
  }
  if (options_.tls.enabled()) {
    RETURN_IF_ERROR(PeerNamed(PeerCertificateNames(context.auth_context().get()), node_name,
                              absl::StrCat("member '", node_name, "'")));
  }
  v1::RendezvousResponse response;
  RETURN_IF_ERROR(session.Open(out, &response, "the rendezvous answer"));
  return response;
}

}  // namespace ckpt::daemon
