// Starts the real ckpt-engined (host backend) and talks to it with the real ckptctl.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/testing/subprocess.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

constexpr uid_t kNobody = 65534;

std::string Daemon() { return Runfile("daemon/ckpt-engined"); }
std::string Ctl() { return Runfile("client/ckptctl/ckptctl"); }

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// A host-backend daemon, ready (it sent READY=1) when constructed.
struct RunningDaemon : DaemonProcess {
  explicit RunningDaemon(std::vector<std::string> extra = {})
      : DaemonProcess(WithDefaults(std::move(extra))) {
    INFO("daemon stderr: " << proc->Stderr());
    REQUIRE(ready());
  }

  static std::vector<std::string> WithDefaults(std::vector<std::string> extra) {
    std::vector<std::string> args = {"--backend", "host", "--host-memory-budget", "64MiB"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
};

// Starts a daemon expected to fail at start-up and returns what it printed and its exit status.
RunResult StartFailing(std::vector<std::string> args, const SpawnOptions& options = {}) {
  args.insert(args.begin(), Daemon());
  return Run(args, options, 20s);
}

void RequireStartupFailure(const RunResult& r, const std::string& needle) {
  INFO("stdout: " << r.out);
  INFO("stderr: " << r.err);
  REQUIRE(r.exit.exited);
  CHECK(r.exit.code == 2);
  std::vector<std::string> lines = Lines(r.err);
  REQUIRE(lines.size() == 1);
  CHECK(Contains(lines[0], "ckpt-engined: "));
  CHECK(Contains(lines[0], needle));
}

TEST_CASE("ckptctl status --json reports the running daemon") {
  RunningDaemon d;
  CHECK(Contains(*d.ready_message, "STATUS=serving on unix:" + d.socket));

  struct stat st;
  REQUIRE(::stat(d.socket.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 0777) == 0600);

  RunResult r = d.Ctl({"status", "--json"});
  INFO("stderr: " << r.err);
  REQUIRE(r.exit.code == 0);
  nlohmann::json j = nlohmann::json::parse(r.out);
  CHECK(j["backend"] == "host");
  CHECK(j["pid"] == d.proc->pid());
  CHECK(j["daemon_version"] == "0.1.0");
  CHECK(j["host_memory_budget_bytes"] == 64ull << 20);
  CHECK(j["uptime_seconds"].get<double>() >= 0.0);
  CHECK(j["uptime_seconds"].get<double>() < 60.0);
  CHECK(j["listen_addresses"] == nlohmann::json::array({"unix:" + d.socket}));
  CHECK(j["gpus"].is_array());
  // This test passes on GPU machines too: either GPUs are listed or the reason why not.
  CHECK(j["gpus"].empty() != j["no_gpu_reason"].get<std::string>().empty());

  RunResult text = d.Ctl({"status"});
  REQUIRE(text.exit.code == 0);
  CHECK(Contains(text.out, "backend:      host"));
  CHECK(Contains(text.out, "(pid " + std::to_string(d.proc->pid()) + ")"));

  // SIGTERM: STOPPING=1, exit 0, socket and lock file removed.
  d.proc->Signal(SIGTERM);
  CHECK(d.notify.WaitFor("STOPPING=1", 20s).has_value());
  ExitInfo e = d.proc->Wait(20s);
  CHECK(e.exited);
  CHECK(e.code == 0);
  CHECK_FALSE(Exists(d.socket));
  CHECK_FALSE(Exists(d.socket + ".lock"));
}

TEST_CASE("SIGINT shuts down cleanly too") {
  RunningDaemon d;
  d.proc->Signal(SIGINT);
  ExitInfo e = d.proc->Wait(20s);
  CHECK(e.exited);
  CHECK(e.code == 0);
  CHECK(Contains(d.proc->Stderr(), "stopped"));
}

TEST_CASE("SIGQUIT, SIGUSR1 and SIGUSR2 shut down cleanly, removing the socket files") {
  for (int sig : {SIGQUIT, SIGUSR1, SIGUSR2}) {
    INFO(strsignal(sig));
    RunningDaemon d;
    REQUIRE(Exists(d.socket + ".fds"));
    d.proc->Signal(sig);
    ExitInfo e = d.proc->Wait(20s);
    CHECK(e.exited);
    CHECK(e.code == 0);
    CHECK_FALSE(Exists(d.socket));
    CHECK_FALSE(Exists(d.socket + ".fds"));
    CHECK_FALSE(Exists(d.socket + ".lock"));
  }
}

TEST_CASE("SIGPIPE is ignored and SIGHUP reloads: the daemon keeps serving") {
  RunningDaemon d;
  d.proc->Signal(SIGPIPE);
  d.proc->Signal(SIGHUP);
  CHECK(d.notify.WaitFor("RELOADING=1", 20s).has_value());
  CHECK(d.notify.WaitFor("READY=1", 20s).has_value());
  RunResult status = d.Ctl({"status"});
  CHECK(status.exit.code == 0);
  CHECK(d.proc->running());
  CHECK(Contains(d.proc->Stderr(), "SIGHUP"));
  d.proc->Signal(SIGTERM);
  CHECK(d.proc->Wait(20s).code == 0);
}

TEST_CASE("TCP listening on port 0 reports the chosen port and serves ckptctl --address") {
  RunningDaemon d({"--listen-tcp", "127.0.0.1:0", "--insecure-tcp", "true"});
  RunResult r = d.Ctl({"status", "--json"});
  REQUIRE(r.exit.code == 0);
  auto addresses = nlohmann::json::parse(r.out)["listen_addresses"];
  REQUIRE(addresses.size() == 2);
  std::string tcp = addresses[1];
  CHECK(tcp.rfind("127.0.0.1:", 0) == 0);
  CHECK(tcp != "127.0.0.1:0");
  RunResult over_tcp = Run({Ctl(), "--address", tcp, "status", "--json"});
  INFO(over_tcp.err);
  REQUIRE(over_tcp.exit.code == 0);
  CHECK(Run({Ctl(), "status", "--address", tcp}).exit.code == 0);  // after the command too
  auto status = nlohmann::json::parse(over_tcp.out);
  CHECK(status["pid"] == d.proc->pid());
  CHECK(status["insecure_tcp"] == true);
  CHECK(status["listeners"][1]["auth"] == "none (insecure_tcp)");
  CHECK(Contains(d.proc->Stderr(), "WITHOUT authentication"));
  RunResult text = d.Ctl({"status"});
  CHECK(Contains(text.out, "WARNING:      TCP is served without authentication"));
}

TEST_CASE("a TCP listener without authentication refuses to start unless insecure_tcp is set") {
  // Finding 2 of the security review: TCP served anyone. Now it is refused at start-up.
  TempDir dir;
  RunResult r =
      Run({Runfile("daemon/ckpt-engined"), "--backend", "host", "--listen-unix", dir / "d.sock",
           "--host-memory-budget", "16MiB", "--listen-tcp", "127.0.0.1:0"});
  CHECK(r.exit.code == 2);
  CHECK(Contains(r.err, "would serve anyone"));
  CHECK(Contains(r.err, "insecure_tcp"));
}

TEST_CASE("cluster keys and the cluster token file are checked at start-up") {
  TempDir dir;
  auto start = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {
        Runfile("daemon/ckpt-engined"), "--backend", "host", "--listen-unix", dir / "d.sock",
        "--host-memory-budget",         "16MiB"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args);
  };
  RunResult open = start({"--cluster-listen", "127.0.0.1:0"});
  CHECK(open.exit.code == 2);
  CHECK(Contains(open.err, "would accept any peer"));
  RunResult bad = start({"--cluster-members", "a:1,,b:2"});
  CHECK(bad.exit.code == 2);
  CHECK(Contains(bad.err, "cluster_members"));
  CHECK(Contains(bad.err, "entry 2 is empty"));
  const std::string token = dir / "token";
  std::ofstream(token) << std::string(40, 't') << "\n";
  REQUIRE(::chmod(token.c_str(), 0644) == 0);
  RunResult readable = start({"--cluster-listen", "127.0.0.1:0", "--cluster-token-file", token});
  CHECK(readable.exit.code == 2);
  CHECK(Contains(readable.err, "chmod 600"));
  CHECK_FALSE(Contains(readable.err, std::string(40, 't')));  // the secret is never printed
}

TEST_CASE("--check-config checks what start-up checks, takes nothing and exits") {
  TempDir dir;
  const std::string sock = dir / "d.sock";
  auto check = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {Daemon(), "--check-config", "--listen-unix", sock};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args);
  };
  const std::string token = dir / "token";
  std::ofstream(token) << std::string(40, 't') << "\n";
  REQUIRE(::chmod(token.c_str(), 0600) == 0);
  const std::vector<std::string> cluster = {
      "--cluster-listen",     "0.0.0.0:7071",
      "--cluster-members",    "dns:ckpt-engine-peers.ckpt-engine.svc.cluster.local:7071",
      "--cluster-token-file", token,
      "--node-name",          "gpu-node-1"};

  RunResult ok = check(cluster);
  INFO("stderr: " << ok.err);
  CHECK(ok.exit.code == 0);
  CHECK(ok.out == "config ok\n");
  CHECK(ok.err.empty());
  // Nothing was taken: no socket, no lock; the cluster port was not bound.
  CHECK_FALSE(Exists(sock));
  CHECK_FALSE(Exists(sock + ".lock"));
  // A config file and flags together, as at start-up.
  std::ofstream(dir / "c.toml") << "backend = \"host\"\nhost_memory_budget = \"64GiB\"\n";
  CHECK(check({"--config", dir / "c.toml"}).out == "config ok\n");
  // A socket held by a running daemon is no error here: the check claims nothing.
  {
    RunningDaemon live;
    RunResult r = Run({Daemon(), "--check-config", "--listen-unix", live.socket});
    CHECK(r.exit.code == 0);
    CHECK(live.Ctl({"status"}).exit.code == 0);
  }

  // Each failure: exit 2 and start-up's one line.
  RequireStartupFailure(check({"--config", dir / "missing.toml"}), "cannot read config file");
  RequireStartupFailure(check({"--cluster-listen", "0.0.0.0:7071"}), "would accept any peer");
  REQUIRE(::chmod(token.c_str(), 0640) == 0);
  RunResult readable = check(cluster);
  RequireStartupFailure(readable, "chmod 600");
  CHECK_FALSE(Contains(readable.err, std::string(40, 't')));  // the secret is never printed
  REQUIRE(::chmod(token.c_str(), 0600) == 0);
  const std::string link = dir / "link";
  REQUIRE(::symlink(token.c_str(), link.c_str()) == 0);
  std::vector<std::string> linked = cluster;
  linked[5] = link;
  RequireStartupFailure(check(linked), "a symbolic link, which is not followed");
  std::vector<std::string> unnamed = cluster;
  unnamed[7] = "-bad-";
  RequireStartupFailure(check(unnamed), "node_name");
  std::ofstream(dir / "tokens") << std::string(20, 'a') << " nosuchrole\n";
  REQUIRE(::chmod((dir / "tokens").c_str(), 0600) == 0);
  RequireStartupFailure(
      check({"--listen-tcp", "127.0.0.1:0", "--auth-tokens-file", dir / "tokens"}),
      "auth_tokens_file");
  CHECK_FALSE(Exists(sock));
}

