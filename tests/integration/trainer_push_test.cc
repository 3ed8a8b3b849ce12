// The C++ trainer client (client/trainer_client.h) and ckptctl's version commands against the real
// ckpt-engined (host backend, 256 MiB store): round trips with 1 and 4 streams, progress, the
// manifest as the daemon keeps it, versions/show/push/drop through ckptctl, and bad inputs as the
// client sees them.
#include <signal.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/state_dict.h"
#include "tests/testing/subprocess.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;
using client::DaemonClient;
using client::PushOptions;
using client::TensorView;
using client::TrainerClient;
using testing::DaemonProcess;
using testing::StateDict;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// A ready daemon on a private socket, with clients for it.
struct Daemon : DaemonProcess {
  explicit Daemon(std::vector<std::string> extra = {})
      : DaemonProcess([&] {
          std::vector<std::string> args = {"--backend", "host",        "--host-memory-budget",
                                           "256MiB",    "--log-level", "warn"};
          args.insert(args.end(), extra.begin(), extra.end());
          return args;
        }()) {
    INFO("daemon stderr: " << proc->Stderr());
    REQUIRE(ready());
    endpoint = *client::ResolveEndpoint(socket, "");
    trainer = std::move(*TrainerClient::Connect(endpoint));
    admin = std::move(*DaemonClient::Connect(endpoint));
  }

  v1::StatusResponse Status() {
    auto s = admin->Status(absl::Seconds(10));
    REQUIRE(s.ok());
    return *s;
  }

  client::Endpoint endpoint;
  std::unique_ptr<TrainerClient> trainer;
  std::unique_ptr<DaemonClient> admin;
};

StateDict Model() {
  StateDict s;
  s.Add("model.embed_tokens.weight", DType::kBfloat16, {2048, 512});  // 2 MiB
  s.Add("model.layers.0.self_attn.q_proj.weight", DType::kBfloat16, {512, 512});
  s.Add("model.layers.0.mlp.up_proj.weight", DType::kFloat8E4m3fn, {1024, 512});
  s.Add("model.layers.0.input_layernorm.weight", DType::kFloat32, {512});
  s.Add("model.norm.weight", DType::kFloat16, {511});
  s.Add("lm_head.bias", DType::kFloat64, {3});
  s.Add("step", DType::kInt64, {});
  s.Add("mask", DType::kBool, {7, 3});
  s.Add("empty", DType::kInt32, {0, 4});
  return s;
}

void RequireManifestMatches(const v1::Manifest& m, const StateDict& s) {
  REQUIRE(m.tensors_size() == static_cast<int>(s.views.size()));
  for (size_t i = 0; i < s.views.size(); ++i) {
    const v1::TensorSpec& t = m.tensors(i);
    const TensorView& v = s.views[i];
    INFO(v.name);
    CHECK(t.name() == v.name);
    CHECK(t.dtype() == static_cast<int>(v.dtype));
    CHECK(std::vector<int64_t>(t.shape().begin(), t.shape().end()) == v.shape);
    CHECK(t.byte_size() == v.bytes);
    CHECK(t.xxh3() == XXH3_64bits(s.storage[i].data(), s.storage[i].size()));
  }
}

TEST_CASE(
    "push round trip with 1 and 4 streams: the daemon keeps the manifest, progress ends at "
    "the total") {
  int streams = GENERATE(1, 4);
  Daemon d;
  StateDict s = Model();
  PushOptions o;
  o.streams = streams;
  o.chunk_bytes = 256 << 10;
  o.label = "step-" + std::to_string(streams);
  o.transport = client::Transport::kGrpc;
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  o.progress = [&](uint64_t done, uint64_t total) { calls.emplace_back(done, total); };

  auto info = d.trainer->PushTensors(s.views, o);
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(info.ok());
  CHECK(info->state() == v1::VERSION_STATE_COMMITTED);
  CHECK(info->transport() == "grpc");
  CHECK(info->tensor_count() == s.views.size());
  CHECK(info->total_bytes() == s.total);
  CHECK(info->label() == o.label);

  REQUIRE(!calls.empty());
  CHECK(calls.back() == std::make_pair(s.total, s.total));
  for (size_t i = 1; i < calls.size(); ++i) CHECK(calls[i].first >= calls[i - 1].first);

  auto got = d.admin->GetVersion(info->version(), absl::Seconds(10));
  REQUIRE(got.ok());
  CHECK(got->info().state() == v1::VERSION_STATE_COMMITTED);
  CHECK(got->info().total_bytes() == s.total);
  RequireManifestMatches(got->manifest(), s);

  // A second push gets a new id; both are listed.
  auto second = d.trainer->PushTensors(s.views, o);
  REQUIRE(second.ok());
  CHECK(second->version() > info->version());
  auto list = d.admin->ListVersions(absl::Seconds(10));
  REQUIRE(list.ok());
  CHECK(list->versions_size() == 2);
  CHECK(d.Status().staging_versions() == 0);
}

