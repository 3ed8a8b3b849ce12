// Cluster: this daemon's membership in a cluster (docs/cluster.md). It serves the Peer API on
// cluster_listen (a gRPC server of its own that serves only Peer) and calls every member it knows
// about once per round (Hello), so that each member knows who is up, unreachable, refused or left.
//
// Members come from cluster_members: the static list, or the A/AAAA records of a DNS name resolved
// again every round. A member whose address is this daemon's own (it answers with this process's
// instance id) is shown once, as "self". Every call proves the cluster's secret
// (cluster_token_file) or runs over TLS with the member's certificate (cluster_ca), or both, unless
// insecure_peers; and every call has a deadline of cluster_timeout.
//
// Thread-safety: every method may be called from any thread.
#ifndef CKPT_DAEMON_CLUSTER_CLUSTER_H_
#define CKPT_DAEMON_CLUSTER_CLUSTER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/cluster/members.h"
#include "daemon/cluster/peer_tls.h"
#include "daemon/cluster/rendezvous.h"
#include "proto/admin.pb.h"
#include "proto/peer.grpc.pb.h"

namespace grpc {
class Server;
}

namespace ckpt::daemon {

// The Peer API's version (HelloRequest.protocol_version); members whose versions differ by more
// than one refuse each other.
inline constexpr uint32_t kPeerProtocolVersion = 4;
// The first version that serves Rendezvous and MemberUpdate (cluster updates).
inline constexpr uint32_t kPeerClusterUpdateVersion = 2;
// The first version whose members upload too (MemberUpdateGo.uploader_ranks): with an older
// member in an update, the coordinator uploads every bucket.
inline constexpr uint32_t kPeerMultiUploadVersion = 3;
// The first version that takes part in a consistent switch (MemberUpdateStart.consistent).
inline constexpr uint32_t kPeerConsistentVersion = 3;
// The first version that knows versions in parts (HelloResponse.held, VersionManifest,
// ManifestPart.parts, MemberUpdateGo.bucket_roots).
inline constexpr uint32_t kPeerPartsVersion = 4;

// The member side of Peer.MemberUpdate: typed messages over proved envelopes (PeerSession).
class MemberUpdateStream {
 public:
  virtual ~MemberUpdateStream() = default;
  // False when the call ended (the coordinator went away or cancelled it); errors name `what`.
  virtual absl::Status Read(v1::MemberUpdateIn* in, absl::string_view what) = 0;
  virtual absl::Status Write(const v1::MemberUpdateOut& out) = 0;
  // The coordinator cancelled the call or its connection broke.
  virtual bool cancelled() const = 0;
  // Ends the call from this side (a Read or Write blocked on it returns); any thread.
  virtual void Cancel() = 0;
  // With TLS peers: OK when the caller's certificate names `node_name` (the coordinator it
  // claims to be), else UNAUTHENTICATED saying what it names. Without TLS: OK (the envelopes'
  // proofs hold the secret).
  virtual absl::Status CheckCaller(absl::string_view node_name) const = 0;
};
// Serves one MemberUpdate call (UpdateEngine::ServeMemberUpdate); its error ends the call.
using MemberUpdateHandler = std::function<absl::Status(MemberUpdateStream&)>;
// Serves a ReadTensors request (UpdateEngine::ServeReadTensors): `write` sends one chunk (false:
// the caller went away).
using ReadTensorsHandler = std::function<absl::Status(
    const v1::ReadTensorsRequest&, const std::function<bool(const v1::TensorChunk&)>& write)>;
// Answers a VersionManifest request (UpdateEngine::ServeVersionManifest).
using VersionManifestHandler =
    std::function<absl::StatusOr<v1::VersionManifestResponse>(const v1::VersionManifestRequest&)>;

struct ClusterOptions {
  std::string node_name;
  std::string listen;  // HOST:PORT (port 0 picks one)
  ClusterMembers members;
  std::string token;  // the cluster's secret; empty with TLS alone, or insecure
  PeerTls tls;        // enabled: the Peer API over TLS, members named by their certificates
  bool insecure = false;
  absl::Duration timeout = absl::Seconds(30);
  // The interface the collectives use (GlooGroup::Options::interface); empty: DataHost().
  std::string data_interface;
  // Time between rounds of Hello calls.
  absl::Duration interval = absl::Seconds(2);
};

class Cluster {
 public:
  // What this member says about itself in a Hello answer (backend, GPUs, versions, workers,
  // release); asked at every call.
  using SelfInfo = std::function<v1::HelloResponse()>;

