#include "daemon/cluster/peer_tls.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/message_text.h"

namespace ckpt::daemon {
namespace {

// Certificates and keys are small; a larger file is not one.
constexpr size_t kMaxPemBytes = 1 << 20;
// How often the files are looked at again (certificate rotation).
constexpr int kRefreshSeconds = 10;

absl::Status ReadPem(const std::string& path, const char* key, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(key, " ", path, ": cannot be read"));
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (out->size() > kMaxPemBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " ", path, ": larger than ", kMaxPemBytes, " bytes"));
  }
  if (out->find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(key, " ", path, ": not PEM"));
  }
  return absl::OkStatus();
}

std::string OpensslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown error";
  char text[256] = {};
  ERR_error_string_n(e, text, sizeof(text));
  return text;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};
struct StackFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
struct NamesFree {
  void operator()(GENERAL_NAMES* n) const { GENERAL_NAMES_free(n); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Cert = std::unique_ptr<X509, X509Free>;

Bio MemoryBio(const std::string& text) {
  return Bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Every certificate in `pem`, in order.
std::vector<Cert> Certificates(const std::string& pem) {
  std::vector<Cert> out;
  Bio bio = MemoryBio(pem);
  while (bio != nullptr) {
    Cert c(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (c == nullptr) break;
    out.push_back(std::move(c));
  }
  ERR_clear_error();  // the end of the file reads as an error
  return out;
}

// The DNS subject alternative names of `cert` (what PeerCertificateNames sees of a peer).
std::vector<std::string> AltNames(X509* cert) {
  std::vector<std::string> out;
  std::unique_ptr<GENERAL_NAMES, NamesFree> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (names == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names.get(), i);
    if (n->type != GEN_DNS) continue;
    const ASN1_IA5STRING* text = n->d.dNSName;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(text)),
                     static_cast<size_t>(ASN1_STRING_length(text)));
  }
  return out;
}

std::string QuotedNames(const std::vector<std::string>& names) {
  if (names.empty()) return "no subject alternative names";
  std::vector<std::string> quoted;
  for (size_t i = 0; i < names.size() && i < 8; ++i)
    quoted.push_back(QuoteForMessage(names[i], 64));
  std::string out = absl::StrJoin(quoted, ", ");
  if (names.size() > 8) absl::StrAppend(&out, " and ", names.size() - 8, " more");
  return out;
}

std::shared_ptr<grpc::experimental::CertificateProviderInterface> Provider(const PeerTls& tls) {
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key, tls.cert, tls.ca, kRefreshSeconds);
}

}  // namespace

absl::Status CheckPeerTls(const PeerTls& tls, absl::string_view node_name) {
  std::string cert_pem, key_pem, ca_pem;
  if (absl::Status s = ReadPem(tls.cert, "tls_cert", &cert_pem); !s.ok()) return s;
  if (absl::Status s = ReadPem(tls.key, "tls_key", &key_pem); !s.ok()) return s;
  if (absl::Status s = ReadPem(tls.ca, "cluster_ca", &ca_pem); !s.ok()) return s;
  std::vector<Cert> chain = Certificates(cert_pem);
  if (chain.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tls_cert ", tls.cert, ": no certificate"));
  }
  std::vector<Cert> cas = Certificates(ca_pem);
  if (cas.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cluster_ca ", tls.ca, ": no certificate"));
  }
  Bio key_bio = MemoryBio(key_pem);
  // No pass phrase is asked for (a daemon has no terminal to ask on): an encrypted key fails.
  pem_password_cb* no_pass_phrase = [](char*, int, int, void*) { return 0; };
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, no_pass_phrase, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("tls_key ", tls.key,
                                                   ": no unencrypted private key (", OpensslError(),
                                                   "; keys with a pass phrase are not supported)"));
  }
  if (X509_check_private_key(chain[0].get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("tls_key ", tls.key, " is not the key of tls_cert ", tls.cert));
  }
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  for (const Cert& ca : cas) X509_STORE_add_cert(store.get(), ca.get());
  // An intermediate CA as cluster_ca is a trust anchor, as in the handshake.
  X509_STORE_set_flags(store.get(), X509_V_FLAG_PARTIAL_CHAIN);
  std::unique_ptr<STACK_OF(X509), StackFree> intermediates(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) {
    X509_up_ref(chain[i].get());
    sk_X509_push(intermediates.get(), chain[i].get());
  }
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (ctx == nullptr ||
      X509_STORE_CTX_init(ctx.get(), store.get(), chain[0].get(), intermediates.get()) != 1) {
    return absl::InternalError(absl::StrCat("checking tls_cert: ", OpensslError()));
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    const int e = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "tls_cert ", tls.cert, " does not verify against cluster_ca ", tls.ca, ": ",
        X509_verify_cert_error_string(e), " (the other members would refuse this one)"));
  }
  // Members present it both as TLS servers and as clients.
  if (X509_check_purpose(chain[0].get(), X509_PURPOSE_SSL_SERVER, 0) != 1 ||
      X509_check_purpose(chain[0].get(), X509_PURPOSE_SSL_CLIENT, 0) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "tls_cert ", tls.cert,
        " does not allow both TLS server and client use (extendedKeyUsage needs serverAuth and "
        "clientAuth, or none): members present it both ways"));
  }
  const std::vector<std::string> names = AltNames(chain[0].get());
  if (std::find(names.begin(), names.end(), node_name) == names.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls_cert ", tls.cert, " names ", QuotedNames(names),
                     " in its subject alternative names, "
                     "not this member's node_name ",
                     QuoteForMessage(node_name, 64), " (the other members would refuse this one)"));
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> PeerServerCredentials(const PeerTls& tls) {
  grpc::experimental::TlsServerCredentialsOptions options(Provider(tls));
  options.watch_identity_key_cert_pairs();
  options.watch_root_certs();
  options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> PeerChannelCredentials(const PeerTls& tls) {
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(Provider(tls));
  options.watch_identity_key_cert_pairs();
  options.watch_root_certs();
  options.set_verify_server_certs(true);  // the chain, against cluster_ca
  // Members are reached by address: the name is checked after the handshake (PeerNamed).
  options.set_certificate_verifier(std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  options.set_check_call_host(false);
  return grpc::experimental::TlsCredentials(options);
}

std::vector<std::string> PeerCertificateNames(const grpc::AuthContext* auth) {
  std::vector<std::string> out;
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return out;
  // DNS names only: an IP or URI SAN that reads like a node name names no member.
  for (const grpc::string_ref& san : auth->FindPropertyValues(GRPC_PEER_DNS_PROPERTY_NAME)) {
    out.emplace_back(san.data(), san.size());
  }
  return out;
}

absl::Status PeerNamed(const std::vector<std::string>& names, absl::string_view node_name,
                       absl::string_view who) {
  if (std::find(names.begin(), names.end(), node_name) != names.end()) return absl::OkStatus();
  return absl::UnauthenticatedError(absl::StrCat(
      "the certificate of ", who, " names ", QuotedNames(names),
      " in its subject alternative names, not its node_name ", QuoteForMessage(node_name, 64)));
}

}  // namespace ckpt::daemon