TEST_CASE("CKPT_SOCKET chooses the socket") {
  RunningDaemon d;
  SpawnOptions env;
  env.env = {{"CKPT_SOCKET", d.socket}};
  RunResult r = Run({Ctl(), "status", "--json"}, env);
  REQUIRE(r.exit.code == 0);
  CHECK(nlohmann::json::parse(r.out)["pid"] == d.proc->pid());
}

TEST_CASE("ckptctl fails with one line when no daemon runs") {
  TempDir dir;
  RunResult r = Run({Ctl(), "--socket", dir / "none.sock", "status"});
  CHECK(r.exit.code == 1);
  REQUIRE(Lines(r.err).size() == 1);
  CHECK(Contains(r.err, "no ckpt-engined socket at " + (dir / "none.sock")));
  CHECK(r.out.empty());

  // A stale socket file: nobody listens.
  std::string stale = dir / "stale.sock";
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, stale.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  ::close(fd);
  r = Run({Ctl(), "--socket", stale, "--timeout", "3s", "status"});
  CHECK(r.exit.code == 1);
  REQUIRE(Lines(r.err).size() == 1);
  CHECK(Contains(r.err, stale));
}

TEST_CASE("ckptctl reports permission denied on a socket it may not use") {
  RunningDaemon d;
  SpawnOptions options;
  std::string ctl = Ctl();
  if (::geteuid() == 0) {
    // Root may open anything: run ckptctl as nobody, from a copy it can execute, through a
    // directory it can enter.
    REQUIRE(::chmod(d.dir.path().c_str(), 0755) == 0);
    ctl = CopyExecutable(ctl, d.dir.path());
    options.run_as_uid = kNobody;
  } else {
    REQUIRE(::chmod(d.socket.c_str(), 0) == 0);
  }
  RunResult r = Run({ctl, "--socket", d.socket, "status"}, options);
  INFO(r.err);
  CHECK(r.exit.code == 1);
  REQUIRE(Lines(r.err).size() == 1);
  CHECK(Contains(r.err, "permission denied on " + d.socket));
}

