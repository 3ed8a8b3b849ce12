#include "daemon/cluster/members.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "daemon/cluster/cluster_token.h"
#include "daemon/cluster/peer_proof.h"

namespace ckpt::daemon {
namespace {

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string Error(absl::string_view text) {
  auto m = ParseClusterMembers(text);
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().code() == absl::StatusCode::kInvalidArgument);
  return std::string(m.status().message());
}

TEST_CASE("a static member list: host names, IPv4, bracketed IPv6, spaces around commas") {
  auto m = ParseClusterMembers(" node-1.example:7071, 10.0.0.5:7071 ,[fd00::1]:7072 ");
  REQUIRE(m.ok());
  REQUIRE(m->addresses.size() == 3);
  CHECK(m->dns_name.empty());
  CHECK(m->addresses[0].host == "node-1.example");
  CHECK(m->addresses[0].port == 7071);
  CHECK(m->addresses[1].ToString() == "10.0.0.5:7071");
  CHECK(m->addresses[2].host == "fd00::1");
  CHECK(m->addresses[2].ToString() == "[fd00::1]:7072");
  CHECK(ParseClusterMembers("")->empty());
  CHECK(ParseClusterMembers("   ")->empty());
}

TEST_CASE("dns:NAME:PORT names a headless service") {
  auto m = ParseClusterMembers("dns:ckpt.inference.svc.cluster.local:7071");
  REQUIRE(m.ok());
  CHECK(m->addresses.empty());
  CHECK(m->dns_name == "ckpt.inference.svc.cluster.local");
  CHECK(m->dns_port == 7071);
  CHECK(Contains(Error("dns:ckpt.svc"), "dns:NAME:PORT"));
  CHECK(Contains(Error("dns:-bad-.svc:7071"), "not a valid DNS name"));
  CHECK(Contains(Error("dns:ok.svc:0"), "1 to 65535"));
  CHECK(Contains(Error("dns:ok.svc:65536"), "1 to 65535"));
}

TEST_CASE("bad member lists name the entry and what is wrong") {
  CHECK(Contains(Error("a:1,,b:2"), "entry 2 is empty"));
  CHECK(Contains(Error("a:1,"), "entry 2 is empty"));
  CHECK(Contains(Error("node-1"), "expected HOST:PORT"));
  CHECK(Contains(Error(":7071"), "expected HOST:PORT"));
  CHECK(Contains(Error("node-1:0"), "from 1 to 65535"));  // port 0 cannot be dialled
  CHECK(Contains(Error("node-1:99999"), "from 1 to 65535"));
  CHECK(Contains(Error("node-1:12ab"), "from 1 to 65535"));
  CHECK(Contains(Error("node-1:+80"), "from 1 to 65535"));  // digits only
  CHECK(Contains(Error("node-1:0080000"), "from 1 to 65535"));
  CHECK(Contains(Error("dns:ok.svc:+80"), "1 to 65535"));
  CHECK(Contains(Error("fd00::1:7071"), "brackets"));
  CHECK(Contains(Error("[fd00::1]7071"), "brackets"));
  CHECK(Contains(Error("[not-v6]:7071"), "not an IPv6 address"));
  CHECK(Contains(Error("no_underscores:7071"), "neither an IPv4 address nor a host name"));
  CHECK(Contains(Error("a:1,b:2,a:1"), "entry 3 a:1 is listed twice"));
  CHECK(Contains(Error(std::string(300, 'x') + ":1"), "neither"));
  std::string many;
  for (size_t i = 0; i <= kMaxClusterMembers; ++i) {
    many += (i ? "," : "") + std::string("h") + std::to_string(i) + ":1";
  }
  CHECK(Contains(Error(many), "more than 1024 members"));
  // Control bytes are quoted, not echoed raw into logs.
  CHECK_FALSE(Contains(Error(std::string("a\n:1")), "\n"));
}

TEST_CASE("listen addresses allow port 0") {
  auto a = ParseListenAddress("127.0.0.1:0");
  REQUIRE(a.ok());
  CHECK(a->port == 0);
  CHECK(ParseListenAddress("[::]:7071").ok());
  CHECK_FALSE(ParseListenAddress("127.0.0.1").ok());
  CHECK_FALSE(ParseListenAddress("127.0.0.1:65536").ok());
}

TEST_CASE("node names") {
  CHECK(CheckNodeName("gpu-node-01").ok());
  CHECK(CheckNodeName("a").ok());
  CHECK(CheckNodeName("n1.rack_2").ok());
  CHECK_FALSE(CheckNodeName("").ok());
  CHECK_FALSE(CheckNodeName("-a").ok());
  CHECK_FALSE(CheckNodeName("a.").ok());
  CHECK_FALSE(CheckNodeName("a b").ok());
  CHECK_FALSE(CheckNodeName("a/b").ok());
  CHECK_FALSE(CheckNodeName(std::string(64, 'a')).ok());
  CHECK(CheckNodeName(std::string(63, 'a')).ok());
}

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/token.XXXXXX";
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& text, mode_t mode) {
    const std::string p = path_ + "/" + name;
    std::ofstream(p) << text;
    REQUIRE(::chmod(p.c_str(), mode) == 0);
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST_CASE("the cluster token file") {
  TempDir dir;
  const std::string secret(40, 'k');
  SECTION("one line, comments and blank lines around it") {
    auto t =
        ReadClusterToken(dir.Write("t", "# the cluster's secret\n\n  " + secret + "  \n", 0600));
    REQUIRE(t.ok());
    CHECK(*t == secret);
    CHECK(ReadClusterToken(dir.Write("r", secret, 0400)).ok());
  }
  SECTION("refused, naming the file but never the secret") {
    auto check = [&](const std::string& path, const std::string& part, absl::StatusCode code) {
      auto t = ReadClusterToken(path);
      REQUIRE_FALSE(t.ok());
      INFO(t.status().message());
      CHECK(t.status().code() == code);
      CHECK(Contains(std::string(t.status().message()), part));
      CHECK(Contains(std::string(t.status().message()), path));
      CHECK_FALSE(Contains(std::string(t.status().message()), secret));
    };
    using C = absl::StatusCode;
    check(dir.Write("g", secret, 0640), "chmod 600", C::kFailedPrecondition);
    check(dir.Write("o", secret, 0604), "mode 0604", C::kFailedPrecondition);
    check(dir.path() + "/missing", "No such file", C::kFailedPrecondition);
    check(dir.path(), "not a regular file", C::kFailedPrecondition);
    const std::string target = dir.Write("target", secret, 0600);
    const std::string link = dir.path() + "/link";
    REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
    check(link, "a symbolic link, which is not followed", C::kFailedPrecondition);  // ELOOP
    check(dir.Write("short", std::string(31, 'k'), 0600), "31 characters", C::kInvalidArgument);
    check(dir.Write("two", secret + "\n" + secret + "x\n", 0600), "a second token",
          C::kInvalidArgument);
    check(dir.Write("space", std::string(20, 'k') + " " + std::string(20, 'k'), 0600), "printable",
          C::kInvalidArgument);
    check(dir.Write("empty", "# nothing\n\n", 0600), "holds no secret", C::kInvalidArgument);
    check(dir.Write("big", std::string(5000, 'k'), 0600), "at most 4096", C::kInvalidArgument);
    check(dir.Write("long", std::string(1025, 'k'), 0600), "1025 characters", C::kInvalidArgument);
  }
}

TEST_CASE("peer proofs bind the secret, the nonce and every field") {
  const std::string secret(40, 's');
  v1::HelloRequest r;
  r.set_protocol_version(1);
  r.set_node_name("alpha");
  r.set_cluster_listen("10.0.0.1:7071");
  r.set_instance("abc");
  r.set_nonce(PeerNonce());
  CHECK(r.nonce().size() == kPeerNonceBytes);
  CHECK(PeerNonce() != r.nonce());
  const std::string proof = RequestProof(secret, r);
  CHECK(proof.size() == 32);  // HMAC-SHA256
  CHECK(SameProof(proof, RequestProof(secret, r)));
  CHECK_FALSE(SameProof(proof, RequestProof(std::string(40, 't'), r)));
  CHECK_FALSE(SameProof("", ""));
  for (int field = 0; field < 5; ++field) {
    v1::HelloRequest changed = r;
    if (field == 0) changed.set_node_name("alphb");
    if (field == 1) changed.set_leaving(true);
    if (field == 2) changed.set_instance("abd");
    if (field == 3) changed.set_nonce(PeerNonce());
    if (field == 4) changed.set_cluster_listen("10.0.0.1:7072");
    INFO("field " << field);
    CHECK_FALSE(SameProof(proof, RequestProof(secret, changed)));
  }
  // Length-prefixed fields: moving bytes between two fields changes the proof.
  v1::HelloRequest shifted = r;
  shifted.set_node_name("alph");
  shifted.set_cluster_listen("a10.0.0.1:7071");
  CHECK_FALSE(SameProof(proof, RequestProof(secret, shifted)));

  v1::HelloResponse a;
  a.set_node_name("beta");
  a.add_versions(7);
  const std::string answer = ResponseProof(secret, r.nonce(), a);
  CHECK(SameProof(answer, ResponseProof(secret, r.nonce(), a)));
  CHECK_FALSE(SameProof(answer, ResponseProof(secret, PeerNonce(), a)));  // not replayable
  v1::HelloResponse more = a;
  more.add_versions(8);
  CHECK_FALSE(SameProof(answer, ResponseProof(secret, r.nonce(), more)));
  v1::HelloResponse gone = a;
  gone.set_leaving(true);
  CHECK_FALSE(SameProof(answer, ResponseProof(secret, r.nonce(), gone)));
}

}  // namespace
}  // namespace ckpt::daemon
