// Roles by uid on the Unix socket (uid_roles, SO_PEERCRED) and LoadFiles by descriptor, against the
// real daemon: ckptctl runs as another user (nobody), so these tests need root; without it they
// say so and stop.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/safetensors_writer.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/trainer_daemon.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

constexpr uid_t kNobody = 65534;

bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return done();
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

// A directory nobody can enter, with a copy of ckptctl nobody can run.
struct NobodyTools {
  explicit NobodyTools(const DaemonProcess& d) {
    REQUIRE(::chmod(d.dir.path().c_str(), 0755) == 0);
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    ckptctl = CopyExecutable(Runfile("client/ckptctl/ckptctl"), dir.path());
  }
  RunResult Ctl(const DaemonProcess& d, std::vector<std::string> args) const {
    std::vector<std::string> argv = {ckptctl, "--socket", d.socket};
    argv.insert(argv.end(), args.begin(), args.end());
    SpawnOptions as_nobody;
    as_nobody.run_as_uid = kNobody;
    return Run(argv, as_nobody);
  }
  TempDir dir;
  std::string ckptctl;
};

std::string Model(const TempDir& dir, const std::string& name, mode_t mode) {
  const std::string path = dir / name;
  REQUIRE(WriteSafetensors(path, {{"w", DType::kFloat32, {4}, RandomBytes(16, 3)}}).ok());
  REQUIRE(::chmod(path.c_str(), mode) == 0);
  return path;
}

#define REQUIRE_ROOT()                                                           \
  if (::geteuid() != 0) {                                                        \
    WARN("not root: cannot run a client as another user; this test is skipped"); \
    return;                                                                      \
  }

TEST_CASE("uid_roles: a uid gets exactly its roles; an unlisted uid gets none, whatever the mode") {
  REQUIRE_ROOT();
  SECTION("no other uid has a role: the sockets stay 0600, and opening them changes nothing") {
    DaemonProcess d({"--backend", "host", "--host-memory-budget", "16MiB"});
    REQUIRE(d.ready());
    CHECK(ModeOf(d.socket) == 0600);
    CHECK(ModeOf(d.socket + ".fds") == 0600);
    NobodyTools tools(d);
    REQUIRE(::chmod(d.socket.c_str(), 0666) == 0);
    RunResult r = tools.Ctl(d, {"status"});
    INFO(r.err);
    CHECK(r.exit.code == 1);
    CHECK(Contains(r.err,
                   "closes the connections of uids without any role: is uid 65534 in its "
                   "uid_roles?"));
    CHECK(WaitUntil(
        [&] { return Contains(d.proc->Stderr(), "of uids without any role (last: uid 65534"); },
        5s));
  }
  SECTION("read only: status and versions, not push or drop") {
    TempDir files;
    REQUIRE(::chmod(files.path().c_str(), 0755) == 0);
    const std::string model = Model(files, "m.safetensors", 0644);
    DaemonProcess d(
        {"--backend", "host", "--host-memory-budget", "16MiB", "--uid-roles", "65534=read"});
    REQUIRE(d.ready());
    CHECK(ModeOf(d.socket) == 0666);
    CHECK(ModeOf(d.socket + ".fds") == 0666);
    NobodyTools tools(d);
    CHECK(tools.Ctl(d, {"status"}).exit.code == 0);
    CHECK(tools.Ctl(d, {"versions"}).exit.code == 0);
    RunResult push = tools.Ctl(d, {"push", model});
    INFO(push.err);
    CHECK(push.exit.code == 1);
    // Refused on the descriptor socket (closed for a uid without worker or trainer role) or, if the
    // nonce went out before that close, by LoadFiles itself; either way it names the role.
    CHECK(Contains(push.err, "trainer role"));
    CHECK(Contains(push.err, "65534"));
    REQUIRE(d.Ctl({"push", model}).exit.code == 0);  // root may
    RunResult drop = tools.Ctl(d, {"drop", "1"});
    CHECK(drop.exit.code == 1);
    CHECK(Contains(drop.err, "Drop needs the operator role"));
    // Status names the roles of the socket's uids.
    nlohmann::json status = nlohmann::json::parse(d.Ctl({"status", "--json"}).out);
    const std::string auth = status["listeners"][0]["auth"];
    CHECK(Contains(auth, "uid 65534: read"));
    CHECK(Contains(auth, "mode 0666"));
  }
}

