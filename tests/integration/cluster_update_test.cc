// Cluster updates between real daemons on 127.0.0.1, host backend (docs/cluster.md, "The cluster
// update"): a version pushed to one member reaches every worker of every member bit-exact, through
// one Gloo broadcast per bucket; a member killed or stopped mid-update ends the update on every
// other member within the deadline, naming it, and the next update without it works.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <future>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "common/dtype.h"
#include "daemon/cluster/cluster.h"
#include "daemon/cluster/peer_tls.h"
#include "proto/peer.grpc.pb.h"
#include "tests/testing/pki.h"
#include "tests/testing/state_dict.h"
#include "tests/testing/subprocess.h"

namespace ckpt {
namespace {

using testing::DaemonProcess;
using testing::Runfile;
using testing::RunResult;
using testing::StateDict;
using testing::Subprocess;
using testing::TempDir;
using testing::WaitUntil;
using namespace std::chrono_literals;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Several buckets (64 KiB each) and both slots; dtypes of every size.
StateDict Model(uint32_t seed) {
  StateDict m;
  m.Add("model.embed_tokens.weight", DType::kBfloat16, {128, 200}, seed + 1);
  for (int layer = 0; layer < 3; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    m.Add(p + "self_attn.q_proj.weight", DType::kBfloat16, {96, 96}, seed + 10 * layer + 2);
    m.Add(p + "self_attn.v_proj.weight", DType::kFloat32, {32, 96}, seed + 10 * layer + 4);
    m.Add(p + "mlp.down_proj.weight", DType::kFloat8E4m3fn, {96, 160}, seed + 10 * layer + 6);
  }
  // Larger than a bucket: split into pieces.
  m.Add("lm_head.weight", DType::kFloat32, {256, 96}, seed + 97);
  m.Add("scalar.step", DType::kInt64, {}, seed + 99);
  return m;
}

struct Member {
  std::string name;
  std::string address;
  std::unique_ptr<DaemonProcess> daemon;
};

// A worker_client attached to one member.
struct Worker {
  Worker(const DaemonProcess& d, const TempDir& dir, const std::string& name,
         std::vector<std::string> extra = {})
      : out(dir / (name + ".json")), ready(dir / (name + ".ready")) {
    std::vector<std::string> argv = {Runfile("tests/integration/worker_client"),
                                     "--socket",
                                     d.socket,
                                     "--out",
                                     out,
                                     "--ready",
                                     ready,
                                     "--engine",
                                     "cluster-test",
                                     "--verify-checksums"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<Subprocess>(argv);
  }
  void WaitAttached() {
    INFO("worker stderr: " << proc->Stderr());
    REQUIRE(WaitUntil([&] { return Exists(ready) || !proc->running(); }, 30s));
    REQUIRE(Exists(ready));
  }
  nlohmann::json Report(uint64_t version) {
    auto report = testing::WaitForWorkerReport(out, version, 30s);
    INFO("worker stderr: " << proc->Stderr());
    REQUIRE(report.has_value());
    return *report;
  }
  std::string out, ready;
  std::unique_ptr<Subprocess> proc;
};

// How member `i` proves itself to the others, and any flags of its own (a --host-memory-budget
// replaces the default 32MiB); the default: the shared secret `token`.
using MemberAuth = std::function<std::vector<std::string>(int i, const std::string& token)>;

struct Cluster {
  explicit Cluster(int n, const std::string& timeout = "3s", std::vector<std::string> extra = {},
                   MemberAuth auth = nullptr) {
    token = dir / "token";
    std::ofstream(token) << std::string(40, 'k') << "\n";
    REQUIRE(::chmod(token.c_str(), 0600) == 0);
    if (!auth) {
      auth = [](int, const std::string& token) {
        return std::vector<std::string>{"--cluster-token-file", token};
      };
    }
    const std::vector<int> ports = testing::FreeLoopbackPorts(n);
    std::string list;
    members.resize(n);
    for (int i = 0; i < n; ++i) {
      members[i].name = "node-" + std::to_string(i);
      members[i].address = "127.0.0.1:" + std::to_string(ports[i]);
      list += (list.empty() ? "" : ",") + members[i].address;
    }
    for (Member& m : members) {
      // clang-format off
      std::vector<std::string> args = {
          "--backend", "host", "--bucket-bytes", "64KiB",
          "--node-name", m.name, "--cluster-listen", m.address, "--cluster-members", list,
          "--cluster-timeout", timeout, "--ack-timeout", "5s", "--log-level", "info"};
      // clang-format on
      const std::vector<std::string> proof = auth(static_cast<int>(&m - members.data()), token);
      args.insert(args.end(), proof.begin(), proof.end());
      if (std::find(proof.begin(), proof.end(), "--host-memory-budget") == proof.end()) {
        args.insert(args.end(), {"--host-memory-budget", "32MiB"});
      }
      args.insert(args.end(), extra.begin(), extra.end());
      m.daemon = std::make_unique<DaemonProcess>(args);
      INFO("daemon " << m.name << " stderr: " << m.daemon->proc->Stderr());
      REQUIRE(m.daemon->ready());
    }
  }
  // Waits until member `i` sees `up` other members up.
  void WaitUp(int i, size_t up) {
    std::string last;
    const bool seen = WaitUntil(
        [&] {
          RunResult r = members[i].daemon->Ctl({"cluster", "--json"});
          last = r.out + r.err;
          if (r.exit.code != 0) return false;
          const nlohmann::json j = nlohmann::json::parse(r.out);
          size_t n = 0;
          for (const auto& m : j["members"]) n += m["state"] == "up" ? 1 : 0;
          return n == up;
        },
        20s);
    if (!seen) FAIL("member " << members[i].name << " does not see " << up << " up: " << last);
  }
  std::unique_ptr<client::DaemonClient> Admin(int i) {
    auto endpoint = client::ResolveEndpoint(members[i].daemon->socket, "");
    REQUIRE(endpoint.ok());
    auto admin = client::DaemonClient::Connect(*endpoint);
    REQUIRE(admin.ok());
    return *std::move(admin);
  }
  uint64_t Push(int i, const StateDict& m, uint64_t version = 0) {
    auto endpoint = client::ResolveEndpoint(members[i].daemon->socket, "");
    REQUIRE(endpoint.ok());
    auto trainer = client::TrainerClient::Connect(*endpoint);
    REQUIRE(trainer.ok());
    client::PushOptions options;
    options.version = version;
    auto info = (*trainer)->PushTensors(m.views, options);
    INFO(info.status().ToString());
    REQUIRE(info.ok());
    return info->version();
  }
  // Part `part` of `count` of version `version`: the tensors of `m` that `owns` says.
  absl::StatusOr<v1::VersionInfo> PushPart(int i, const StateDict& m, uint64_t version,
                                           uint32_t part, uint32_t count,
                                           const std::function<bool(size_t)>& owns) {
    auto endpoint = client::ResolveEndpoint(members[i].daemon->socket, "");
    REQUIRE(endpoint.ok());
    auto trainer = client::TrainerClient::Connect(*endpoint);
    REQUIRE(trainer.ok());
    std::vector<client::TensorView> views;
    for (size_t k = 0; k < m.views.size(); ++k) {
      if (owns(k)) views.push_back(m.views[k]);
    }
    client::PushOptions options;
    options.version = version;
    options.part_index = part;
    options.part_count = count;
    return (*trainer)->PushTensors(views, options);
  }
  // Waits until member `i` has heard (Hello) that member `j` holds `parts` of `version`.
  void WaitHeld(int i, int j, uint64_t version, const std::vector<uint32_t>& parts) {
    std::string last;
    const bool seen = WaitUntil(
        [&] {
          RunResult r = members[i].daemon->Ctl({"cluster", "--json"});
          last = r.out + r.err;
          if (r.exit.code != 0) return false;
          const nlohmann::json shown = nlohmann::json::parse(r.out);  // outlives the loop
          for (const auto& m : shown["members"]) {
            if (m["node_name"] != members[j].name) continue;
            for (const auto& h : m["held"]) {
              if (h["version"].get<uint64_t>() == version &&
                  h["parts"].get<std::vector<uint32_t>>() == parts) {
                return true;
              }
            }
          }
          return false;
        },
        20s);
    if (!seen) {
      FAIL(members[i].name << " did not hear of " << members[j].name << "'s parts: " << last);
    }
  }
  TempDir dir;
  std::string token;
  std::vector<Member> members;
};

absl::StatusOr<v1::UpdateResponse> Update(client::DaemonClient& admin, uint64_t version,
                                          absl::Duration deadline = absl::Seconds(60)) {
  v1::UpdateRequest request;
  request.set_version(version);
  return admin.Update(request, deadline);
}

TEST_CASE("a version pushed to one member updates every worker of every member bit-exact") {
  Cluster c(3);
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  TempDir dir;
  std::vector<std::unique_ptr<Worker>> workers;
  // Two workers on node-1, one on each other member; each takes two versions.
  for (int i : {0, 1, 1, 2}) {
    workers.push_back(std::make_unique<Worker>(*c.members[i].daemon, dir,
                                               "w" + std::to_string(workers.size()),
                                               std::vector<std::string>{"--versions", "2"}));
  }
  for (auto& w : workers) w->WaitAttached();
  // The others learn of the workers through Hello: a cluster update needs none here.
  StateDict m1 = Model(11);
  const uint64_t v1 = c.Push(0, m1);
  auto admin = c.Admin(0);
  auto r = Update(*admin, v1);
  INFO(r.status().ToString());
  for (auto& m : c.members) INFO(m.name << " stderr: " << m.daemon->proc->Stderr());
  REQUIRE(r.ok());
  REQUIRE(r->workers_size() == 4);
  std::map<std::string, int> per_member;
  for (const auto& w : r->workers()) {
    CHECK(w.ok());
    CHECK_FALSE(w.skipped());
    ++per_member[w.node_name()];
  }
  CHECK(per_member == std::map<std::string, int>{{"node-0", 1}, {"node-1", 2}, {"node-2", 1}});
  for (auto& w : workers) CHECK(testing::CompareWorkerReport(w->Report(v1), m1) == "");

  // A second version, asked of a member that does not hold it: refused, naming why.
  StateDict m2 = Model(23);
  const uint64_t v2 = c.Push(0, m2);
  auto other = c.Admin(2);
  // Once node-2 has heard (Hello) that node-0 holds it.
  REQUIRE(WaitUntil(
      [&] {
        RunResult r = c.members[2].daemon->Ctl({"cluster", "--json"});
        if (r.exit.code != 0) return false;
        const nlohmann::json j = nlohmann::json::parse(r.out);
        for (const auto& m : j["members"]) {
          if (m["node_name"] != "node-0") continue;
          for (const auto& v : m["versions"]) {
            if (v == v2) return true;
          }
        }
        return false;
      },
      20s));
  auto refused = Update(*other, v2);
  INFO(refused.status().ToString());
  CHECK(refused.status().code() == absl::StatusCode::kNotFound);
  CHECK(Contains(std::string(refused.status().message()), "member 'node-0' holds version"));
  // From the member that holds it, with ckptctl: every member's workers, each named.
  RunResult u = c.members[0].daemon->Ctl({"update", std::to_string(v2)});
  INFO(u.err);
  REQUIRE(u.exit.code == 0);
  CHECK(Contains(u.out, "sent to 4 workers"));
  for (const char* name : {"node-0  pid", "node-1  pid", "node-2  pid"}) {
    CHECK(Contains(u.out, name));
  }
  for (auto& w : workers) CHECK(testing::CompareWorkerReport(w->Report(v2), m2) == "");
  // The communicator of the first update served the second (created once).
  const std::string log1 = c.members[1].daemon->proc->Stderr();
  CHECK(log1.find("communicator") == log1.rfind("communicator"));
  for (auto& w : workers) CHECK(w->proc->Wait(20s).code == 0);

  // Status on a member that took part shows its own part as a cluster update.
  RunResult status = c.members[2].daemon->Ctl({"status", "--json"});
  REQUIRE(status.exit.code == 0);
  auto j = nlohmann::json::parse(status.out);
  CHECK(j["last_update"]["trigger"] == "cluster");
  CHECK(j["last_update"]["state"] == "succeeded");
}

TEST_CASE("a member killed mid-update ends the update everywhere, naming it; the next works") {
  Cluster c(3, "2s");
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  TempDir dir;
  const std::string go = dir / "go";
  Worker w0(*c.members[0].daemon, dir, "w0", {"--versions", "2"});
  Worker w1(*c.members[1].daemon, dir, "w1", {"--versions", "2"});
  // node-2's worker holds its first bucket until `go` exists: the update waits on it.
  Worker held(*c.members[2].daemon, dir, "held", {"--wait-for-file", go});
  w0.WaitAttached();
  w1.WaitAttached();
  held.WaitAttached();
  StateDict m1 = Model(31);
  const uint64_t v1 = c.Push(0, m1);
  auto admin = c.Admin(0);
  auto pending = std::async(std::launch::async, [&] { return Update(*admin, v1); });
  // Mid-update (node-2 holds the communicator, so every member connected to it, and its worker
  // does not receive until `go` exists, so the update waits on it): kill node-2. (A member killed
  // while the communicator is still being created leaves the others in Gloo's connect until the
  // collective's deadline.)
  REQUIRE(WaitUntil(
      [&] {
        RunResult s = c.members[2].daemon->Ctl({"status", "--json"});
        return s.exit.code == 0 &&
               nlohmann::json::parse(s.out)["updating_version"].get<uint64_t>() == v1 &&
               Contains(c.members[2].daemon->proc->Stderr(), "ranks ready");
      },
      20s));
  const auto killed_at = std::chrono::steady_clock::now();
  c.members[2].daemon->proc->Signal(SIGKILL);
  REQUIRE(pending.wait_for(30s) == std::future_status::ready);
  const auto took = std::chrono::steady_clock::now() - killed_at;
  auto r = pending.get();
  INFO(r.status().ToString());
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(std::string(r.status().message()), "node-2"));
  CHECK(took < 20s);
  // The survivors' workers were sent part of it: they are not reported as holding it.
  for (int i : {0, 1}) {
    RunResult s = c.members[i].daemon->Ctl({"status", "--json"});
    REQUIRE(s.exit.code == 0);
    auto j = nlohmann::json::parse(s.out);
    INFO(c.members[i].name << " stderr: " << c.members[i].daemon->proc->Stderr());
    CHECK(j["updating_version"] == 0);
    for (const auto& w : j["workers"]) CHECK(w["loaded_version"] != v1);
  }
  // node-2 is seen gone; the next update goes to the two members left.
  c.WaitUp(0, 1);
  c.WaitUp(1, 1);
  StateDict m2 = Model(41);
  const uint64_t v2 = c.Push(0, m2);
  auto r2 = Update(*admin, v2);
  INFO(r2.status().ToString());
  REQUIRE(r2.ok());
  REQUIRE(r2->workers_size() == 2);
  CHECK(testing::CompareWorkerReport(w0.Report(v2), m2) == "");
  CHECK(testing::CompareWorkerReport(w1.Report(v2), m2) == "");
}

TEST_CASE("a member stopped (SIGSTOP) mid-update ends the update by the deadline") {
  Cluster c(3, "2s");
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  TempDir dir;
  const std::string go = dir / "go";
  Worker w0(*c.members[0].daemon, dir, "w0");
  Worker held(*c.members[1].daemon, dir, "held", {"--wait-for-file", go});
  Worker w2(*c.members[2].daemon, dir, "w2");
  w0.WaitAttached();
  held.WaitAttached();
  w2.WaitAttached();
  StateDict m1 = Model(51);
  const uint64_t v1 = c.Push(0, m1);
  auto admin = c.Admin(0);
  auto pending = std::async(std::launch::async, [&] { return Update(*admin, v1); });
  REQUIRE(WaitUntil(
      [&] {
        RunResult s = c.members[1].daemon->Ctl({"status", "--json"});
        return s.exit.code == 0 &&
               nlohmann::json::parse(s.out)["updating_version"].get<uint64_t>() == v1;
      },
      20s));
  c.members[1].daemon->proc->Signal(SIGSTOP);
  REQUIRE(pending.wait_for(40s) == std::future_status::ready);
  auto r = pending.get();
  c.members[1].daemon->proc->Signal(SIGCONT);
  INFO(r.status().ToString());
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(std::string(r.status().message()), "node-1"));
  // node-2 ended its part too: no update runs there.
  REQUIRE(WaitUntil(
      [&] {
        RunResult s = c.members[2].daemon->Ctl({"status", "--json"});
        return s.exit.code == 0 &&
               nlohmann::json::parse(s.out)["updating_version"].get<uint64_t>() == 0;
      },
      20s));
}

TEST_CASE(
    "two members holding different weights under one id: the update is refused, naming both") {
  // The collectives pinned to the loopback interface (cluster_data_interface).
  Cluster c(2, "3s", {"--cluster-data-interface", "lo"});
  for (int i = 0; i < 2; ++i) c.WaitUp(i, 1);
  CHECK(Contains(c.members[0].daemon->proc->Stderr(), "cluster_data_interface=lo"));
  TempDir dir;
  Worker w0(*c.members[0].daemon, dir, "w0");
  Worker w1(*c.members[1].daemon, dir, "w1");
  w0.WaitAttached();
  w1.WaitAttached();
  StateDict a = Model(61), b = Model(62);  // same names and shapes, other bytes
  REQUIRE(c.Push(0, a, 7) == 7);
  REQUIRE(c.Push(1, b, 7) == 7);
  auto admin = c.Admin(0);
  auto r = Update(*admin, 7);
  INFO(r.status().ToString());
  REQUIRE(r.status().code() == absl::StatusCode::kFailedPrecondition);
  const std::string message(r.status().message());
  CHECK(Contains(message, "member 'node-1'"));
  CHECK(Contains(message, "member 'node-0'"));
  CHECK(Contains(message, "tensor 'model.embed_tokens.weight' differs"));
  // Nothing was sent: neither worker holds or mixes anything, and both members are free again.
  for (int i = 0; i < 2; ++i) {
    RunResult s = c.members[i].daemon->Ctl({"status", "--json"});
    REQUIRE(s.exit.code == 0);
    auto j = nlohmann::json::parse(s.out);
    CHECK(j["updating_version"] == 0);
    for (const auto& w : j["workers"]) {
      CHECK(w["loaded_version"] == 0);
      CHECK(w["mixed_version"] == 0);
    }
  }
  // Dropped on node-1 (as the message says): the update goes through.
  auto one = c.Admin(1);
  absl::Status dropped = one->Drop(7, absl::Seconds(10));
  INFO(dropped.ToString());
  REQUIRE(dropped.ok());
  auto ok = Update(*admin, 7);
  INFO(ok.status().ToString());
  REQUIRE(ok.ok());
  CHECK(testing::CompareWorkerReport(w0.Report(7), a) == "");
  CHECK(testing::CompareWorkerReport(w1.Report(7), a) == "");
}

// What `members[i]` shows of each other member in `ckptctl cluster --json`, by address.
std::map<std::string, nlohmann::json> Shown(Cluster& c, int i) {
  RunResult r = c.members[i].daemon->Ctl({"cluster", "--json"});
  REQUIRE(r.exit.code == 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  std::map<std::string, nlohmann::json> out;
  for (const auto& m : j["members"]) out[m["address"].get<std::string>()] = m;
  return out;
}

TEST_CASE(
    "peers over TLS: certificates name their members, the update goes through, others refused") {
  TempDir files;
  testing::Pki pki(files.path());
  REQUIRE(pki.Ca("ca") == "");
  REQUIRE(pki.Ca("other-ca") == "");
  for (const char* name : {"node-0", "node-1"}) {
    REQUIRE(pki.Leaf(name, "ca", std::string("DNS:") + name) == "");
  }
  REQUIRE(pki.Leaf("node-2", "other-ca", "DNS:node-2") == "");              // another cluster's CA
  REQUIRE(pki.Leaf("intruder", "ca", "DNS:trainer-1,IP:127.0.0.1") == "");  // not a member
  REQUIRE(pki.Leaf("server-only", "ca", "DNS:node-6", "extendedKeyUsage=serverAuth") == "");

  // A member whose certificate does not name it, whose key is another's, or whose certificate is
  // for TLS servers only does not start, saying which.
  {
    TempDir d;
    auto start = [&](const std::string& name, const std::string& cert, const std::string& key) {
      RunResult r = testing::Run(
          {Runfile("daemon/ckpt-engined"), "--listen-unix", d / "d.sock", "--backend", "host",
           "--host-memory-budget", "16MiB", "--node-name", name, "--cluster-listen", "127.0.0.1:0",
           "--tls-cert", pki.pem(cert), "--tls-key", pki.key(key), "--cluster-ca", pki.pem("ca")},
          {}, 20s);
      CHECK(r.exit.code != 0);
      return r.err;
    };
    CHECK(Contains(start("node-5", "intruder", "intruder"),
                   "names 'trainer-1' in its subject alternative names, not this "
                   "member's node_name 'node-5'"));
    CHECK(Contains(start("node-0", "node-0", "node-1"), "is not the key of tls_cert"));
    CHECK(Contains(start("node-6", "server-only", "server-only"),
                   "does not allow both TLS server and client use"));
  }

  // node-0 and node-1 prove themselves by certificate alone (no token); node-2 holds a
  // certificate of another CA.
  Cluster c(3, "3s", {}, [&](int i, const std::string&) {
    const std::string name = "node-" + std::to_string(i);
    return std::vector<std::string>{"--tls-cert",   pki.pem(name),
                                    "--tls-key",    pki.key(name),
                                    "--cluster-ca", pki.pem(i == 2 ? "other-ca" : "ca")};
  });
  for (int i = 0; i < 2; ++i) c.WaitUp(i, 1);
  CHECK(Contains(c.members[0].daemon->proc->Stderr(), "TLS, peers named by their certificates"));
  // node-2 is refused both ways, with the handshake named.
  REQUIRE(WaitUntil(
      [&] {
        auto a = Shown(c, 0)[c.members[2].address];
        auto b = Shown(c, 2)[c.members[0].address];
        return a["state"] == "refused" && b["state"] == "refused";
      },
      20s));
  const std::string refused = Shown(c, 0)[c.members[2].address]["error"];
  INFO(refused);
  CHECK((Contains(refused, "andshake") || Contains(refused, "CERTIFICATE")));

  // The cluster update runs over the TLS members.
  TempDir dir;
  Worker w0(*c.members[0].daemon, dir, "w0");
  Worker w1(*c.members[1].daemon, dir, "w1");
  w0.WaitAttached();
  w1.WaitAttached();
  StateDict m = Model(71);
  const uint64_t v = c.Push(0, m);
  auto admin = c.Admin(0);
  auto r = Update(*admin, v);
  INFO(r.status().ToString());
  for (auto& member : c.members) INFO(member.name << " stderr: " << member.daemon->proc->Stderr());
  REQUIRE(r.ok());
  CHECK(r->workers_size() == 2);
  CHECK(testing::CompareWorkerReport(w0.Report(v), m) == "");
  CHECK(testing::CompareWorkerReport(w1.Report(v), m) == "");

  // A client whose certificate the members' CA signed but that names no member: every claim of a
  // member's name is refused, saying what the certificate names; without a certificate there is
  // no connection at all.
  auto call_hello = [&](std::shared_ptr<grpc::ChannelCredentials> creds, const std::string& who) {
    auto stub = v1::Peer::NewStub(grpc::CreateChannel(c.members[0].address, creds));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    v1::HelloRequest request;
    request.set_protocol_version(daemon::kPeerProtocolVersion);
    request.set_node_name(who);
    request.set_instance("00112233445566778899aabbccddeeff");
    v1::HelloResponse response;
    return stub->Hello(&context, request, &response);
  };
  const daemon::PeerTls intruder{pki.pem("intruder"), pki.key("intruder"), pki.pem("ca")};
  grpc::Status impostor = call_hello(daemon::PeerChannelCredentials(intruder), "node-1");
  INFO(impostor.error_message());
  CHECK(impostor.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(Contains(impostor.error_message(), "names 'trainer-1'"));
  CHECK(Contains(impostor.error_message(), "not its node_name 'node-1'"));
  // Its IP SAN names no member either.
  grpc::Status by_ip = call_hello(daemon::PeerChannelCredentials(intruder), "127.0.0.1");
  INFO(by_ip.error_message());
  CHECK(by_ip.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status plain = call_hello(grpc::InsecureChannelCredentials(), "node-1");
  CHECK(plain.error_code() == grpc::StatusCode::UNAVAILABLE);
  // The members are undisturbed.
  CHECK(Shown(c, 0)[c.members[1].address]["state"] == "up");
}

// The ids `members[i]` holds committed (ckptctl versions --json).
std::vector<uint64_t> Committed(Cluster& c, int i) {
  RunResult r = c.members[i].daemon->Ctl({"versions", "--json"});
  REQUIRE(r.exit.code == 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  std::vector<uint64_t> out;
  for (const auto& v : j["versions"]) {
    if (v["state"] == "committed") out.push_back(v["version"].get<uint64_t>());
  }
  return out;
}

TEST_CASE(
    "a member keeps a verified host copy of what it received and serves it after the holder is "
    "gone") {
  // node-2's budget cannot hold the model: it takes part without keeping a copy.
  Cluster c(3, "2s", {}, [](int i, const std::string& token) {
    std::vector<std::string> args = {"--cluster-token-file", token};
    if (i == 2) args.insert(args.end(), {"--host-memory-budget", "160KiB"});
    return args;
  });
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  TempDir dir;
  Worker w0(*c.members[0].daemon, dir, "w0");
  Worker w1(*c.members[1].daemon, dir, "w1");
  Worker w2(*c.members[2].daemon, dir, "w2");
  for (Worker* w : {&w0, &w1, &w2}) w->WaitAttached();
  StateDict m = Model(81);
  REQUIRE(m.total > 160 * 1024);
  const uint64_t v = c.Push(0, m);
  auto admin = c.Admin(0);
  auto r = Update(*admin, v);
  INFO(r.status().ToString());
  for (auto& member : c.members) INFO(member.name << " stderr: " << member.daemon->proc->Stderr());
  REQUIRE(r.ok());
  for (Worker* w : {&w0, &w1, &w2}) CHECK(testing::CompareWorkerReport(w->Report(v), m) == "");
  // node-1 committed its copy (checksums verified) after its part; node-2 says why it kept none.
  REQUIRE(WaitUntil([&] { return Committed(c, 1) == std::vector<uint64_t>{v}; }, 20s));
  CHECK(Contains(c.members[1].daemon->proc->Stderr(), "kept a host copy of version"));
  CHECK(Committed(c, 2).empty());
  const std::string log2 = c.members[2].daemon->proc->Stderr();
  INFO(log2);
  CHECK(Contains(log2, "no host copy of version " + std::to_string(v) + " is kept here"));
  CHECK(Contains(log2, "budget"));
  // The copy's label names where it came from.
  RunResult shown = c.members[1].daemon->Ctl({"show", std::to_string(v), "--json"});
  INFO(shown.out << shown.err);
  REQUIRE(shown.exit.code == 0);
  CHECK(Contains(shown.out, "cluster copy from node-0"));

  // Two members hold it now: new workers on every member get it from both, bytes balanced.
  {
    Worker n0(*c.members[0].daemon, dir, "n0");
    Worker n1(*c.members[1].daemon, dir, "n1");
    Worker n2(*c.members[2].daemon, dir, "n2");
    for (Worker* w : {&n0, &n1, &n2}) w->WaitAttached();
    auto both = Update(*admin, v);
    INFO(both.status().ToString());
    REQUIRE(both.ok());
    CHECK(both->workers_size() == 3);
    for (Worker* w : {&n0, &n1, &n2}) CHECK(testing::CompareWorkerReport(w->Report(v), m) == "");
    const std::string log0 = c.members[0].daemon->proc->Stderr();
    const std::string log1 = c.members[1].daemon->proc->Stderr();
    INFO(log0);
    INFO(log1);
    CHECK(Contains(log0, "2 of 3 members upload (node-0, node-1)"));
    CHECK(Contains(log1, "one of 2 uploading"));
    CHECK(Contains(log1, "this member uploaded "));
    CHECK_FALSE(Contains(log1, "this member uploaded 0 B"));
    CHECK_FALSE(Contains(log0, "this member uploaded 0 B"));
    for (Worker* w : {&n0, &n1, &n2}) CHECK(w->proc->Wait(20s).code == 0);
  }

  // The holder is gone (and the workers left after their version); a worker that (re)starts on
  // node-1 is served from node-1's copy.
  c.members[0].daemon->proc->Signal(SIGKILL);
  REQUIRE(
      WaitUntil([&] { return Shown(c, 1)[c.members[0].address]["state"] == "unreachable"; }, 20s));
  Worker w3(*c.members[1].daemon, dir, "w3");
  w3.WaitAttached();
  auto from_copy = c.Admin(1);
  auto again = Update(*from_copy, v);
  INFO(again.status().ToString());
  REQUIRE(again.ok());
  INFO(again->DebugString());
  REQUIRE(again->workers_size() == 1);
  CHECK(again->workers(0).ok());
  CHECK_FALSE(again->workers(0).skipped());
  CHECK(again->workers(0).node_name() == "node-1");
  CHECK(testing::CompareWorkerReport(w3.Report(v), m) == "");
}

// The resume file of a --pausable worker_client (OUT.resume.json), once it names `version`.
nlohmann::json ResumeOf(const Worker& w, uint64_t version) {
  auto resume = testing::WaitForWorkerReport(w.out + ".resume.json", version, 30s);
  INFO(w.out);
  REQUIRE(resume.has_value());
  return *resume;
}

TEST_CASE(
    "a consistent switch across members: every worker pauses before any bucket, all resume after "
    "all loaded") {
  Cluster c(3);
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  TempDir dir;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i : {0, 1, 2, 2}) {
    workers.push_back(std::make_unique<Worker>(*c.members[i].daemon, dir,
                                               "p" + std::to_string(workers.size()),
                                               std::vector<std::string>{"--pausable"}));
  }
  for (auto& w : workers) w->WaitAttached();
  StateDict m = Model(101);
  const uint64_t v = c.Push(0, m);
  RunResult u = c.members[0].daemon->Ctl({"update", std::to_string(v), "--consistent"});
  INFO(u.err);
  REQUIRE(u.exit.code == 0);
  CHECK(Contains(u.out, "sent to 4 workers"));
  int64_t last_pause = 0, first_bucket = INT64_MAX, last_bucket = 0, first_resume = INT64_MAX;
  for (auto& w : workers) {
    nlohmann::json report = w->Report(v);
    CHECK(testing::CompareWorkerReport(report, m) == "");
    nlohmann::json resume = ResumeOf(*w, v);
    CHECK(resume["loaded"] == true);
    last_pause = std::max(last_pause, resume["paused_ns"].get<int64_t>());
    first_resume = std::min(first_resume, resume["resumed_ns"].get<int64_t>());
    first_bucket = std::min(first_bucket, report["first_bucket_ns"].get<int64_t>());
    last_bucket = std::max(last_bucket, report["last_bucket_ns"].get<int64_t>());
  }
  CHECK(last_pause > 0);
  CHECK(last_pause < first_bucket);   // no worker of any member got a bucket before all paused
  CHECK(first_resume > last_bucket);  // none resumed before every worker had its last bucket
  for (auto& w : workers) CHECK(w->proc->Wait(20s).code == 0);

  // A member with a worker that cannot pause: the update fails before anything is sent anywhere,
  // and the workers that paused on the other members resume, told it failed.
  Worker a(*c.members[0].daemon, dir, "a", {"--pausable"});
  Worker plain(*c.members[1].daemon, dir, "plain");
  a.WaitAttached();
  plain.WaitAttached();
  StateDict m2 = Model(102);
  const uint64_t v2 = c.Push(0, m2);
  auto admin = c.Admin(0);
  v1::UpdateRequest request;
  request.set_version(v2);
  request.set_consistent(true);
  auto failed = admin->Update(request, absl::Seconds(60));
  INFO(failed.status().ToString());
  REQUIRE_FALSE(failed.ok());
  CHECK(Contains(std::string(failed.status().message()), "without a pause hook"));
  nlohmann::json ra = ResumeOf(a, v2);
  CHECK(ra["loaded"] == false);
  for (int i = 0; i < 3; ++i) {
    RunResult s = c.members[i].daemon->Ctl({"status", "--json"});
    REQUIRE(s.exit.code == 0);
    const nlohmann::json status = nlohmann::json::parse(s.out);  // outlives the loop
    for (const auto& w : status["workers"]) {
      CHECK(w["mixed_version"] == 0);
      CHECK(w["loaded_version"] != v2);
    }
  }
}

// Issue 13: a version pushed in parts to several members (trainer rank r pushes the tensors it
// owns to the member of its choice). Tensor 0 ("model.embed_tokens.weight") is replicated: every
// rank pushes it.
bool OwnsEven(size_t k) { return k == 0 || k % 2 == 0; }
bool OwnsOdd(size_t k) { return k == 0 || k % 2 == 1; }

TEST_CASE("a version pushed in parts to two members updates every worker bit-exact") {
  Cluster c(3);
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  TempDir dir;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i : {0, 1, 2}) {
    workers.push_back(std::make_unique<Worker>(*c.members[i].daemon, dir, "w" + std::to_string(i),
                                               std::vector<std::string>{"--versions", "2"}));
  }
  for (auto& w : workers) w->WaitAttached();
  StateDict m = Model(61);
  auto p0 = c.PushPart(0, m, 300, 0, 2, OwnsEven);
  INFO(p0.status().ToString());
  REQUIRE(p0.ok());
  auto p1 = c.PushPart(1, m, 300, 1, 2, OwnsOdd);
  INFO(p1.status().ToString());
  REQUIRE(p1.ok());
  c.WaitHeld(0, 1, 300, {1});
  // ckptctl versions shows where each part is.
  RunResult listed = c.members[2].daemon->Ctl({"versions", "--json"});
  REQUIRE(listed.exit.code == 0);
  c.WaitHeld(2, 0, 300, {0});
  c.WaitHeld(2, 1, 300, {1});
  listed = c.members[2].daemon->Ctl({"versions"});
  INFO(listed.out);
  CHECK(Contains(listed.out, "node-0: part 0; node-1: part 1"));
  CHECK_FALSE(Contains(listed.out, "MISSING"));

  // Asked of the member holding part 1 (either holder coordinates).
  auto admin = c.Admin(1);
  auto r = Update(*admin, 300);
  INFO(r.status().ToString());
  for (auto& mm : c.members) INFO(mm.name << " stderr: " << mm.daemon->proc->Stderr());
  REQUIRE(r.ok());
  REQUIRE(r->workers_size() == 3);
  for (const auto& w : r->workers()) CHECK(w.ok());
  for (auto& w : workers) CHECK(testing::CompareWorkerReport(w->Report(300), m) == "");
  // Each holder uploaded (its own part's buckets); node-2 holds nothing and uploaded nothing.
  const std::string log0 = c.members[0].daemon->proc->Stderr();
  const std::string log1 = c.members[1].daemon->proc->Stderr();
  CHECK(Contains(log1, "composed from 2 parts held by 2 members"));
  CHECK(Contains(log0, "this member uploaded "));
  CHECK_FALSE(Contains(log0, "this member uploaded 0 B"));
  CHECK_FALSE(Contains(log1, "this member uploaded 0 B"));
  CHECK_FALSE(Contains(c.members[2].daemon->proc->Stderr(), "this member uploaded"));
  // node-2 keeps a verified copy of the whole version; the next update, asked of the other holder
  // (forced: every worker holds it), composes the version from the parts and that copy.
  REQUIRE(WaitUntil(
      [&] {
        return Contains(c.members[2].daemon->proc->Stderr(), "kept a host copy of version 300");
      },
      20s));
  // node-0 hears from node-2 after that (a copy, had it kept one, would be in its answer).
  const int64_t ended_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  REQUIRE(WaitUntil(
      [&] {
        RunResult r = c.members[0].daemon->Ctl({"cluster", "--json"});
        if (r.exit.code != 0) return false;
        const nlohmann::json shown = nlohmann::json::parse(r.out);
        for (const auto& mm : shown["members"]) {
          if (mm["node_name"] == "node-2" &&
              mm["last_seen_unix_ms"].get<int64_t>() > ended_ms + 500) {
            return true;
          }
        }
        return false;
      },
      20s));
  auto admin0 = c.Admin(0);
  v1::UpdateRequest again;
  again.set_version(300);
  again.set_force(true);
  auto r2 = admin0->Update(again, absl::Seconds(60));
  INFO(r2.status().ToString());
  REQUIRE(r2.ok());
  CHECK(r2->workers_size() == 3);
  CHECK(Contains(c.members[0].daemon->proc->Stderr(), "composed from 2 parts held by 3 members"));
  for (auto& w : workers) CHECK(w->proc->Wait(20s).code == 0);
}

TEST_CASE("versions in parts: a missing part and conflicting tensors are refused, naming them") {
  Cluster c(3, "2s");
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  TempDir dir;
  Worker w0(*c.members[0].daemon, dir, "w0", {"--versions", "1"});
  Worker w1(*c.members[1].daemon, dir, "w1", {"--versions", "1"});
  w0.WaitAttached();
  w1.WaitAttached();
  auto admin = c.Admin(0);

  SECTION("two members hold one name with other bytes") {
    StateDict a = Model(71);
    StateDict b = Model(72);  // the same names, other bytes
    REQUIRE(c.PushPart(0, a, 400, 0, 2, OwnsEven).ok());
    REQUIRE(c.PushPart(1, b, 400, 1, 2, OwnsOdd).ok());
    c.WaitHeld(0, 1, 400, {1});
    auto r = Update(*admin, 400);
    REQUIRE(r.status().code() == absl::StatusCode::kFailedPrecondition);
    const std::string msg(r.status().message());
    INFO(msg);
    CHECK(Contains(msg, "tensor 'model.embed_tokens.weight' differs between member 'node-0'"));
    CHECK(Contains(msg, "member 'node-1'"));
    // Nothing reached a worker.
    RunResult s = c.members[1].daemon->Ctl({"status", "--json"});
    const nlohmann::json status = nlohmann::json::parse(s.out);
    for (const auto& w : status["workers"]) CHECK(w["loaded_version"] == 0);
  }
  SECTION("a part whose member died: named with its tensors; pushed again elsewhere, it updates") {
    StateDict m = Model(81);
    REQUIRE(c.PushPart(0, m, 500, 0, 2, OwnsEven).ok());
    REQUIRE(c.PushPart(2, m, 500, 1, 2, OwnsOdd).ok());
    // node-0 learns node-2's tensors (its catalog), then node-2 dies.
    REQUIRE(WaitUntil(
        [&] {
          return Contains(c.members[0].daemon->proc->Stderr(),
                          "member 'node-2' holds part 1 of version 500");
        },
        20s));
    c.members[2].daemon->proc->Signal(SIGKILL);
    c.WaitUp(0, 1);
    auto r = Update(*admin, 500);
    REQUIRE(r.status().code() == absl::StatusCode::kFailedPrecondition);
    const std::string msg(r.status().message());
    INFO(msg);
    CHECK(Contains(msg, "part 1: its "));
    CHECK(Contains(msg, "'model.layers.0.self_attn.q_proj.weight'"));  // tensor 1: an odd one
    CHECK(Contains(msg, "were on member 'node-2', now unreachable"));
    RunResult listed = c.members[0].daemon->Ctl({"versions"});
    CHECK(Contains(listed.out, "MISSING part 1"));
    // Part 1 pushed again, to node-1: the update works, bit-exact.
    REQUIRE(c.PushPart(1, m, 500, 1, 2, OwnsOdd).ok());
    c.WaitHeld(0, 1, 500, {1});
    auto again = Update(*admin, 500);
    INFO(again.status().ToString());
    REQUIRE(again.ok());
    REQUIRE(again->workers_size() == 2);
    CHECK(testing::CompareWorkerReport(w0.Report(500), m) == "");
    CHECK(testing::CompareWorkerReport(w1.Report(500), m) == "");
  }
}

// Issue 13, pulls: a member copies a version from the members holding it (parts from several at
// once), verified, and serves its own workers; a source that dies midway is replaced by another
// holder; with none left, the pull fails naming what is missing and nothing of it is committed.
TEST_CASE("a member pulls a version from the members holding its parts and serves its workers") {
  Cluster c(3);
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  TempDir dir;
  Worker w2(*c.members[2].daemon, dir, "w2", {"--versions", "1"});
  w2.WaitAttached();
  StateDict m = Model(91);
  REQUIRE(c.PushPart(0, m, 700, 0, 2, OwnsEven).ok());
  REQUIRE(c.PushPart(1, m, 700, 1, 2, OwnsOdd).ok());
  c.WaitHeld(2, 0, 700, {0});
  c.WaitHeld(2, 1, 700, {1});
  RunResult r = c.members[2].daemon->Ctl({"pull", "latest", "--json"});
  INFO(r.out << r.err << c.members[2].daemon->proc->Stderr());
  REQUIRE(r.exit.code == 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  CHECK(j["version"] == 700);
  CHECK(j["workers"] == 1);
  REQUIRE(j["sources"].size() == 2);
  for (const auto& src : j["sources"]) CHECK(src["bytes"].get<uint64_t>() > 0);  // both at once
  CHECK(testing::CompareWorkerReport(w2.Report(700), m) == "");
  RunResult shown = c.members[2].daemon->Ctl({"show", "700", "--json"});
  REQUIRE(shown.exit.code == 0);
  CHECK(nlohmann::json::parse(shown.out)["transport"] == "pulled");
  // Held now: a second pull says so.
  RunResult again = c.members[2].daemon->Ctl({"pull", "700"});
  CHECK(again.exit.code == 1);
  CHECK(Contains(again.err, "held here already"));
  CHECK(w2.proc->Wait(20s).code == 0);
}

// About 1 MiB a tensor: a pull limited to 1 MiB/s takes seconds, so a source can be killed
// midway.
StateDict BigModel(uint32_t seed, int tensors = 6) {
  StateDict m;
  for (int i = 0; i < tensors; ++i) {
    m.Add("model.layers." + std::to_string(i) + ".mlp.weight", DType::kBfloat16, {512, 1024},
          seed + static_cast<uint32_t>(i));
  }
  return m;
}

TEST_CASE("a pull whose source dies goes on from the other holder, or fails leaving nothing") {
  Cluster c(3, "2s", {"--pull-bytes-per-second", "1MiB"});
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  auto admin2 = c.Admin(2);
  // Version 800 whole on node-0 and node-1 (the same weights).
  StateDict m = BigModel(5);
  REQUIRE(c.Push(0, m, 800) == 800);
  REQUIRE(c.Push(1, m, 800) == 800);
  REQUIRE(WaitUntil(
      [&] {
        RunResult r = c.members[2].daemon->Ctl({"versions"});
        return Contains(r.out, "node-0: whole; node-1: whole");
      },
      20s));
  auto pending =
      std::async(std::launch::async, [&] { return admin2->Pull(800, false, absl::Seconds(60)); });
  REQUIRE(WaitUntil(
      [&] {
        return Contains(c.members[2].daemon->proc->Stderr(), "pull of version 800: 6 tensors");
      },
      20s));
  // Its progress (ckptctl cluster): reading, part of the bytes in, from both holders.
  auto pull_shown = [&](int i) {
    RunResult r = c.members[i].daemon->Ctl({"cluster", "--json"});
    REQUIRE(r.exit.code == 0);
    return nlohmann::json::parse(r.out);
  };
  nlohmann::json midway;
  REQUIRE(WaitUntil(
      [&] {
        midway = pull_shown(2)["pull"];
        return !midway.is_null() && midway["phase"] == "reading" &&
               midway["received_bytes"].get<uint64_t>() > 0;
      },
      20s));
  CHECK(midway["version"] == 800);
  CHECK(midway["trigger"] == "operator");
  CHECK(midway["received_bytes"].get<uint64_t>() < midway["total_bytes"].get<uint64_t>());
  CHECK(midway["total_bytes"] == 6 * 512 * 1024 * 2);
  CHECK(midway["tensor_count"] == 6);
  CHECK(midway["ended_unix_ms"] == 0);
  CHECK(midway["sources"].size() == 2);
  // One pull at a time: a second is refused, naming the running one.
  RunResult second = c.members[2].daemon->Ctl({"pull", "800"});
  CHECK(second.exit.code == 1);
  CHECK(Contains(second.err, "a pull is running here (version 800, started by operator)"));
  RunResult text = c.members[2].daemon->Ctl({"cluster"});
  CHECK(Contains(text.out, "pull: version 800 (operator) reading"));
  c.members[1].daemon->proc->Signal(SIGKILL);
  REQUIRE(pending.wait_for(60s) == std::future_status::ready);
  auto pulled = pending.get();
  INFO(pulled.status().ToString() << c.members[2].daemon->proc->Stderr());
  REQUIRE(pulled.ok());
  CHECK(Contains(c.members[2].daemon->proc->Stderr(), "its tensors go to the other holders"));
  const nlohmann::json ended = pull_shown(2)["pull"];
  CHECK(ended["phase"] == "succeeded");
  // What node-1 sent of the tensor it did not finish was read again from node-0: counted once.
  CHECK(ended["received_bytes"] == ended["total_bytes"]);
  CHECK(ended["tensors_received"] == 6);
  CHECK(ended["ended_unix_ms"].get<int64_t>() > 0);
  for (const auto& src : ended["sources"]) {
    CHECK(src["error"].get<std::string>().empty() == (src["member"] == "node-0"));
  }
  // The same checksums as the source's (the pull's commit verified every byte against them).
  auto detail = admin2->GetVersion(800, absl::Seconds(5));
  auto source = c.Admin(0)->GetVersion(800, absl::Seconds(5));
  REQUIRE(detail.ok());
  REQUIRE(source.ok());
  REQUIRE(detail->manifest().tensors_size() == 6);
  CHECK(detail->manifest().SerializeAsString() == source->manifest().SerializeAsString());
  // Version 801 on node-0 alone; node-0 dies mid-pull: no holder left.
  c.WaitUp(2, 1);
  StateDict m2 = BigModel(17, 12);
  REQUIRE(c.Push(0, m2, 801) == 801);
  REQUIRE(WaitUntil(
      [&] { return Contains(c.members[2].daemon->Ctl({"versions"}).out, "801 whole"); }, 20s));
  auto failing =
      std::async(std::launch::async, [&] { return admin2->Pull(801, false, absl::Seconds(60)); });
  REQUIRE(WaitUntil(
      [&] {
        return Contains(c.members[2].daemon->proc->Stderr(), "pull of version 801: 12 tensors");
      },
      20s));
  // The source sees the pull too (Hello): node-2 pulling 801, part of its bytes in.
  std::string seen;
  REQUIRE(WaitUntil(
      [&] {
        const nlohmann::json shown = pull_shown(0);
        seen = shown.dump();
        for (const auto& member : shown["members"]) {
          if (member["node_name"] == "node-2" && !member["pulling"].is_null()) {
            return member["pulling"]["version"] == 801 &&
                   member["pulling"]["total_bytes"] == 12 * 512 * 1024 * 2;
          }
        }
        return false;
      },
      10s));
  c.members[0].daemon->proc->Signal(SIGKILL);
  REQUIRE(failing.wait_for(60s) == std::future_status::ready);
  auto lost = failing.get();
  INFO(lost.status().ToString());
  REQUIRE_FALSE(lost.ok());
  CHECK(Contains(std::string(lost.status().message()), "have no holder left"));
  CHECK(Contains(std::string(lost.status().message()), "model.layers."));
  const nlohmann::json failed_pull = pull_shown(2)["pull"];
  CHECK(failed_pull["version"] == 801);
  CHECK(failed_pull["phase"] == "failed");
  CHECK(failed_pull["code"] == "UNAVAILABLE");
  CHECK(Contains(failed_pull["error"].get<std::string>(), "have no holder left"));
  // Nothing of it stays: no version 801, staging or committed.
  RunResult versions = c.members[2].daemon->Ctl({"versions", "--json"});
  REQUIRE(versions.exit.code == 0);
  const nlohmann::json held = nlohmann::json::parse(versions.out);
  for (const auto& v : held["versions"]) CHECK(v["version"] != 801);
}

// Parts with a replica: part 0 on node-0 and node-1, part 1 on node-1. node-0 dies midway
// through a pull of both parts: its tensors come from node-1, and the pull commits the same
// manifest.
TEST_CASE("a pull of parts goes on from a replica of the part whose source died") {
  Cluster c(3, "2s", {"--pull-bytes-per-second", "1MiB"});
  for (int i = 0; i < 3; ++i) c.WaitUp(i, 2);
  // 16 MiB at 1 MiB/s: node-0's share (a part of part 0) takes seconds, so it dies before the end.
  StateDict m = BigModel(29, 16);
  auto even = [](size_t k) { return k % 2 == 0; };
  auto odd = [](size_t k) { return k % 2 == 1; };
  REQUIRE(c.PushPart(0, m, 900, 0, 2, even).ok());
  REQUIRE(c.PushPart(1, m, 900, 0, 2, even).ok());
  REQUIRE(c.PushPart(1, m, 900, 1, 2, odd).ok());
  c.WaitHeld(2, 0, 900, {0});
  c.WaitHeld(2, 1, 900, {0, 1});
  auto admin2 = c.Admin(2);
  auto pending =
      std::async(std::launch::async, [&] { return admin2->Pull(900, false, absl::Seconds(60)); });
  // Both sources read from (node-0 has part 0's share), then node-0 dies.
  REQUIRE(WaitUntil(
      [&] {
        RunResult r = c.members[2].daemon->Ctl({"cluster", "--json"});
        if (r.exit.code != 0) return false;
        const nlohmann::json j = nlohmann::json::parse(r.out);
        if (j["pull"].is_null() || j["pull"]["sources"].size() != 2) return false;
        for (const auto& src : j["pull"]["sources"]) {
          if (src["member"] == "node-0") return src["received_bytes"].get<uint64_t>() > 0;
        }
        return false;
      },
      20s));
  c.members[0].daemon->proc->Signal(SIGKILL);
  REQUIRE(pending.wait_for(60s) == std::future_status::ready);
  auto pulled = pending.get();
  INFO(pulled.status().ToString() << c.members[2].daemon->proc->Stderr());
  REQUIRE(pulled.ok());
  CHECK(pulled->info().tensor_count() == 16);
  auto detail = admin2->GetVersion(900, absl::Seconds(5));
  auto source = c.Admin(1)->GetVersion(900, absl::Seconds(5));
  REQUIRE(detail.ok());
  REQUIRE(source.ok());
  CHECK(detail->manifest().SerializeAsString() == source->manifest().SerializeAsString());
  CHECK(Contains(c.members[2].daemon->proc->Stderr(), "its tensors go to the other holders"));
  RunResult shown = c.members[2].daemon->Ctl({"cluster", "--json"});
  REQUIRE(shown.exit.code == 0);
  const nlohmann::json pull = nlohmann::json::parse(shown.out)["pull"];
  CHECK(pull["received_bytes"] == pull["total_bytes"]);
  for (const auto& src : pull["sources"]) {
    CHECK(src["error"].get<std::string>().empty() == (src["member"] == "node-1"));
  }
}

// Issue 13, elastic join: a member that joins a running cluster (naming one member) holding no
// version waits for the update running there to end, then pulls the newest version and its
// worker gets it, with no trainer and no operator.
TEST_CASE("a member joining during an update waits for it to end, then pulls and serves it") {
  Cluster c(2, "2s");
  for (int i = 0; i < 2; ++i) c.WaitUp(i, 1);
  TempDir dir;
  const std::string go = dir / "go";
  // node-1's worker holds the first bucket until `go` exists: the update runs until then.
  Worker held(*c.members[1].daemon, dir, "held", {"--wait-for-file", go});
  held.WaitAttached();
  StateDict m = Model(101);
  const uint64_t v = c.Push(0, m);
  auto admin = c.Admin(0);
  auto pending = std::async(std::launch::async, [&] { return Update(*admin, v); });
  REQUIRE(WaitUntil(
      [&] {
        RunResult s = c.members[1].daemon->Ctl({"status", "--json"});
        return s.exit.code == 0 &&
               nlohmann::json::parse(s.out)["updating_version"].get<uint64_t>() == v;
      },
      20s));
  // The late member: it names node-0 only, and has a worker of its own.
  const int port = testing::FreeLoopbackPorts(1)[0];
  // clang-format off
  DaemonProcess late({"--backend", "host", "--bucket-bytes", "64KiB", "--host-memory-budget", "32MiB",
                      "--node-name", "node-9", "--cluster-listen", "127.0.0.1:" + std::to_string(port),
                      "--cluster-members", c.members[0].address, "--cluster-token-file", c.token,
                      "--cluster-timeout", "2s", "--ack-timeout", "5s", "--log-level", "info"});
  // clang-format on
  INFO("late member stderr: " << late.proc->Stderr());
  REQUIRE(late.ready());
  Worker w9(late, dir, "w9", {"--versions", "1"});
  w9.WaitAttached();
  REQUIRE(WaitUntil([&] { return Contains(late.proc->Stderr(), "the pull waits for it to end"); },
                    30s));
  CHECK_FALSE(Contains(late.proc->Stderr(), "pull of version"));
  { std::ofstream(go) << "go\n"; }
  REQUIRE(pending.wait_for(60s) == std::future_status::ready);
  auto r = pending.get();
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(testing::CompareWorkerReport(w9.Report(v), m) == "");
  CHECK(Contains(late.proc->Stderr(), "joined: pulled version " + std::to_string(v)));
  RunResult shown = late.Ctl({"cluster", "--json"});
  REQUIRE(shown.exit.code == 0);
  const nlohmann::json pull = nlohmann::json::parse(shown.out)["pull"];
  CHECK(pull["trigger"] == "join");
  CHECK(pull["phase"] == "succeeded");
  CHECK(pull["version"] == v);
  CHECK(w9.proc->Wait(20s).code == 0);
}

}  // namespace
}  // namespace ckpt
