// The cluster's membership between real daemons on 127.0.0.1 (docs/cluster.md): every member lists
// every other as up with its name; a member with another secret or a duplicate name is refused
// with the reason on both sides; one killed is shown unreachable, one stopped cleanly as left.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/subprocess.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string WriteToken(const TempDir& dir, const std::string& name, const std::string& secret) {
  const std::string path = dir / name;
  std::ofstream(path) << secret << "\n";
  REQUIRE(::chmod(path.c_str(), 0600) == 0);
  return path;
}

struct Member {
  std::string name;
  std::string address;
  std::unique_ptr<DaemonProcess> daemon;
};

std::unique_ptr<DaemonProcess> StartMember(const std::string& name, const std::string& address,
                                           const std::string& members, const std::string& token) {
  auto d = std::make_unique<DaemonProcess>(
      std::vector<std::string>{"--backend", "host", "--host-memory-budget", "16MiB", "--node-name",
                               name, "--cluster-listen", address, "--cluster-members", members,
                               "--cluster-token-file", token, "--cluster-timeout", "2s"});
  INFO("daemon " << name << " stderr: " << d->proc->Stderr());
  REQUIRE(d->ready());
  return d;
}

nlohmann::json Cluster(const DaemonProcess& d) {
  RunResult r = d.Ctl({"cluster", "--json"});
  INFO("stderr: " << r.err);
  REQUIRE(r.exit.code == 0);
  return nlohmann::json::parse(r.out);
}

// Polls `ckptctl cluster --json` of `d` until `ok` holds for it, for at most `limit`.
nlohmann::json WaitFor(const DaemonProcess& d, const std::function<bool(const nlohmann::json&)>& ok,
                       std::chrono::seconds limit, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  nlohmann::json j;
  for (;;) {
    j = Cluster(d);
    if (ok(j)) return j;
    if (std::chrono::steady_clock::now() > deadline) {
      FAIL("not within " << limit.count() << " s: " << what << "; last: " << j.dump(1));
    }
    std::this_thread::sleep_for(100ms);
  }
}

// The member of `j` whose address is `address` (null json when none).
nlohmann::json At(const nlohmann::json& j, const std::string& address) {
  for (const auto& m : j["members"]) {
    if (m["address"] == address) return m;
  }
  return nullptr;
}

std::string StateAt(const nlohmann::json& j, const std::string& address) {
  const nlohmann::json m = At(j, address);
  return m.is_null() ? "" : m["state"].get<std::string>();
}

TEST_CASE("three members see each other, then one killed and one stopped") {
  TempDir dir;
  const std::string token = WriteToken(dir, "token", std::string(48, 's'));
  std::vector<Member> m(3);
  std::vector<std::string> addresses;
  const std::vector<int> ports = FreeLoopbackPorts(3);
  for (int i = 0; i < 3; ++i) {
    m[i].name = "node-" + std::to_string(i);
    m[i].address = "127.0.0.1:" + std::to_string(ports[i]);
    addresses.push_back(m[i].address);
  }
  // Every member gets the same list, its own address included (it recognizes itself).
  std::string list;
  for (const std::string& a : addresses) list += (list.empty() ? "" : ",") + a;
  for (Member& x : m) x.daemon = StartMember(x.name, x.address, list, token);

  for (int i = 0; i < 3; ++i) {
    nlohmann::json j = WaitFor(
        *m[i].daemon,
        [&](const nlohmann::json& j) {
          for (int k = 0; k < 3; ++k) {
            if (k != i && StateAt(j, m[k].address) != "up") return false;
          }
          return true;
        },
        20s, "member " + m[i].name + " sees the others up");
    CHECK(j["node_name"] == m[i].name);
    CHECK(j["cluster_listen"] == m[i].address);
    REQUIRE(j["members"].size() == 3);  // itself once, as self; its own address not repeated
    CHECK(j["members"][0]["state"] == "self");
    CHECK(j["members"][0]["node_name"] == m[i].name);
    for (int k = 0; k < 3; ++k) {
      if (k == i) continue;
      const nlohmann::json other = At(j, m[k].address);
      CHECK(other["node_name"] == m[k].name);
      CHECK(other["error"] == "");
      CHECK(other["release"] != "");
      CHECK(other["last_seen_unix_ms"] > 0);
    }
  }
  RunResult text = m[0].daemon->Ctl({"cluster"});
  CHECK(Contains(text.out, "member 'node-0', Peer API on " + m[0].address));
  CHECK(Contains(text.out, "node-1"));
  CHECK(Contains(text.out, "up"));

  // SIGKILL: no goodbye; the others find it unreachable after their calls time out (2s).
  m[2].daemon->proc->Signal(SIGKILL);
  for (int i = 0; i < 2; ++i) {
    nlohmann::json j = WaitFor(
        *m[i].daemon,
        [&](const nlohmann::json& j) { return StateAt(j, m[2].address) == "unreachable"; }, 20s,
        m[i].name + " sees node-2 unreachable");
    CHECK(At(j, m[2].address)["error"] != "");
    CHECK(At(j, m[2].address)["node_name"] == "node-2");  // still known by name
  }
  // SIGTERM: a clean stop says goodbye; the last member shows it as left, not unreachable.
  m[1].daemon->proc->Signal(SIGTERM);
  const auto stop_started = std::chrono::steady_clock::now();
  REQUIRE(m[1].daemon->proc->Wait(20s).exited);
  // The goodbye does not wait for node-2, which no longer answers (its calls are not awaited).
  CHECK(std::chrono::steady_clock::now() - stop_started < 8s);
  WaitFor(
      *m[0].daemon, [&](const nlohmann::json& j) { return StateAt(j, m[1].address) == "left"; },
      10s, "node-0 sees node-1 left");
  // And it stays left while it does not answer (rounds every 2 s, calls time out after 2 s).
  std::this_thread::sleep_for(5s);
  CHECK(StateAt(Cluster(*m[0].daemon), m[1].address) == "left");
}