TEST_CASE("PushLocal: a uid without the trainer role is refused; one with it pushes locally") {
  REQUIRE_ROOT();
  for (const char* roles : {"65534=read", "65534=trainer"}) {
    const bool allowed = std::string(roles) == "65534=trainer";
    DYNAMIC_SECTION(roles) {
      DaemonProcess d({"--backend", "host", "--host-memory-budget", "16MiB", "--uid-roles", roles});
      REQUIRE(d.ready());
      NobodyTools tools(d);
      const std::string pusher =
          CopyExecutable(Runfile("tests/integration/local_push_client"), tools.dir.path());
      SpawnOptions as_nobody;
      as_nobody.run_as_uid = kNobody;
      for (const char* transport : {"local", "auto"}) {
        INFO(transport);
        RunResult r = Run(
            {pusher, d.socket, "3", "100000", std::to_string(1 << 20), transport, "0"}, as_nobody);
        INFO(r.err);
        if (allowed) {
          CHECK(r.exit.code == 0);
          CHECK(Contains(r.out, "transport local"));
        } else if (std::string(transport) == "local") {
          // The descriptor socket closes on a uid without the worker or trainer role (the local
          // path is not there for it: UNAVAILABLE, saying why) or, if the nonce went out before
          // that close, PushLocal itself refuses the call naming the role.
          CHECK(r.exit.code == 1);
          CHECK((Contains(r.err, "is uid 65534 in its uid_roles?") ||
                 (Contains(r.err, "PERMISSION_DENIED") && Contains(r.err, "trainer role"))));
        } else {
          // auto: no local path, so gRPC, where the call itself is refused.
          CHECK(r.exit.code == 1);
          CHECK(Contains(r.err, "PERMISSION_DENIED"));
          CHECK(Contains(r.err, "trainer role"));
        }
      }
      if (allowed) {
        // Push and update sends the version to the workers: the operator role too.
        RunResult r =
            Run({pusher, d.socket, "3", "100000", std::to_string(1 << 20), "local", "0", "update"},
                as_nobody);
        INFO(r.err);
        CHECK(r.exit.code == 1);
        CHECK(Contains(r.err, "PERMISSION_DENIED"));
        CHECK(Contains(r.err, "operator role"));
      }
      nlohmann::json versions = nlohmann::json::parse(d.Ctl({"versions", "--json"}).out);
      CHECK(versions["versions"].size() == (allowed ? 2u : 0u));
      for (const auto& v : versions["versions"]) CHECK(v["state"] == "committed");
    }
  }
}

TEST_CASE("LoadFiles on the Unix socket reads only what the caller itself could open") {
  REQUIRE_ROOT();
  TempDir files;
  REQUIRE(::chmod(files.path().c_str(), 0755) == 0);
  const std::string open_model = Model(files, "open.safetensors", 0644);
  const std::string root_only = Model(files, "secret.safetensors", 0600);
  DaemonProcess d(
      {"--backend", "host", "--host-memory-budget", "16MiB", "--uid-roles", "65534=trainer"});
  REQUIRE(d.ready());
  NobodyTools tools(d);
  RunResult ok = tools.Ctl(d, {"push", open_model, "--json"});
  INFO(ok.err);
  REQUIRE(ok.exit.code == 0);
  // The daemon (root) could read the 0600 file; the caller cannot, so it is not loaded.
  RunResult denied = tools.Ctl(d, {"push", root_only});
  INFO(denied.err);
  CHECK(denied.exit.code == 1);
  CHECK(Contains(denied.err, "cannot open " + root_only + ": Permission denied"));
  nlohmann::json versions = nlohmann::json::parse(d.Ctl({"versions", "--json"}).out);
  CHECK(versions["versions"].size() == 1);
}

