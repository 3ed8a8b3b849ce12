// Proofs of the cluster's secret on the Peer API (docs/security.md, "Peer API"): the secret never
// crosses the network. A caller sends a fresh random nonce and HMAC-SHA256(secret, "request",
// nonce, its Hello fields); the callee checks it and answers with HMAC-SHA256(secret, "response",
// the same nonce, its answer's fields), which the caller checks: both sides prove the secret, and
// an answer cannot be replayed to another call or changed on the way.
#ifndef CKPT_DAEMON_CLUSTER_PEER_PROOF_H_
#define CKPT_DAEMON_CLUSTER_PEER_PROOF_H_

#include <initializer_list>
#include <string>

#include "absl/strings/string_view.h"
#include "proto/peer.pb.h"

namespace ckpt::daemon {

inline constexpr size_t kPeerNonceBytes = 16;

// kPeerNonceBytes random bytes (the kernel's random source).
std::string PeerNonce();

// The proofs over every field of the message except `proof` itself.
std::string RequestProof(absl::string_view secret, const v1::HelloRequest& request);
std::string ResponseProof(absl::string_view secret, absl::string_view nonce,
                          const v1::HelloResponse& response);

// HMAC-SHA256(secret, fields), each field framed by its length.
std::string ProofOver(absl::string_view secret, std::initializer_list<absl::string_view> fields);

// Equal in constant time (for equal sizes).
bool SameProof(absl::string_view a, absl::string_view b);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CLUSTER_PEER_PROOF_H_