  // Binds cluster_listen, serves Peer, and starts the rounds. Errors name the address.
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(ClusterOptions options, SelfInfo self,
                                                        MemberUpdateHandler member_update);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Stopping cleanly: tells every member that is up (so they show this one as left, within
  // `deadline`), then stops the rounds and the Peer server. Idempotent.
  void Stop(absl::Time deadline);

  // The Peer API's address as bound ("127.0.0.1:41234").
  const std::string& address() const { return address_; }
  const std::string& node_name() const { return options_.node_name; }
  // Itself first, then the members by address.
  std::vector<v1::ClusterMember> Members() const;
  const std::string& instance() const { return instance_; }
  absl::Duration timeout() const { return options_.timeout; }
  // Where this member's collectives listen: cluster_listen's host, or the host name when it is a
  // wildcard address.
  std::string DataHost() const;
  const std::string& data_interface() const { return options_.data_interface; }

  // The coordinator's side of Peer.MemberUpdate with the member `node_name` (up).
  class MemberCall {
   public:
    virtual ~MemberCall() = default;
    virtual absl::Status Write(const v1::MemberUpdateIn& in) = 0;
    // Errors name the member and `what`; the call's own status when it ended.
    virtual absl::Status Read(v1::MemberUpdateOut* out, absl::string_view what) = 0;
    // Ends the call at once (the member sees it cancelled); any thread.
    virtual void Cancel() = 0;
    // Ends the call from this side and waits (until `deadline`, then cancels) for the member to
    // end it, so that what was written reaches it.
    virtual void Close(absl::Time deadline) = 0;
  };
  // Waits for a connection to it until `connect_by` (at most cluster_timeout): UNAVAILABLE naming
  // it when none came.
  absl::StatusOr<std::unique_ptr<MemberCall>> CallMemberUpdate(
      const std::string& node_name, absl::Time connect_by = absl::InfiniteFuture());
  // Peer.Rendezvous at the member `node_name`.
  absl::StatusOr<v1::RendezvousResponse> CallRendezvous(const std::string& node_name,
                                                        const v1::RendezvousRequest& request,
                                                        absl::Time deadline);
  // The rendezvous this member serves while it coordinates an update that creates a
  // communicator.
  RendezvousStore& rendezvous() { return rendezvous_; }

  // Peer.VersionManifest at the member `node_name` (up): one page.
  absl::StatusOr<v1::VersionManifestResponse> CallVersionManifest(
      const std::string& node_name, const v1::VersionManifestRequest& request, absl::Time deadline);
  // What serves VersionManifest here (unset: UNIMPLEMENTED), and what runs on the rounds' thread
  // after every round (a member's catalog of the parts the others hold). Set once, before use.
  void SetVersionManifestHandler(VersionManifestHandler handler);
  void SetReadTensorsHandler(ReadTensorsHandler handler);
  // Peer.ReadTensors at the member `node_name` (up): `on_chunk` for each chunk, in order (its
  // error ends the call); the call ends by `deadline`. Errors name the member.
  // The call is also ended when no chunk came for `idle` (a holder that stalls), or once
  // `stop()` holds (polled every 100 ms).
  absl::Status CallReadTensors(const std::string& node_name, const v1::ReadTensorsRequest& request,
                               absl::Time deadline, absl::Duration idle,
                               const std::function<bool()>& stop,
                               const std::function<absl::Status(const v1::TensorChunk&)>& on_chunk);
  void SetAfterRound(std::function<void()> after_round);
  // Whether this member joined late: at the first round that found another member up, one of
  // them held a version (a member that joins a running cluster, or restarts in one); nullopt
  // until a round found one up.
  std::optional<bool> JoinedLate() const;

 private:
  class PeerService;
  struct Member {
    PeerAddress address;
    v1::ClusterMember shown;
    std::shared_ptr<grpc::Channel> channel;
    std::shared_ptr<v1::Peer::Stub> stub;
    // The process that said goodbye from this address: its late answers do not make it up again
    // (a restarted member has another instance id).
    std::string left_instance;
    // Not in cluster_members: learned from a proved Hello of its own, or from another member's
    // answer (scale-out). Forgotten once it has not answered for kForgetLearned.
    bool learned = false;
    absl::Time last_answer = absl::InfinitePast();
  };
  // A learned member that has not answered for this long is forgotten (a node scaled in).
  static constexpr absl::Duration kForgetLearned = absl::Minutes(10);
  // Adds `address` as a learned member unless it is known (or the list is full). `how`: for the
  // log line.
  void LearnLocked(const PeerAddress& address, const std::string& how)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Cluster(ClusterOptions options, SelfInfo self, MemberUpdateHandler member_update);
  // The channel and stub of the member `node_name` while it is up.
  struct PeerStub {
    std::shared_ptr<grpc::Channel> channel;
    std::shared_ptr<v1::Peer::Stub> stub;
  };
  absl::StatusOr<PeerStub> StubOf(const std::string& node_name) const;
  void Loop();
  // One round: resolve the members, call each (in parallel, each call until cluster_timeout or
  // `deadline`), record the answers. `leaving`: tell the members that are up that this one stops.
  void Round(bool leaving, absl::Time deadline);
  // From the Peer service: a proved caller of protocol 4 that this member does not know, reachable
  // at `address` (scale-out).
  void LearnCaller(const PeerAddress& address, const std::string& node_name,
                   const std::string& instance);
  // The addresses of the members that are up (a Hello answer's peers), but the one of process
  // `caller` (its own address, as this member dials it).
  std::vector<std::string> UpPeers(const std::string& caller) const;
  std::vector<PeerAddress> Resolve(std::string* error) const;
  // From the Peer service: the member `node_name` (process `instance`) said it is leaving.
  void MarkLeft(const std::string& node_name, const std::string& instance);

  const ClusterOptions options_;
  const SelfInfo self_;
  const MemberUpdateHandler member_update_;
  RendezvousStore rendezvous_;
  const std::string instance_;
  std::string address_;
  std::unique_ptr<PeerService> service_;
  std::unique_ptr<grpc::Server> server_;
  // Of every channel to a member: made once (with TLS, one watcher of the certificate files).
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials_;

  absl::Mutex hooks_mu_;
  VersionManifestHandler manifest_handler_ ABSL_GUARDED_BY(hooks_mu_);
  ReadTensorsHandler read_handler_ ABSL_GUARDED_BY(hooks_mu_);
  std::function<void()> after_round_ ABSL_GUARDED_BY(hooks_mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);  // by address
  // Addresses found to be a second address of a member known already (or of this one): not
  // learned again before the time given.
  std::map<std::string, absl::Time> aliases_ ABSL_GUARDED_BY(mu_);
  std::string resolve_error_ ABSL_GUARDED_BY(mu_);
  std::optional<bool> joined_late_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  // Runs after_round_ after each round, on its own thread, so that a slow peer it calls never
  // delays the rounds (nor Stop's goodbye); a round that ends while it runs is not queued twice.
  void AfterRounds();
  bool after_pending_ ABSL_GUARDED_BY(hooks_mu_) = false;
  bool after_stop_ ABSL_GUARDED_BY(hooks_mu_) = false;
  std::thread after_thread_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CLUSTER_CLUSTER_H_