TEST_CASE(
    "local push (transport auto on the Unix socket) through windows of any size is bit-exact, "
    "reported as local") {
  // 1 MiB windows: the 2 MiB embedding spans three of them, and most windows hold pieces of two
  // tensors. 256 MiB: everything in one window.
  const uint64_t window = GENERATE(uint64_t{1} << 20, uint64_t{256} << 20);
  const int threads = GENERATE(1, 3);
  // The daemon reads the host tensors out of this process (pull steps), or with local_pull off
  // this process copies them into windows.
  const bool pulled = GENERATE(true, false);
  INFO("pulled " << pulled);
  Daemon d(pulled ? std::vector<std::string>{} : std::vector<std::string>{"--local-pull", "false"});
  StateDict s = Model();
  PushOptions o;
  o.window_bytes = window;
  o.hash_threads = threads;
  o.label = "local";
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  o.progress = [&](uint64_t done, uint64_t total) { calls.emplace_back(done, total); };
  auto info = d.trainer->PushTensors(s.views, o);
  INFO("daemon stderr: " << d.proc->Stderr());
  INFO(info.status().ToString());
  REQUIRE(info.ok());
  CHECK(info->state() == v1::VERSION_STATE_COMMITTED);
  CHECK(info->transport() == "local");
  CHECK(info->total_bytes() == s.total);
  CHECK(info->label() == "local");
  REQUIRE(!calls.empty());
  CHECK(calls.back() == std::make_pair(s.total, s.total));
  for (size_t i = 1; i < calls.size(); ++i) CHECK(calls[i].first >= calls[i - 1].first);
  if (window == (uint64_t{1} << 20) && !pulled) CHECK(calls.size() >= 3);

  auto got = d.admin->GetVersion(info->version(), absl::Seconds(10));
  REQUIRE(got.ok());
  CHECK(got->info().transport() == "local");
  RequireManifestMatches(got->manifest(), s);
  CHECK(d.Status().staging_versions() == 0);

  // Asked for explicitly: the same; asked for gRPC: gRPC.
  o.transport = client::Transport::kLocal;
  auto local = d.trainer->PushTensors(s.views, o);
  REQUIRE(local.ok());
  CHECK(local->transport() == "local");
  o.transport = client::Transport::kGrpc;
  auto grpc = d.trainer->PushTensors(s.views, o);
  REQUIRE(grpc.ok());
  CHECK(grpc->transport() == "grpc");
  RequireManifestMatches(d.admin->GetVersion(grpc->version(), absl::Seconds(10))->manifest(), s);
}

TEST_CASE("a local push of an id in use is refused at its begin and leaves nothing") {
  Daemon d;
  StateDict s = Model();
  PushOptions o;
  o.version = 3;
  REQUIRE(d.trainer->PushTensors(s.views, o).ok());
  auto again = d.trainer->PushTensors(s.views, o);
  CHECK(again.status().code() == absl::StatusCode::kAlreadyExists);
  CHECK(Contains(std::string(again.status().message()), "local push"));
  CHECK(d.Status().staging_versions() == 0);
}