TEST_CASE("ckptctl usage errors exit 2") {
  CHECK(Run({Ctl()}).exit.code == 2);
  CHECK(Run({Ctl(), "frobnicate"}).exit.code == 2);
  CHECK(Run({Ctl(), "--socket", "/a", "--address", "b:1", "status"}).exit.code == 2);
  CHECK(Run({Ctl(), "--timeout", "soon", "status"}).exit.code == 2);
}

// Issue 10 point 9: an unknown command is named, with the commands there are.
TEST_CASE("ckptctl names an unknown command and lists the commands") {
  const std::string commands = "commands: status, versions, show, push, drop, update, cluster, pull";
  RunResult r = Run({Ctl(), "bogus"});
  CHECK(r.exit.code == 2);
  CHECK(r.err == "ckptctl: unknown command 'bogus'; " + commands + " (see ckptctl --help)\n");
  CHECK(r.out.empty());
  r = Run({Ctl(), "--timeout", "3s", "frobnicate", "7"});
  CHECK(r.exit.code == 2);
  CHECK(Contains(r.err, "unknown command 'frobnicate'; " + commands));
  r = Run({Ctl()});
  CHECK(r.exit.code == 2);
  CHECK(Contains(r.err, "ckptctl: a command is needed; " + commands));
  // A command that was recognized keeps its own error.
  r = Run({Ctl(), "status", "--bogus"});
  CHECK(r.exit.code == 2);
  CHECK(Contains(r.err, "--bogus"));
  CHECK_FALSE(Contains(r.err, "unknown command"));
}

