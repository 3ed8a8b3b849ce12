#include "daemon/cluster/peer_session.h"

#include "absl/strings/str_cat.h"
#include "daemon/cluster/peer_proof.h"

namespace ckpt::daemon {

PeerSession::PeerSession(std::string secret, std::string method, Side side)
    : secret_(std::move(secret)), method_(std::move(method)), side_(side) {}

std::string PeerSession::Proof(bool from_caller, uint64_t seq, absl::string_view body) const {
  const std::string number = absl::StrCat(seq);
  return ProofOver(secret_,
                   {"ckpt-engine peer envelope", method_, from_caller ? "caller" : "callee",
                    caller_nonce_, callee_nonce_, number, body});
}

absl::Status PeerSession::Seal(const google::protobuf::MessageLite& body,
                               v1::PeerEnvelope* envelope) {
  envelope->Clear();
  if (!body.SerializeToString(envelope->mutable_body())) {
    return absl::InternalError(absl::StrCat(method_, ": cannot serialize a message"));
  }
  const bool caller = side_ == Side::kCaller;
  if (sent_ == 0 && !insecure()) {
    std::string& mine = caller ? caller_nonce_ : callee_nonce_;
    mine = PeerNonce();
    envelope->set_nonce(mine);
  }
  if (!insecure()) envelope->set_proof(Proof(caller, sent_, envelope->body()));
  ++sent_;
  return absl::OkStatus();
}

absl::Status PeerSession::Open(const v1::PeerEnvelope& envelope,
                               google::protobuf::MessageLite* body, absl::string_view what) {
  const bool from_caller = side_ == Side::kCallee;
  if (!insecure()) {
    if (received_ == 0) {
      if (envelope.nonce().size() != kPeerNonceBytes) {
        return absl::UnauthenticatedError(
            absl::StrCat(method_, ": ", what,
                         " carries no nonce (a member without the cluster's "
                         "secret, or insecure_peers on one side only)"));
      }
      (from_caller ? caller_nonce_ : callee_nonce_) = envelope.nonce();
    } else if (!envelope.nonce().empty()) {
      return absl::UnauthenticatedError(
          absl::StrCat(method_, ": ", what, " carries a second nonce"));
    }
    if (!SameProof(envelope.proof(), Proof(from_caller, received_, envelope.body()))) {
      return absl::UnauthenticatedError(absl::StrCat(
          method_, ": ", what,
          " does not prove the cluster token (another cluster's member, or changed on the way)"));
    }
  }
  if (!body->ParseFromString(envelope.body())) {
    return absl::InvalidArgumentError(absl::StrCat(method_, ": ", what, " does not parse"));
  }
  ++received_;
  return absl::OkStatus();
}

}  // namespace ckpt::daemon