TEST_CASE("over TCP: transport auto pushes over gRPC, local is refused, PushLocal is refused") {
  DaemonProcess d({"--backend", "host", "--host-memory-budget", "64MiB", "--log-level", "warn",
                   "--listen-tcp", "127.0.0.1:0", "--insecure-tcp", "true"});
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(d.ready());
  auto admin = std::move(*DaemonClient::Connect(*client::ResolveEndpoint(d.socket, "")));
  auto status = admin->Status(absl::Seconds(10));
  REQUIRE(status.ok());
  REQUIRE(status->listen_addresses_size() == 2);
  auto tcp =
      std::move(*TrainerClient::Connect(*client::ResolveEndpoint("", status->listen_addresses(1))));
  StateDict s = Model();
  auto chosen = tcp->PushTensors(s.views, PushOptions());
  INFO(chosen.status().ToString());
  REQUIRE(chosen.ok());
  CHECK(chosen->transport() == "grpc");
  RequireManifestMatches(admin->GetVersion(chosen->version(), absl::Seconds(10))->manifest(), s);
  PushOptions local;
  local.transport = client::Transport::kLocal;
  auto refused = tcp->PushTensors(s.views, local);
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(std::string(refused.status().message()), "needs the daemon's Unix socket"));

  // A raw PushLocal over TCP: refused by the daemon before it reads a message.
  auto stub = v1::Trainer::NewStub(
      grpc::CreateChannel(status->listen_addresses(1), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  auto stream = stub->PushLocal(&ctx);
  v1::LocalPushRequest begin;
  *begin.mutable_begin()->mutable_manifest() = client::BuildManifest(s.views, {});
  stream->Write(begin);
  stream->WritesDone();
  grpc::Status st = stream->Finish();
  CHECK(st.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(Contains(st.error_message(), "over the daemon's Unix socket"));
  CHECK(admin->Status(absl::Seconds(10))->staging_versions() == 0);
}

TEST_CASE("concurrent pushes both commit: one begun first and finished last is not lost") {
  Daemon d;
  StateDict big;
  for (int i = 0; i < 4; ++i) big.Add("w" + std::to_string(i), DType::kBfloat16, {2048, 1024});
  StateDict small = Model();
  // The big push (begun first) is held in its last progress call (every byte sent, not yet
  // committed) while a second push from another thread of the same client begins, sends
  // everything and commits.
  PushOptions o;
  absl::StatusOr<v1::VersionInfo> second = absl::UnknownError("not run");
  bool started = false;
  o.progress = [&](uint64_t done, uint64_t total) {
    if (started || done != total) return;
    started = true;
    std::thread t([&] { second = d.trainer->PushTensors(small.views, PushOptions{}); });
    t.join();
  };
  auto first = d.trainer->PushTensors(big.views, o);
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(started);
  INFO(second.status().ToString());
  REQUIRE(second.ok());
  INFO(first.status().ToString());
  REQUIRE(first.ok());
  CHECK(first->state() == v1::VERSION_STATE_COMMITTED);
  CHECK(second->version() > first->version());
  // Both are kept; the newest is the higher id, whatever order they committed in.
  auto list = d.admin->ListVersions(absl::Seconds(10));
  REQUIRE(list.ok());
  REQUIRE(list->versions_size() == 2);
  CHECK(list->versions(0).version() == first->version());
  CHECK(list->versions(1).version() == second->version());
  CHECK(d.Status().latest_committed_version() == second->version());

  // Pushes at once from threads of one client (max_staging_per_client of them): every one commits.
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<v1::VersionInfo>> results(4, absl::UnknownError("not run"));
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = d.trainer->PushTensors(i % 2 == 0 ? big.views : small.views, PushOptions{});
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    INFO(r.status().ToString());
    CHECK(r.ok());
  }
}

// Issue 10 point 6: with a state_dir, version ids keep their meaning across a restart.
TEST_CASE("state_dir: automatic ids continue after a restart; a named id keeps its weights") {
  testing::TempDir state;
  const std::vector<std::string> args = {"--backend",   "host",        "--host-memory-budget",
                                         "64MiB",       "--log-level", "info",
                                         "--state-dir", state.path()};
  StateDict a = Model();
  StateDict b;
  b.Add("w", DType::kFloat32, {64, 64}, 5);
  uint64_t last = 0;
  {
    DaemonProcess d(args);
    INFO("daemon stderr: " << d.proc->Stderr());
    REQUIRE(d.ready());
    auto trainer = std::move(*TrainerClient::Connect(*client::ResolveEndpoint(d.socket, "")));
    REQUIRE(trainer->PushTensors(a.views, {}).ok());
    PushOptions named;
    named.version = 10;  // a trainer's own id (its RL step)
    auto ten = trainer->PushTensors(a.views, named);
    REQUIRE(ten.ok());
    auto next = trainer->PushTensors(b.views, {});
    REQUIRE(next.ok());
    last = next->version();
    CHECK(last == 11);
    d.proc->Signal(SIGTERM);
    REQUIRE(d.proc->Wait(std::chrono::seconds(20)).code == 0);
  }
  DaemonProcess d(args);
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(d.ready());
  auto trainer = std::move(*TrainerClient::Connect(*client::ResolveEndpoint(d.socket, "")));
  // The store is empty again. Re-pushing id 10 with other weights is refused: over gRPC before a
  // byte is sent, locally at commit (the checksums come then); with the same weights (a trainer
  // recovering what the restart lost) it is accepted.
  PushOptions ten;
  ten.version = 10;
  for (client::Transport transport : {client::Transport::kGrpc, client::Transport::kLocal}) {
    ten.transport = transport;
    auto other = trainer->PushTensors(b.views, ten);
    INFO(client::TransportName(transport));
    REQUIRE_FALSE(other.ok());
    CHECK(other.status().code() == absl::StatusCode::kAlreadyExists);
    CHECK(Contains(std::string(other.status().message()),
                   "version 10 was committed with other weights before the daemon restarted"));
  }
  ten.transport = client::Transport::kAuto;
  auto same = trainer->PushTensors(a.views, ten);
  INFO(same.status().ToString());
  CHECK(same.ok());
  // The next automatic id is above every id that may have been handed out before the restart
  // (automatic ids are reserved in blocks of 64: the file is written once per block).
  auto after = trainer->PushTensors(b.views, {});
  REQUIRE(after.ok());
  CHECK(after->version() > last);
  CHECK(after->version() == 64 + 1);
  CHECK(Contains(testing::ReadFile(state / "version-ids.json"),
                 "\"max_version_id\":" + std::to_string(64 + 64)));
}

TEST_CASE("a large push over 4 streams matches byte for byte (checksums verified at commit)") {
  Daemon d;
  StateDict s;
  for (int i = 0; i < 6; ++i) s.Add("w" + std::to_string(i), DType::kBfloat16, {4096, 1024 + i});
  PushOptions o;  // Defaults: 4 streams of 4 MiB chunks.
  absl::Time start = absl::Now();
  auto info = d.trainer->PushTensors(s.views, o);
  absl::Duration took = absl::Now() - start;
  REQUIRE(info.ok());
  CHECK(info->total_bytes() == s.total);
  WARN("pushed " << s.total / (1 << 20) << " MiB in " << absl::FormatDuration(took) << " ("
                 << s.total / absl::ToDoubleSeconds(took) / 1e9 << " GB/s, 4 streams)");
  auto got = d.admin->GetVersion(info->version(), absl::Seconds(10));
  REQUIRE(got.ok());
  RequireManifestMatches(got->manifest(), s);
}

TEST_CASE("versions, show and drop through ckptctl") {
  Daemon d;
  StateDict s = Model();
  PushOptions o;
  o.label = "step-100";
  auto first = d.trainer->PushTensors(s.views, o);
  REQUIRE(first.ok());
  o.label = "step-200";
  auto second = d.trainer->PushTensors(s.views, o);
  REQUIRE(second.ok());
  const std::string v1s = std::to_string(first->version());
  const std::string v2s = std::to_string(second->version());

  RunResult r = d.Ctl({"versions", "--json"});
  INFO(r.err);
  REQUIRE(r.exit.code == 0);
  nlohmann::json list = nlohmann::json::parse(r.out)["versions"];
  REQUIRE(list.size() == 2);
  CHECK(list[0]["state"] == "committed");
  CHECK(list[0]["total_bytes"] == s.total);
  CHECK(list[1]["label"] == "step-200");

  r = d.Ctl({"versions"});
  REQUIRE(r.exit.code == 0);
  CHECK(Contains(r.out, "VERSION  STATE"));
  CHECK(Contains(r.out, "step-100"));
  CHECK(Contains(r.out, "step-200"));

  r = d.Ctl({"show", v1s, "--json"});
  REQUIRE(r.exit.code == 0);
  nlohmann::json shown = nlohmann::json::parse(r.out);
  CHECK(shown["version"] == first->version());
  CHECK(shown["label"] == "step-100");
  CHECK(shown["tensor_count"] == s.views.size());
  REQUIRE(shown["tensors"].size() == s.views.size());
  for (size_t i = 0; i < s.views.size(); ++i) {
    const nlohmann::json& t = shown["tensors"][i];
    CHECK(t["name"] == s.views[i].name);
    CHECK(t["dtype"] == DTypeName(s.views[i].dtype));
    CHECK(t["shape"] == nlohmann::json(s.views[i].shape));
    CHECK(t["byte_size"] == s.views[i].bytes);
    CHECK(t["xxh3"] == Hex(XXH3_64bits(s.storage[i].data(), s.storage[i].size())));
  }
  CHECK(shown["dtypes"]["bfloat16"]["tensors"] == 2);

  r = d.Ctl({"show", "latest"});
  REQUIRE(r.exit.code == 0);
  CHECK(Contains(r.out, "version " + v2s + ": committed, label \"step-200\""));
  CHECK(Contains(r.out, "dtypes:     bfloat16"));

  r = d.Ctl({"show", v1s, "--tensors"});
  REQUIRE(r.exit.code == 0);
  {
    // A table whose columns start where their headers do, whatever the names' lengths.
    INFO(r.out);
    const std::vector<std::string> lines = testing::Lines(r.out);
    auto header = std::find_if(lines.begin(), lines.end(),
                               [](const std::string& l) { return Contains(l, "  NAME  "); });
    REQUIRE(header != lines.end());
    const size_t dtype_at = header->find("DTYPE"), shape_at = header->find("SHAPE");
    const size_t xxh3_at = header->find("XXH3");
    REQUIRE(lines.end() - header == static_cast<ptrdiff_t>(s.views.size()) + 1);
    for (size_t i = 0; i < s.views.size(); ++i) {
      const std::string& line = *(header + 1 + i);
      CHECK(line.rfind("  " + s.views[i].name + " ", 0) == 0);
      const std::string dtype = DTypeName(s.views[i].dtype);
      CHECK(line.substr(dtype_at, dtype.size() + 1) == dtype + " ");
      CHECK(line[shape_at] == '[');
      CHECK(line.substr(xxh3_at) == Hex(XXH3_64bits(s.storage[i].data(), s.storage[i].size())));
    }
    CHECK(Contains(r.out, "  model.embed_tokens.weight "));
  }

  r = d.Ctl({"drop", v1s});
  INFO(r.err);
  REQUIRE(r.exit.code == 0);
  CHECK(r.out == "dropped version " + v1s + "\n");
  r = d.Ctl({"show", v1s});
  CHECK(r.exit.code == 1);
  CHECK(Lines(r.err).size() == 1);
  CHECK(Contains(r.err, "ckptctl: GetVersion failed: "));
  r = d.Ctl({"drop", "999"});
  CHECK(r.exit.code == 1);
  CHECK(Lines(r.err).size() == 1);
  CHECK(d.Ctl({"drop", "abc"}).exit.code == 2);
  CHECK(d.Ctl({"show"}).exit.code == 2);
  CHECK(d.Ctl({"show", "-3"}).exit.code == 2);

  r = d.Ctl({"versions", "--json"});
  REQUIRE(r.exit.code == 0);
  INFO(r.out);
  int live = 0;
  nlohmann::json after = nlohmann::json::parse(r.out);
  for (const auto& v : after["versions"]) {
    if (v["state"] != "retired") ++live;
  }
  CHECK(live == 1);
}

TEST_CASE("ckptctl push loads safetensors files into a committed version") {
  Daemon d;
  std::vector<TensorToWrite> a = {{"a.weight", DType::kBfloat16, {64, 32}, RandomBytes(4096, 1)},
                                  {"a.bias", DType::kFloat32, {32}, RandomBytes(128, 2)}};
  std::vector<TensorToWrite> b = {{"b.weight", DType::kFloat16, {16, 16}, RandomBytes(512, 3)}};
  REQUIRE(WriteSafetensors(d.dir / "a.safetensors", a).ok());
  REQUIRE(WriteSafetensors(d.dir / "b.safetensors", b).ok());

  RunResult r = d.Ctl({"push", d.dir / "a.safetensors", d.dir / "b.safetensors", "--wait",
                       "--label", "from-files", "--version", "40"});
  INFO(r.err);
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(r.exit.code == 0);
  CHECK(Contains(r.out, "version 40 committed: 3 tensors, 4.6 KiB in "));
  CHECK(Contains(r.out, "label \"from-files\""));
  CHECK(r.err.empty());  // No spinner without a terminal.

  r = d.Ctl({"show", "40", "--json"});
  REQUIRE(r.exit.code == 0);
  nlohmann::json shown = nlohmann::json::parse(r.out);
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& t : shown["tensors"]) by_name[t["name"]] = t;
  REQUIRE(by_name.size() == 3);
  for (const auto* file : {&a, &b}) {
    for (const TensorToWrite& t : *file) {
      INFO(t.name);
      CHECK(by_name[t.name]["dtype"] == DTypeName(t.dtype));
      CHECK(by_name[t.name]["shape"] == nlohmann::json(t.shape));
      CHECK(by_name[t.name]["xxh3"] == Hex(XXH3_64bits(t.bytes.data(), t.bytes.size())));
    }
  }

  r = d.Ctl({"push", "--json", d.dir / "b.safetensors"});
  REQUIRE(r.exit.code == 0);
  CHECK(nlohmann::json::parse(r.out)["state"] == "committed");

  r = d.Ctl({"push", d.dir / "missing.safetensors"});
  CHECK(r.exit.code == 1);
  CHECK(Lines(r.err).size() == 1);
  CHECK(Contains(r.err, d.dir / "missing.safetensors"));
  CHECK(d.Ctl({"push"}).exit.code == 2);
  CHECK(d.Ctl({"push", "x.safetensors", "--load-timeout", "soon"}).exit.code == 2);
}