// Issue 10 point 9: --socket, --address, --timeout, --tls-* and --token-file after the command.
TEST_CASE("ckptctl takes the global options after the command too") {
  RunningDaemon d;
  RunResult r = Run({Ctl(), "status", "--json", "--socket", d.socket, "--timeout", "3s"});
  INFO(r.err);
  REQUIRE(r.exit.code == 0);
  CHECK(nlohmann::json::parse(r.out)["pid"] == d.proc->pid());
  r = Run({Ctl(), "versions", "--socket", d.socket});
  CHECK(r.exit.code == 0);
  CHECK(r.out == "no versions\n");
  r = Run({Ctl(), "show", "latest", "--socket", d.socket});
  CHECK(r.exit.code == 1);
  CHECK(Contains(r.err, "no committed version"));
  r = Run({Ctl(), "update", "3", "--socket", d.socket, "--wait-timeout", "5s"});
  CHECK(r.exit.code == 1);
  CHECK(Contains(r.err, "no version 3"));
  // Their values are checked as before.
  r = Run({Ctl(), "status", "--timeout", "soon", "--socket", d.socket});
  CHECK(r.exit.code == 2);
  CHECK(Contains(r.err, "--timeout"));
  r = Run({Ctl(), "--socket", d.socket, "status", "--address", "127.0.0.1:1"});
  CHECK(r.exit.code == 2);
  CHECK(Contains(r.err, "excludes"));
  // The TCP credentials: the files named after the command are the ones read.
  TempDir dir;
  r = Run({Ctl(), "status", "--address", "127.0.0.1:1", "--token-file", dir / "no-token"});
  CHECK(r.exit.code == 1);
  CHECK(Contains(r.err, dir / "no-token"));
  r = Run({Ctl(), "versions", "--address", "127.0.0.1:1", "--tls-ca", dir / "no-ca.pem"});
  CHECK(r.exit.code == 1);
  CHECK(Contains(r.err, dir / "no-ca.pem"));
  r = Run({Ctl(), "versions", "--address", "127.0.0.1:1", "--tls-cert", dir / "c.pem"});
  CHECK(r.exit.code == 1);
  CHECK(Contains(r.err, "both --tls-cert and --tls-key"));
  r = Run({Ctl(), "versions", "--address", "127.0.0.1:1", "--tls-cert", dir / "c.pem", "--tls-key",
           dir / "k.pem"});
  CHECK(r.exit.code == 1);
  CHECK(Contains(r.err, dir / "c.pem"));
}