// Issue 13, scale-out: a daemon that names one member and proves the cluster's secret joins (the
// others do not list it); every member then lists it, and a clean stop shows it as left. One
// with another secret, naming the same member, is listed by none.
TEST_CASE("a member that names one member joins; every member lists it; stopped, it is left") {
  TempDir dir;
  const std::string token = WriteToken(dir, "token", std::string(48, 's'));
  const std::string other = WriteToken(dir, "other", std::string(48, 'o'));
  const std::vector<int> ports = FreeLoopbackPorts(5);
  std::vector<Member> m(5);
  std::string list;
  for (int i = 0; i < 5; ++i) {
    m[i].name = "node-" + std::to_string(i);
    m[i].address = "127.0.0.1:" + std::to_string(ports[i]);
    if (i < 3) list += (list.empty() ? "" : ",") + m[i].address;
  }
  for (int i = 0; i < 3; ++i) m[i].daemon = StartMember(m[i].name, m[i].address, list, token);
  // node-4 has another secret; node-3 the cluster's; both name node-0 only.
  m[4].daemon = StartMember(m[4].name, m[4].address, m[0].address, other);
  m[3].daemon = StartMember(m[3].name, m[3].address, m[0].address, token);
  for (int i = 0; i < 4; ++i) {
    WaitFor(
        *m[i].daemon,
        [&](const nlohmann::json& j) {
          for (int k = 0; k < 4; ++k) {
            if (k != i && StateAt(j, m[k].address) != "up") return false;
          }
          return true;
        },
        30s, m[i].name + " sees every member of the four up");
  }
  const nlohmann::json seen = Cluster(*m[1].daemon);
  CHECK(At(seen, m[3].address)["node_name"] == "node-3");
  CHECK(seen["members"].size() == 4);  // node-4 (another secret) is not listed
  CHECK(At(Cluster(*m[0].daemon), m[4].address).is_null());
  CHECK(At(Cluster(*m[2].daemon), m[4].address).is_null());
  CHECK(Contains(m[1].daemon->proc->Stderr(), "learned of a member at " + m[3].address));
  // node-3 stops cleanly: every member shows it as left.
  m[3].daemon->proc->Signal(SIGTERM);
  REQUIRE(m[3].daemon->proc->Wait(20s).exited);
  for (int i = 0; i < 3; ++i) {
    WaitFor(
        *m[i].daemon, [&](const nlohmann::json& j) { return StateAt(j, m[3].address) == "left"; },
        10s, m[i].name + " sees node-3 left");
  }
}

TEST_CASE("a member with another secret or a duplicate name is refused, saying why") {
  TempDir dir;
  const std::string good = WriteToken(dir, "good", std::string(40, 'g'));
  const std::string bad = WriteToken(dir, "bad", std::string(40, 'b'));
  const std::vector<int> ports = FreeLoopbackPorts(3);
  const std::string a = "127.0.0.1:" + std::to_string(ports[0]);
  const std::string b = "127.0.0.1:" + std::to_string(ports[1]);
  const std::string c = "127.0.0.1:" + std::to_string(ports[2]);
  const std::string list = a + "," + b + "," + c;
  auto first = StartMember("alpha", a, list, good);
  auto intruder = StartMember("beta", b, list, bad);
  auto twin = StartMember("alpha", c, list, good);  // the same node_name as the first

  nlohmann::json seen = WaitFor(
      *first,
      [&](const nlohmann::json& j) {
        return StateAt(j, b) == "refused" && StateAt(j, c) == "refused";
      },
      20s, "alpha refuses beta (secret) and its twin (name)");
  // alpha calls beta with the right secret; beta, holding another one, refuses it.
  CHECK(Contains(At(seen, b)["error"].get<std::string>(), "cluster token does not match"));
  CHECK(Contains(At(seen, c)["error"].get<std::string>(), "own name"));
  nlohmann::json from_intruder = WaitFor(
      *intruder, [&](const nlohmann::json& j) { return StateAt(j, a) == "refused"; }, 20s,
      "beta is refused by alpha");
  CHECK(Contains(At(from_intruder, a)["error"].get<std::string>(), "UNAUTHENTICATED"));
  CHECK(Contains(intruder->proc->Stderr(), "refused"));
  CHECK(Contains(first->proc->Stderr(), "wrong cluster token"));
}

}  // namespace
}  // namespace ckpt::testing
