// PeerTls: the Peer API over TLS (cluster_ca; docs/security.md, "Peer API"). Every member serves
// and calls with its own certificate (tls_cert, tls_key), both directions verified against
// cluster_ca; members are often reached by IP, so no host name is checked in the handshake:
// instead each side checks, after the handshake, that the other's certificate names the
// node_name it claims in its subject alternative names (PeerNamed).
//
// Thread-safety: the functions are pure or read files; the credentials they build are gRPC's.
#ifndef CKPT_DAEMON_CLUSTER_PEER_TLS_H_
#define CKPT_DAEMON_CLUSTER_PEER_TLS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace grpc {
class AuthContext;
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace ckpt::daemon {

struct PeerTls {
  std::string cert;  // PEM chain of this member (tls_cert)
  std::string key;   // its private key (tls_key)
  std::string ca;    // the members' CA (cluster_ca)
  bool enabled() const { return !ca.empty(); }
};

// At start-up: the three files are readable PEM, the key is the certificate's, cluster_ca signed
// the certificate, and one of its subject alternative names is `node_name`; otherwise an error
// saying which (peers would refuse this member).
absl::Status CheckPeerTls(const PeerTls& tls, absl::string_view node_name);

// Credentials of the Peer server (client certificates required, verified against cluster_ca) and
// of the channels to members (this member's certificate; the server's verified against
// cluster_ca, its name checked by PeerNamed). The files are re-read when they change (rotation).
std::shared_ptr<grpc::ServerCredentials> PeerServerCredentials(const PeerTls& tls);
std::shared_ptr<grpc::ChannelCredentials> PeerChannelCredentials(const PeerTls& tls);

// The DNS subject alternative names of the other side's verified certificate (empty when there
// is none: not TLS, or not verified). IP and URI SANs name no member.
std::vector<std::string> PeerCertificateNames(const grpc::AuthContext* auth);

// OK when `names` hold `node_name`; else UNAUTHENTICATED saying what the certificate of `who`
// names instead.
absl::Status PeerNamed(const std::vector<std::string>& names, absl::string_view node_name,
                       absl::string_view who);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CLUSTER_PEER_TLS_H_