TEST_CASE(
    "LoadFiles on the Unix socket: paths alone are refused, descriptors must be the caller's") {
  TrainerDaemon d;
  REQUIRE(d.ready());
  const std::string model = d.dir / "m.safetensors";
  REQUIRE(WriteSafetensors(model, {{"w", DType::kFloat32, {4}, RandomBytes(16, 4)}}).ok());
  v1::VersionInfo info;
  // Even root's paths are never opened by the daemon on the Unix socket.
  RequireError(d.LoadFilesByPath({model}, &info), grpc::StatusCode::INVALID_ARGUMENT,
               "takes the files' descriptors, not their paths");
  RequireError(d.LoadFilesWithFds({model, model}, {}, &info), grpc::StatusCode::INVALID_ARGUMENT,
               "takes the files' descriptors");
  // A nonce nobody presented.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(20s));
    v1::LoadFilesRequest req;
    req.add_paths(model);
    req.add_fd_nonces("0123456789abcdef0123456789abcdef");
    RequireError(d.trainer->LoadFiles(&ctx, req, &info), grpc::StatusCode::FAILED_PRECONDITION,
                 "no connection on");
  }
  // A write-only descriptor and an O_PATH one are not open for reading.
  {
    ScopedFd write_only(::open(model.c_str(), O_WRONLY | O_CLOEXEC));
    ScopedFd path_only(::open(model.c_str(), O_PATH | O_CLOEXEC));
    REQUIRE(write_only.valid());
    REQUIRE(path_only.valid());
    RequireError(d.LoadFilesWithFds({model}, {write_only.get()}, &info),
                 grpc::StatusCode::FAILED_PRECONDITION, "not open for reading");
    RequireError(d.LoadFilesWithFds({model}, {path_only.get()}, &info),
                 grpc::StatusCode::FAILED_PRECONDITION, "not open for reading");
    // More descriptors than paths: refused as soon as the claimed ones outnumber the paths.
    ScopedFd a(::open(model.c_str(), O_RDONLY | O_CLOEXEC)),
        b(::open(model.c_str(), O_RDONLY | O_CLOEXEC));
    RequireError(d.LoadFilesWithFds({model}, {a.get(), b.get()}, &info),
                 grpc::StatusCode::INVALID_ARGUMENT, "1 path(s) but more descriptors passed");
  }
  // More files than one message carries: the descriptors travel in several batches, in order.
  std::vector<std::string> many;
  for (int i = 0; i < 150; ++i) {
    const std::string path = d.dir / ("part" + std::to_string(i) + ".safetensors");
    REQUIRE(WriteSafetensors(path, {{"t" + std::to_string(i),
                                     DType::kFloat32,
                                     {1},
                                     RandomBytes(4, static_cast<uint32_t>(i))}})
                .ok());
    many.push_back(path);
  }
  REQUIRE(d.LoadFiles(many, &info).ok());
  CHECK(info.tensor_count() == 150);
  REQUIRE(d.Drop(info.version()).ok());
  d.RequireClean();

  if (::geteuid() != 0) return;
  // Descriptors presented by a process of another uid are not the caller's.
  TrainerDaemon shared({"--uid-roles", "65534=trainer"});
  REQUIRE(shared.ready());
  REQUIRE(::chmod(shared.dir.path().c_str(), 0755) == 0);
  REQUIRE(::chmod(model.c_str(), 0644) == 0);
  REQUIRE(::chmod(d.dir.path().c_str(), 0755) == 0);
  const std::string script =
      "import array, os, secrets, socket, sys, time\n"
      "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
      "s.connect(sys.argv[1] + '.fds')\n"
      "fd = os.open(sys.argv[2], os.O_RDONLY)\n"
      "nonce = secrets.token_hex(16)\n"
      "s.sendmsg([nonce.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, "
      "array.array('i', [fd]))])\n"
      "print(nonce, flush=True)\n"
      "time.sleep(20)\n";
  SpawnOptions as_nobody;
  as_nobody.run_as_uid = kNobody;
  Subprocess presenter({"/usr/bin/python3", "-c", script, shared.socket, model}, as_nobody);
  REQUIRE(WaitUntil([&] { return presenter.Stdout().size() >= 33; }, 10s));
  grpc::ClientContext ctx;
  ctx.set_deadline(In(20s));
  v1::LoadFilesRequest req;
  req.add_paths(model);
  req.add_fd_nonces(presenter.Stdout().substr(0, 32));
  RequireError(shared.trainer->LoadFiles(&ctx, req, &info), grpc::StatusCode::PERMISSION_DENIED,
               "come from uid 65534, not from the caller's uid 0");
  shared.RequireClean();
}

