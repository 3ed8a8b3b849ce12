// Cluster: this daemon's membership in a cluster (docs/cluster.md). It serves the Peer API on
// cluster_listen (a gRPC server of its own that serves only Peer) and calls every member it knows
// about once per round (Hello), so that each member knows who is up, unreachable, refused or left.
//
// Members come from cluster_members: the static list, or the A/AAAA records of a DNS name resolved
// again every round. A member whose address is this daemon's own (it answers with this process's
// instance id) is shown once, as "self". Every call carries the cluster's secret as a bearer token
// (unless insecure_peers) and a deadline of cluster_timeout.
//
// Thread-safety: every method may be called from any thread.
#ifndef CKPT_DAEMON_CLUSTER_CLUSTER_H_
#define CKPT_DAEMON_CLUSTER_CLUSTER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/cluster/members.h"
#include "proto/admin.pb.h"
#include "proto/peer.grpc.pb.h"

namespace grpc {
class Server;
}

namespace ckpt::daemon {

// The Peer API's version (HelloRequest.protocol_version); members whose versions differ by more
// than one refuse each other.
inline constexpr uint32_t kPeerProtocolVersion = 1;

struct ClusterOptions {
  std::string node_name;
  std::string listen;  // HOST:PORT (port 0 picks one)
  ClusterMembers members;
  std::string token;  // the cluster's secret; empty only with insecure
  bool insecure = false;
  absl::Duration timeout = absl::Seconds(30);
  // Time between rounds of Hello calls.
  absl::Duration interval = absl::Seconds(2);
};

class Cluster {
 public:
  // What this member says about itself in a Hello answer (backend, GPUs, versions, workers,
  // release); asked at every call.
  using SelfInfo = std::function<v1::HelloResponse()>;

  // Binds cluster_listen, serves Peer, and starts the rounds. Errors name the address.
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(ClusterOptions options, SelfInfo self);
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

 private:
  class PeerService;
  struct Member {
    PeerAddress address;
    v1::ClusterMember shown;
    std::unique_ptr<v1::Peer::Stub> stub;
    // The process that said goodbye from this address: its late answers do not make it up again
    // (a restarted member has another instance id).
    std::string left_instance;
  };

  Cluster(ClusterOptions options, SelfInfo self);
  void Loop();
  // One round: resolve the members, call each (in parallel, each call until cluster_timeout or
  // `deadline`), record the answers. `leaving`: tell the members that are up that this one stops.
  void Round(bool leaving, absl::Time deadline);
  std::vector<PeerAddress> Resolve(std::string* error) const;
  // From the Peer service: the member `node_name` (process `instance`) said it is leaving.
  void MarkLeft(const std::string& node_name, const std::string& instance);

  const ClusterOptions options_;
  const SelfInfo self_;
  const std::string instance_;
  std::string address_;
  std::unique_ptr<PeerService> service_;
  std::unique_ptr<grpc::Server> server_;

  mutable absl::Mutex mu_;
  std::map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);  // by address
  std::string resolve_error_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CLUSTER_CLUSTER_H_