TEST_CASE("bad inputs, seen from the client") {
  Daemon d;
  StateDict s = Model();

  SECTION("local checks fail before anything reaches the daemon") {
    std::vector<TensorView> dup = s.views;
    dup[1].name = dup[0].name;
    auto r = d.trainer->PushTensors(dup, PushOptions());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(std::string(r.status().message()), "duplicate tensor name"));
    std::vector<TensorView> wrong = s.views;
    wrong[0].bytes -= 2;
    CHECK(d.trainer->PushTensors(wrong, PushOptions()).status().code() ==
          absl::StatusCode::kInvalidArgument);
    CHECK(d.admin->ListVersions(absl::Seconds(10))->versions_size() == 0);
  }
  SECTION("a version that does not fit: RESOURCE_EXHAUSTED with the sizes") {
    StateDict big;
    big.Add("huge", DType::kUint8, {300 << 20});
    PushOptions o;
    o.transport = client::Transport::kGrpc;
    auto r = d.trainer->PushTensors(big.views, o);
    INFO(r.status().message());
    CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
    CHECK(Contains(std::string(r.status().message()), "BeginVersion failed: "));
    CHECK(Contains(std::string(r.status().message()), "more than the whole host_memory_budget"));
    // Locally: refused at the stream's begin, before a byte is copied.
    auto local = d.trainer->PushTensors(big.views, PushOptions());
    INFO(local.status().message());
    CHECK(local.status().code() == absl::StatusCode::kResourceExhausted);
    CHECK(Contains(std::string(local.status().message()), "PushLocal failed: "));
    CHECK(
        Contains(std::string(local.status().message()), "more than the whole host_memory_budget"));
    CHECK(d.Status().staging_versions() == 0);
  }
  SECTION("an id in use: ALREADY_EXISTS") {
    PushOptions o;
    o.version = 5;
    REQUIRE(d.trainer->PushTensors(s.views, o).ok());
    auto r = d.trainer->PushTensors(s.views, o);
    CHECK(r.status().code() == absl::StatusCode::kAlreadyExists);
  }
  SECTION("a cancelled push is aborted and leaves nothing behind") {
    std::atomic<bool> cancel{false};
    PushOptions o;
    o.cancel = &cancel;
    o.progress = [&](uint64_t, uint64_t) { cancel = true; };
    auto r = d.trainer->PushTensors(s.views, o);
    CHECK(r.status().code() == absl::StatusCode::kCancelled);
    v1::StatusResponse st = d.Status();
    CHECK(st.staging_versions() == 0);
    CHECK(st.committed_versions() == 0);
    CHECK(st.host_memory_used_bytes() == 0);
  }
  SECTION("unknown version for GetVersion and Drop: NOT_FOUND") {
    CHECK(d.admin->GetVersion(77, absl::Seconds(10)).status().code() ==
          absl::StatusCode::kNotFound);
    CHECK(d.admin->Drop(77, absl::Seconds(10)).code() == absl::StatusCode::kNotFound);
  }
  SECTION("the daemon gone: UNAVAILABLE naming the socket") {
    d.proc->Signal(SIGKILL);
    d.proc->Wait(20s);
    PushOptions o;
    o.timeout = absl::Seconds(3);
    auto r = d.trainer->PushTensors(s.views, o);
    CHECK(r.status().code() == absl::StatusCode::kUnavailable);
    CHECK(Contains(std::string(r.status().message()), d.socket));
  }
  SECTION("no daemon at all") {
    TempDir empty;
    auto c = TrainerClient::Connect(*client::ResolveEndpoint(empty / "none.sock", ""));
    CHECK(c.status().code() == absl::StatusCode::kUnavailable);
    CHECK(Contains(std::string(c.status().message()), "is the daemon running?"));
  }
}

}  // namespace
}  // namespace ckpt::testing
