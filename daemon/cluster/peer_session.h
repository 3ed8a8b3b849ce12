// PeerSession: the proofs of one Peer API call that carries PeerEnvelopes (Rendezvous,
// MemberUpdate; docs/security.md, "Peer API").
//
// Every message travels as an envelope: the body (a serialized message) and HMAC-SHA256 over the
// method, the direction, both sides' nonces, the message's number in its direction and the body.
// The caller's first message carries its fresh nonce; on a stream the callee's first answer carries
// the callee's, and every later message in either direction is bound to both: a recorded stream
// cannot be replayed to a member (its answers name a nonce the recording lacks), a message cannot
// be moved, dropped or reordered unnoticed, and only what was proved is parsed. With insecure_peers
// the proofs are empty and not checked.
//
// Thread-safety: one sender and one receiver thread at a time (the sequence numbers are per
// direction).
#ifndef CKPT_DAEMON_CLUSTER_PEER_SESSION_H_
#define CKPT_DAEMON_CLUSTER_PEER_SESSION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message_lite.h"
#include "proto/peer.pb.h"

namespace ckpt::daemon {

class PeerSession {
 public:
  enum class Side { kCaller, kCallee };
  // `secret` empty: insecure (no proofs).
  PeerSession(std::string secret, std::string method, Side side);

  // Wraps `body` for the other side. The caller's first message gets a fresh nonce; so does the
  // callee's first message.
  absl::Status Seal(const google::protobuf::MessageLite& body, v1::PeerEnvelope* envelope);
  // Checks `envelope` (its proof, and for the other side's first message its nonce) and parses
  // its body into `body`. UNAUTHENTICATED or INVALID_ARGUMENT naming `what` on failure.
  absl::Status Open(const v1::PeerEnvelope& envelope, google::protobuf::MessageLite* body,
                    absl::string_view what);

  bool insecure() const { return secret_.empty(); }

 private:
  std::string Proof(bool from_caller, uint64_t seq, absl::string_view body) const;

  const std::string secret_;
  const std::string method_;
  const Side side_;
  std::string caller_nonce_;
  std::string callee_nonce_;
  uint64_t sent_ = 0;
  uint64_t received_ = 0;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CLUSTER_PEER_SESSION_H_