TEST_CASE("SIGHUP re-reads uid_roles from the config file and changes the socket mode to match") {
  REQUIRE_ROOT();
  TempDir files;
  REQUIRE(::chmod(files.path().c_str(), 0755) == 0);
  const std::string model = Model(files, "m.safetensors", 0644);
  const std::string config = files / "ckpt-engined.toml";
  auto write_config = [&](const std::string& uid_roles) {
    std::ofstream(config) << "backend = \"host\"\nhost_memory_budget = \"16MiB\"\nuid_roles = \""
                          << uid_roles << "\"\n";
  };
  write_config("65534=read");
  DaemonProcess d({"--config", config});
  REQUIRE(d.ready());
  NobodyTools tools(d);
  CHECK(tools.Ctl(d, {"push", model}).exit.code == 1);

  write_config("65534=trainer");
  d.proc->Signal(SIGHUP);
  REQUIRE(WaitUntil([&] { return Contains(d.proc->Stderr(), "1 changed)"); }, 10s));
  RunResult push = tools.Ctl(d, {"push", model});
  INFO(push.err);
  CHECK(push.exit.code == 0);

  // A broken map keeps the old one.
  write_config("65534=wizard");
  d.proc->Signal(SIGHUP);
  REQUIRE(WaitUntil([&] { return Contains(d.proc->Stderr(), "unknown role 'wizard'"); }, 10s));
  CHECK(tools.Ctl(d, {"status"}).exit.code == 0);

  // No other uid left: back to 0600 and no role for nobody.
  write_config("");
  d.proc->Signal(SIGHUP);
  REQUIRE(WaitUntil([&] { return Contains(d.proc->Stderr(), "0 uid(s) with roles"); }, 10s));
  CHECK(ModeOf(d.socket) == 0600);
  CHECK(ModeOf(d.socket + ".fds") == 0600);
  REQUIRE(::chmod(d.socket.c_str(), 0666) == 0);
  RunResult refused = tools.Ctl(d, {"status"});
  CHECK(refused.exit.code == 1);
  CHECK(Contains(refused.err, "closes the connections of uids without any role"));
}

TEST_CASE("a uid without a role cannot crowd out the sockets of those with one") {
  REQUIRE_ROOT();
  constexpr uid_t kStranger = 12345;  // no role
  TempDir files;
  REQUIRE(::chmod(files.path().c_str(), 0755) == 0);
  const std::string model = Model(files, "m.safetensors", 0644);
  DaemonProcess d(
      {"--backend", "host", "--host-memory-budget", "16MiB", "--uid-roles", "65534=trainer"});
  REQUIRE(d.ready());
  NobodyTools tools(d);
  // 300 connections to each socket, held open; on the descriptor socket half of them silent and
  // half presenting a nonce (without descriptors).
  const std::string script =
      "import os, secrets, socket, sys, time\n"
      "held = []\n"
      "for i in range(300):\n"
      "    for path, kind in ((sys.argv[1], socket.SOCK_STREAM), (sys.argv[1] + '.fds', "
      "socket.SOCK_SEQPACKET)):\n"
      "        s = socket.socket(socket.AF_UNIX, kind)\n"
      "        try:\n"
      "            s.connect(path)\n"
      "            if kind == socket.SOCK_SEQPACKET and i % 2:\n"
      "                s.send(secrets.token_hex(16).encode())\n"
      "        except OSError:\n"
      "            pass\n"
      "        held.append(s)\n"
      "print('flooding', flush=True)\n"
      "time.sleep(30)\n";
  SpawnOptions as_stranger;
  as_stranger.run_as_uid = kStranger;
  Subprocess flood({"/usr/bin/python3", "-c", script, d.socket}, as_stranger);
  REQUIRE(WaitUntil([&] { return Contains(flood.Stdout(), "flooding"); }, 20s));
  // The trainer's load (descriptor socket + gRPC) and root's status go through meanwhile.
  for (int i = 0; i < 3; ++i) {
    RunResult push = tools.Ctl(d, {"push", model});
    INFO(push.err);
    CHECK(push.exit.code == 0);
  }
  CHECK(d.Ctl({"status"}).exit.code == 0);
  CHECK(Contains(d.proc->Stderr(), "uid 12345 has no worker or trainer role"));
  // Nothing of the stranger's is held: the daemon's descriptors stay few.
  int open_fds = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(d.proc->pid()) + "/fd")) {
    (void)entry;
    ++open_fds;
  }
  CHECK(open_fds < 200);
}

}  // namespace
}  // namespace ckpt::testing
