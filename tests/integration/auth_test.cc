// Authentication and roles on TCP against the real daemon: bearer tokens (auth_tokens_file, roles,
// SIGHUP reload), mTLS with roles by subject alternative name, and LoadFiles limited to
// load_files_dirs for TCP callers. ckptctl is the client, so its --token-file / --tls-* flags are
// tested on the way.
#include <signal.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/testing/pki.h"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/subprocess.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string Write(const std::string& path, const std::string& text, mode_t mode = 0600) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
  return path;
}

// The TCP address the daemon chose (listen_addresses[1]).
std::string TcpAddress(const DaemonProcess& d) {
  RunResult r = d.Ctl({"status", "--json"});
  REQUIRE(r.exit.code == 0);
  return nlohmann::json::parse(r.out)["listen_addresses"][1];
}

RunResult CtlTcp(const std::string& address, std::vector<std::string> args) {
  std::vector<std::string> argv = {Runfile("client/ckptctl/ckptctl"), "--address", address};
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv);
}

TEST_CASE("tokens: no token is UNAUTHENTICATED, each role allows its calls only, SIGHUP reloads") {
  TempDir files;
  const std::string tokens =
      Write(files / "tokens",
            "# name roles\ntrainer-token-0123456789 trainer\n"
            "operator-token-0123456789 operator\nreader-token-0123456789 read\n");
  const std::string model = files / "model.safetensors";
  REQUIRE(WriteSafetensors(model, {{"a", DType::kFloat32, {4}, RandomBytes(16, 1)}}).ok());
  DaemonProcess d({"--backend", "host", "--host-memory-budget", "16MiB", "--listen-tcp",
                   "127.0.0.1:0", "--auth-tokens-file", tokens, "--load-files-dirs", files.path()});
  INFO(d.proc->Stderr());
  REQUIRE(d.ready());
  const std::string tcp = TcpAddress(d);
  auto token = [&](const std::string& name, const std::string& secret) {
    return Write(files / name, secret + "\n");
  };
  const std::string trainer = token("t", "trainer-token-0123456789");
  const std::string op = token("o", "operator-token-0123456789");
  const std::string reader = token("r", "reader-token-0123456789");
  const std::string wrong = token("w", "not-a-listed-token-000");

  RunResult anonymous = CtlTcp(tcp, {"status"});
  CHECK(anonymous.exit.code == 1);
  CHECK(Contains(anonymous.err, "needs credentials on TCP"));
  CHECK(CtlTcp(tcp, {"--token-file", wrong, "versions"}).exit.code == 1);

  RunResult status = CtlTcp(tcp, {"--token-file", reader, "status", "--json"});
  INFO(status.err);
  REQUIRE(status.exit.code == 0);
  CHECK(nlohmann::json::parse(status.out)["listeners"][1]["auth"] == "token");

  // The reader may not push; the trainer may (LoadFiles under load_files_dirs), not drop.
  RunResult reader_push = CtlTcp(tcp, {"--token-file", reader, "push", model, "--wait"});
  CHECK(reader_push.exit.code == 1);
  CHECK(Contains(reader_push.err, "needs the trainer role"));
  RunResult push = CtlTcp(tcp, {"--token-file", trainer, "push", model, "--wait", "--json"});
  INFO(push.err);
  REQUIRE(push.exit.code == 0);
  RunResult trainer_drop = CtlTcp(tcp, {"--token-file", trainer, "drop", "1"});
  CHECK(trainer_drop.exit.code == 1);
  CHECK(Contains(trainer_drop.err, "needs the operator role"));
  // LoadFiles over TCP outside load_files_dirs: refused without a word about the file.
  RunResult outside = CtlTcp(tcp, {"--token-file", trainer, "push", "/etc/passwd", "--wait"});
  CHECK(outside.exit.code == 1);
  CHECK(Contains(outside.err, "is not under the daemon's load_files_dirs"));
  CHECK_FALSE(Contains(outside.err, "header"));
  // A symlink inside the directory that points out of it is refused too.
  REQUIRE(::symlink("/etc/passwd", (files / "escape.safetensors").c_str()) == 0);
  RunResult escape =
      CtlTcp(tcp, {"--token-file", trainer, "push", files / "escape.safetensors", "--wait"});
  CHECK(escape.exit.code == 1);
  CHECK(Contains(escape.err, "outside load_files_dirs"));
  CHECK(CtlTcp(tcp, {"--token-file", op, "drop", "1"}).exit.code == 0);

  // SIGHUP: the reader's token is revoked, a new one added, without a restart.
  Write(tokens, "trainer-token-0123456789 trainer\nnew-reader-token-01234567 read\n");
  d.proc->Signal(SIGHUP);
  CHECK(d.notify.WaitFor("READY=1", 20s).has_value());
  CHECK(CtlTcp(tcp, {"--token-file", reader, "status"}).exit.code == 1);
  CHECK(
      CtlTcp(tcp, {"--token-file", token("n", "new-reader-token-01234567"), "status"}).exit.code ==
      0);
  CHECK(Contains(d.proc->Stderr(), "1 added, 2 removed"));
}

// A CA, a server certificate for 127.0.0.1 and two client certificates (one from another CA).
void MakePki(Pki& pki) {
  REQUIRE(pki.Ca("ca") == "");
  REQUIRE(pki.Ca("other-ca") == "");
  REQUIRE(pki.Leaf("server", "ca", "IP:127.0.0.1,DNS:localhost") == "");
  REQUIRE(pki.Leaf("trainer", "ca", "DNS:trainer-1,URI:spiffe://cluster/trainer") == "");
  REQUIRE(pki.Leaf("stranger", "other-ca", "DNS:trainer-1") == "");
}

TEST_CASE("mTLS: client certificates are required and their SANs carry roles") {
  TempDir files;
  Pki pki(files.path());
  MakePki(pki);
  DaemonProcess d({"--backend", "host", "--host-memory-budget", "16MiB", "--listen-tcp",
                   "127.0.0.1:0", "--tls-cert", files / "server.pem", "--tls-key",
                   files / "server.key", "--tls-client-ca", files / "ca.pem", "--san-roles",
                   "spiffe://cluster/trainer=trainer"});
  INFO(d.proc->Stderr());
  REQUIRE(d.ready());
  const std::string tcp = TcpAddress(d);
  const std::vector<std::string> ca = {"--tls-ca", files / "ca.pem"};
  auto with = [&](const std::string& who, std::vector<std::string> args) {
    std::vector<std::string> all = ca;
    all.insert(all.end(),
               {"--tls-cert", files / (who + ".pem"), "--tls-key", files / (who + ".key")});
    all.insert(all.end(), args.begin(), args.end());
    return CtlTcp(tcp, all);
  };
  RunResult ok = with("trainer", {"status", "--json"});
  INFO(ok.err);
  REQUIRE(ok.exit.code == 0);
  CHECK(nlohmann::json::parse(ok.out)["listeners"][1]["auth"] == "mTLS");
  RunResult drop = with("trainer", {"drop", "1"});
  CHECK(drop.exit.code == 1);
  CHECK(Contains(drop.err, "needs the operator role"));
  CHECK(Contains(drop.err, "certificate 'spiffe://cluster/trainer'"));
  // No certificate, a certificate of another CA, or plaintext: no connection at all.
  RunResult none = CtlTcp(tcp, {"--tls-ca", files / "ca.pem", "status"});
  CHECK(none.exit.code == 1);
  CHECK(with("stranger", {"status"}).exit.code == 1);
  CHECK(CtlTcp(tcp, {"status"}).exit.code == 1);
}

}  // namespace
}  // namespace ckpt::testing
