// The cluster's names and addresses as configured (docs/cluster.md): node_name, and
// cluster_members, a static list of peers' Peer API addresses or a DNS name whose A/AAAA records
// are the members (a Kubernetes headless Service).
//
// Pure parsing and checking; nothing here resolves names or opens connections.
#ifndef CKPT_DAEMON_CLUSTER_MEMBERS_H_
#define CKPT_DAEMON_CLUSTER_MEMBERS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckpt::daemon {

// At most this many members may be listed (and, later, be resolved from DNS).
inline constexpr size_t kMaxClusterMembers = 1024;

struct PeerAddress {
  std::string host;  // a host name, an IPv4 address, or an IPv6 address without brackets
  int port = 0;      // 1..65535
  // "host:port", "[v6]:port": how gRPC and messages write it.
  std::string ToString() const;
  bool operator==(const PeerAddress& o) const { return host == o.host && port == o.port; }
};

struct ClusterMembers {
  std::vector<PeerAddress> addresses;  // the static list; empty with dns_name
  std::string dns_name;                // "dns:NAME:PORT": NAME
  int dns_port = 0;
  bool empty() const { return addresses.empty() && dns_name.empty(); }
};

// "" -> no members; "dns:NAME:PORT"; or "HOST:PORT,HOST:PORT,[V6]:PORT". INVALID_ARGUMENT saying
// what is wrong with which entry: a port outside 1..65535 (0 cannot be dialled), an empty entry,
// a bad host name, the same address twice, more than kMaxClusterMembers entries.
absl::StatusOr<ClusterMembers> ParseClusterMembers(absl::string_view text);

// "HOST:PORT" or "[V6]:PORT" with a port of 0..65535 (cluster_listen; 0 picks a free port).
absl::StatusOr<PeerAddress> ParseListenAddress(absl::string_view text);

// A node name: 1 to 63 characters of letters, digits, '.', '_' and '-', beginning and ending with
// a letter or digit (it orders the ranks and is checked against certificates' SANs). OK or
// INVALID_ARGUMENT saying why.
absl::Status CheckNodeName(absl::string_view name);

// A DNS name: labels of 1 to 63 letters, digits and '-' (not at either end), separated by '.', at
// most 253 characters in all.
bool ValidHostName(absl::string_view name);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CLUSTER_MEMBERS_H_