TEST_CASE("start-up fails with exit code 2 and one line naming the problem") {
  TempDir dir;
  std::string sock = dir / "d.sock";

  SECTION("unknown config key") {
    std::ofstream(dir / "c.toml") << "backend = \"host\"\nlisten_unix = \"" << sock
                                  << "\"\nbucket_bytes = 5\n";
    RequireStartupFailure(StartFailing({"--config", dir / "c.toml"}), "'bucket_bytes'");
    CHECK_FALSE(Exists(sock));
  }
  SECTION("bad value in the config file") {
    std::ofstream(dir / "c.toml") << "backend = \"tpu\"\n";
    RequireStartupFailure(StartFailing({"--config", dir / "c.toml", "--listen-unix", sock}),
                          "'backend': invalid value 'tpu'");
  }
  SECTION("bad value in a flag") {
    RequireStartupFailure(StartFailing({"--listen-unix", sock, "--host-memory-budget", "plenty"}),
                          "--host-memory-budget");
  }
  SECTION("unreadable config file") {
    RequireStartupFailure(StartFailing({"--config", dir / "missing.toml", "--listen-unix", sock}),
                          "cannot read config file " + (dir / "missing.toml"));
    RequireStartupFailure(StartFailing({"--config", dir.path(), "--listen-unix", sock}),
                          "cannot read config file " + dir.path());
  }
  SECTION("malformed config file") {
    std::ofstream(dir / "c.toml") << "backend = = host\n";
    RequireStartupFailure(StartFailing({"--config", dir / "c.toml", "--listen-unix", sock}),
                          dir / "c.toml:1:");
  }
  SECTION("socket path in use by a live daemon") {
    RunningDaemon live;
    RequireStartupFailure(
        StartFailing({"--backend", "host", "--listen-unix", live.socket}),
        "in use by a running ckpt-engined (pid " + std::to_string(live.proc->pid()) + ")");
    // The live daemon is untouched.
    CHECK(live.Ctl({"status"}).exit.code == 0);
  }
  SECTION("socket directory not writable") {
    SpawnOptions options;
    std::string daemon = Daemon();
    std::string locked = dir / "locked";
    REQUIRE(::mkdir(locked.c_str(), 0555) == 0);
    if (::geteuid() == 0) {
      REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
      daemon = CopyExecutable(daemon, dir.path());
      options.run_as_uid = kNobody;
    }
    RunResult r = Run({daemon, "--backend", "host", "--listen-unix", locked + "/d.sock"}, options);
    RequireStartupFailure(r, "socket directory " + locked + " is not writable");
  }
  SECTION("socket path that is not a socket is kept") {
    std::ofstream(sock) << "precious";
    RequireStartupFailure(StartFailing({"--backend", "host", "--listen-unix", sock}),
                          "not a socket");
    std::ifstream in(sock);
    std::string content;
    in >> content;
    CHECK(content == "precious");
  }
  SECTION("TCP address that cannot be bound") {
    RequireStartupFailure(
        StartFailing({"--backend", "host", "--listen-unix", sock, "--host-memory-budget", "16MiB",
                      "--listen-tcp", "192.0.2.1:1", "--insecure-tcp", "true"}),
        "cannot listen on");
    CHECK_FALSE(Exists(sock + ".lock"));
  }
  SECTION("a memory budget this machine cannot hold") {
    RequireStartupFailure(StartFailing({"--backend", "host", "--listen-unix", sock,
                                        "--host-memory-budget", "100TiB"}),
                          "cannot reserve 100.0 TiB (host_memory_budget)");
    CHECK_FALSE(Exists(sock + ".lock"));
  }
  SECTION("cuda backend without a GPU, when none is visible") {
    SpawnOptions hide;
    hide.env = {{"CUDA_VISIBLE_DEVICES", ""}};
    RequireStartupFailure(StartFailing({"--backend", "cuda", "--listen-unix", sock}, hide),
                          "backend 'cuda' was requested but no CUDA device is visible");
  }
}

TEST_CASE("a stale socket left by a killed daemon is replaced") {
  TempDir dir;
  std::string sock = dir / "d.sock";
  {
    Subprocess first(
        {Daemon(), "--backend", "host", "--listen-unix", sock, "--host-memory-budget", "16MiB"});
    // Wait until it serves, then kill it hard: it cannot clean up.
    auto deadline = Clock::now() + 20s;
    while (Run({Ctl(), "--socket", sock, "status"}).exit.code != 0) {
      REQUIRE(Clock::now() < deadline);
    }
    first.Signal(SIGKILL);
    first.Wait(20s);
  }
  REQUIRE(Exists(sock));
  FakeNotifySocket notify(dir / "notify");
  SpawnOptions options;
  options.env = {{"NOTIFY_SOCKET", notify.path()}};
  Subprocess second(
      {Daemon(), "--backend", "host", "--listen-unix", sock, "--host-memory-budget", "16MiB"},
      options);
  REQUIRE(notify.WaitFor("READY=1", 20s).has_value());
  CHECK(Contains(second.Stderr(), "replaced stale socket"));
  RunResult r = Run({Ctl(), "--socket", sock, "status", "--json"});
  REQUIRE(r.exit.code == 0);
  CHECK(nlohmann::json::parse(r.out)["pid"] == second.pid());
}

}  // namespace
}  // namespace ckpt::testing
