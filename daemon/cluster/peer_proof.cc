#include "daemon/cluster/peer_proof.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace ckpt::daemon {
namespace {

// Each field as its length (8 bytes) and its bytes: no two field lists give the same text.
void Field(std::string* out, absl::string_view value) {
  const uint64_t n = value.size();
  out->append(reinterpret_cast<const char*>(&n), sizeof(n));
  out->append(value.data(), value.size());
}

void Field(std::string* out, uint64_t value) { Field(out, absl::StrCat(value)); }

std::string Mac(absl::string_view secret, const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
           reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest,
           &length) == nullptr) {
    return std::string();  // never equal to a real proof (SameProof needs equal sizes > 0)
  }
  return std::string(reinterpret_cast<const char*>(digest), length);
}

}  // namespace

std::string PeerNonce() {
  std::string nonce(kPeerNonceBytes, '\0');
  size_t got = 0;
  while (got < nonce.size()) {
    const ssize_t n = ::getrandom(nonce.data() + got, nonce.size() - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  return nonce;
}

std::string RequestProof(absl::string_view secret, const v1::HelloRequest& r) {
  std::string text;
  Field(&text, "ckpt-engine peer hello request");
  Field(&text, r.nonce());
  Field(&text, r.protocol_version());
  Field(&text, r.node_name());
  Field(&text, r.cluster_listen());
  Field(&text, r.instance());
  Field(&text, r.leaving() ? 1 : 0);
  return Mac(secret, text);
}

std::string ResponseProof(absl::string_view secret, absl::string_view nonce,
                          const v1::HelloResponse& r) {
  std::string text;
  Field(&text, "ckpt-engine peer hello response");
  Field(&text, nonce);
  Field(&text, r.protocol_version());
  Field(&text, r.node_name());
  Field(&text, r.release());
  Field(&text, r.backend());
  Field(&text, static_cast<uint64_t>(r.gpu_uuids_size()));
  for (const std::string& g : r.gpu_uuids()) Field(&text, g);
  Field(&text, static_cast<uint64_t>(r.versions_size()));
  for (uint64_t v : r.versions()) Field(&text, v);
  Field(&text, r.workers());
  Field(&text, r.leaving() ? 1 : 0);
  Field(&text, r.instance());
  if (r.held_size() > 0) {
    // Protocol 4 (sent only to callers of 4 or later): a proof without held is protocol 3's.
    Field(&text, "held");
    Field(&text, static_cast<uint64_t>(r.held_size()));
    for (const v1::HeldVersion& h : r.held()) {
      Field(&text, h.version());
      Field(&text, h.part_count());
      Field(&text, static_cast<uint64_t>(h.parts_size()));
      for (uint32_t p : h.parts()) Field(&text, p);
      Field(&text, h.tensor_count());
      Field(&text, h.total_bytes());
    }
  }
  if (r.updating() != 0) {
    Field(&text, "updating");
    Field(&text, r.updating());
  }
  if (r.pulling() != 0) {
    Field(&text, "pulling");
    Field(&text, r.pulling());
    Field(&text, r.pull_received_bytes());
    Field(&text, r.pull_total_bytes());
  }
  if (r.peers_size() > 0) {
    Field(&text, "peers");
    Field(&text, static_cast<uint64_t>(r.peers_size()));
    for (const std::string& p : r.peers()) Field(&text, p);
  }
  return Mac(secret, text);
}

std::string ProofOver(absl::string_view secret, std::initializer_list<absl::string_view> fields) {
  std::string text;
  for (absl::string_view f : fields) Field(&text, f);
  return Mac(secret, text);
}

bool SameProof(absl::string_view a, absl::string_view b) {
  return !a.empty() && a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace ckpt::daemon
