// Updates on the host backend, end to end: the real daemon, a pushed version, worker processes (the
// C++ worker_client and the Python worker_process.py) that attach and receive it bit-exact, and
// every fault of issue 4: a worker killed mid-update, a worker that stops acking, a disallowed
// uid, unknown and retired versions, a second update while one runs, SIGTERM mid-update.
#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "common/dtype.h"
#include "common/scoped_fd.h"
#include "tests/testing/raw_attach.h"
#include "tests/testing/state_dict.h"
#include "tests/testing/subprocess.h"

namespace ckpt {
namespace {

using client::DaemonClient;
using client::TensorView;
using client::TrainerClient;
using testing::DaemonProcess;
using testing::Runfile;
using testing::RunResult;
using testing::SpawnOptions;
using testing::StateDict;
using testing::Subprocess;
using testing::WaitUntil;
using namespace std::chrono_literals;

constexpr uid_t kNobody = 65534;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// About 300 KiB in 20 tensors of several dtypes, each under the 64 KiB buckets of these tests, so
// that a version spans several buckets and both slots.
StateDict Model(uint32_t seed) {
  StateDict m;
  m.Add("model.embed_tokens.weight", DType::kBfloat16, {128, 200}, seed + 1);
  for (int layer = 0; layer < 3; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    m.Add(p + "self_attn.q_proj.weight", DType::kBfloat16, {96, 96}, seed + 10 * layer + 2);
    m.Add(p + "self_attn.k_proj.weight", DType::kFloat16, {32, 96}, seed + 10 * layer + 3);
    m.Add(p + "self_attn.v_proj.weight", DType::kFloat32, {32, 96}, seed + 10 * layer + 4);
    m.Add(p + "mlp.gate_up_proj.weight", DType::kBfloat16, {160, 96}, seed + 10 * layer + 5);
    m.Add(p + "mlp.down_proj.weight", DType::kFloat8E4m3fn, {96, 160}, seed + 10 * layer + 6);
    m.Add(p + "input_layernorm.weight", DType::kFloat32, {96}, seed + 10 * layer + 7);
  }
  m.Add("model.norm.weight", DType::kFloat32, {96}, seed + 98);
  m.Add("scalar.step", DType::kInt64, {}, seed + 99);
  return m;
}

// A ready host-backend daemon with 64 KiB buckets, and clients for it.
struct Daemon : DaemonProcess {
  explicit Daemon(std::vector<std::string> extra = {}, const SpawnOptions& options = {})
      : DaemonProcess(Args(std::move(extra)), options) {
    INFO("daemon stderr: " << proc->Stderr());
    REQUIRE(ready());
    endpoint = *client::ResolveEndpoint(socket, "");
    trainer = std::move(*TrainerClient::Connect(endpoint));
    admin = std::move(*DaemonClient::Connect(endpoint));
  }
  static std::vector<std::string> Args(std::vector<std::string> extra) {
    std::vector<std::string> args = {"--backend",      "host",  "--host-memory-budget", "64MiB",
                                     "--bucket-bytes", "64KiB", "--log-level",          "info"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  uint64_t Push(const StateDict& m, uint64_t version = 0) {
    client::PushOptions options;
    options.version = version;
    auto info = trainer->PushTensors(m.views, options);
    INFO(info.status().ToString());
    REQUIRE(info.ok());
    return info->version();
  }

  nlohmann::json StatusJson() const {
    RunResult r = Ctl({"status", "--json"});
    INFO(r.err);
    REQUIRE(r.exit.code == 0);
    return nlohmann::json::parse(r.out);
  }

  size_t Workers() const { return StatusJson()["workers"].size(); }

  absl::StatusOr<v1::UpdateResponse> Update(uint64_t version, bool force = false) {
    v1::UpdateRequest request;
    request.set_version(version);
    request.set_force(force);
    return admin->Update(request, absl::Seconds(60));
  }

  client::Endpoint endpoint;
  std::unique_ptr<TrainerClient> trainer;
  std::unique_ptr<DaemonClient> admin;
};

// A worker process: the C++ worker_client or the Python worker_process.py, with the same flags.
struct Worker {
  enum class Kind { kCpp, kPython };

  Worker(Kind kind, const Daemon& daemon, const testing::TempDir& dir, const std::string& name,
         std::vector<std::string> extra = {}, const SpawnOptions& base = {},
         const std::string& binary_override = "")
      : out(dir / (name + ".json")), ready(dir / (name + ".ready")) {
    std::vector<std::string> argv;
    SpawnOptions options = base;
    if (kind == Kind::kCpp) {
      argv = {binary_override.empty() ? Runfile("tests/integration/worker_client")
                                      : binary_override};
    } else {
      argv = {"/usr/bin/python3", Runfile("tests/python/worker_process.py")};
      const std::string init = Runfile("client/python/ckpt_engine/__init__.py");
      options.env.push_back({"PYTHONPATH", init.substr(0, init.rfind("/ckpt_engine/"))});
      options.env.push_back({"CKPT_CLIENT_LIB", Runfile("client/libckpt_client.so")});
      options.env.push_back({"PYTHONDONTWRITEBYTECODE", "1"});
    }
    argv.insert(argv.end(), {"--socket", daemon.socket, "--out", out, "--ready", ready, "--engine",
                             kind == Kind::kCpp ? "cpp-test" : "python-test"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<Subprocess>(argv, options);
  }

  // Waits until the worker has attached (wrote its ready file) or exited.
  void WaitAttached() {
    INFO("worker stderr: " << proc->Stderr());
    REQUIRE(WaitUntil([&] { return Exists(ready) || !proc->running(); }, 30s));
    REQUIRE(Exists(ready));
  }

  // The last version report, once it names `version`.
  nlohmann::json Report(uint64_t version) {
    auto report = testing::WaitForWorkerReport(out, version, 30s);
    INFO("worker stderr: " << proc->Stderr());
    REQUIRE(report.has_value());
    return *report;
  }

  std::string out, ready;
  std::unique_ptr<Subprocess> proc;
};

// Every tensor of `m` (or those named in `only`) arrived with its dtype, shape and bytes.
void CheckReport(const nlohmann::json& report, const StateDict& m,
                 const std::vector<std::string>& only = {}) {
  CHECK(testing::CompareWorkerReport(report, m, only) == "");
}

TEST_CASE("a C++ and a Python worker receive a pushed version bit-exact") {
  Daemon d;
  testing::TempDir dir;
  StateDict m = Model(7);
  const uint64_t version = d.Push(m);

  Worker cpp(Worker::Kind::kCpp, d, dir, "cpp", {"--versions", "2"});
  Worker py(Worker::Kind::kPython, d, dir, "py", {"--versions", "2"});
  cpp.WaitAttached();
  py.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));

  auto result = d.Update(version);
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  CHECK(result->version() == version);
  CHECK(result->buckets() >= 4);
  REQUIRE(result->workers_size() == 2);
  for (const auto& w : result->workers()) {
    CHECK(w.ok());
    CHECK(w.tensors() == m.views.size());
  }
  CheckReport(cpp.Report(version), m);
  CheckReport(py.Report(version), m);

  nlohmann::json status = d.StatusJson();
  REQUIRE(status["workers"].size() == 2);
  for (const auto& w : status["workers"]) CHECK(w["loaded_version"] == version);
  CHECK(status["bucket_bytes"] == 64 * 1024);
  CHECK(status["slots_per_gpu"] == 2);

  SECTION("a second update of the same version skips them; --force resends") {
    auto again = d.Update(version);
    REQUIRE(again.ok());
    for (const auto& w : again->workers()) CHECK(w.skipped());
    RunResult forced = d.Ctl({"update", std::to_string(version), "--force"});
    INFO(forced.err);
    CHECK(forced.exit.code == 0);
    CHECK(Contains(forced.out, "sent to 2 workers"));
    CHECK(Contains(forced.out, "s wall time ("));
    CHECK(Contains(forced.out, "(stages overlap; not wall time)"));
    CHECK(forced.err.empty());  // no progress line without a terminal
    CHECK(cpp.proc->Wait(20s).code == 0);
    CHECK(py.proc->Wait(20s).code == 0);
  }
  SECTION("ckptctl update latest sends the newest version") {
    StateDict m2 = Model(8);
    const uint64_t v2 = d.Push(m2);
    RunResult r = d.Ctl({"update", "latest", "--json"});
    INFO(r.err);
    REQUIRE(r.exit.code == 0);
    nlohmann::json j = nlohmann::json::parse(r.out);
    CHECK(j["version"] == v2);
    CHECK(j["bytes"].get<uint64_t>() > 0);
    CheckReport(cpp.Report(v2), m2);
    CheckReport(py.Report(v2), m2);
  }
}

// Issue 13: a version pushed in parts (trainer rank r of N pushes the tensors it owns) to one
// daemon: incomplete, an update is refused naming the missing parts; complete, it updates
// bit-exact, a tensor replicated in every part arriving once.
TEST_CASE("a version pushed in parts to one daemon updates once every part is in") {
  Daemon d;
  testing::TempDir dir;
  StateDict m = Model(11);
  const std::string replicated = "model.norm.weight";
  constexpr uint32_t kParts = 3;
  auto part_views = [&](uint32_t r) {
    std::vector<TensorView> views;
    for (size_t i = 0; i < m.views.size(); ++i) {
      const bool shared = m.views[i].name == replicated;
      if (shared || i % kParts == r) views.push_back(m.views[i]);
    }
    return views;
  };
  auto push_part = [&](uint32_t r, client::Transport transport) {
    client::PushOptions o;
    o.version = 40;
    o.part_index = r;
    o.part_count = kParts;
    o.transport = transport;
    o.label = "step-40";
    return d.trainer->PushTensors(part_views(r), o);
  };
  // Out of order, over both paths.
  auto p2 = push_part(2, client::Transport::kGrpc);
  INFO(p2.status().ToString());
  REQUIRE(p2.ok());
  CHECK(p2->part_count() == kParts);
  CHECK(p2->transport() == "grpc");
  auto p0 = push_part(0, client::Transport::kAuto);
  INFO(p0.status().ToString());
  REQUIRE(p0.ok());
  CHECK(std::vector<uint32_t>(p0->parts().begin(), p0->parts().end()) ==
        (std::vector<uint32_t>{0, 2}));
  CHECK(p0->transport() == "mixed");  // part 0 came over the local path

  Worker cpp(Worker::Kind::kCpp, d, dir, "cpp", {"--versions", "1"});
  Worker py(Worker::Kind::kPython, d, dir, "py", {"--versions", "1"});
  cpp.WaitAttached();
  py.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));

  auto refused = d.Update(40);
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(std::string(refused.status().message()), "parts 0, 2"));
  CHECK(Contains(std::string(refused.status().message()), "(part 1)"));
  RunResult listed = d.Ctl({"versions"});
  CHECK(Contains(listed.out, "committed parts 0,2 of 3"));
  // The same part twice, or another count, is refused.
  CHECK(push_part(2, client::Transport::kGrpc).status().code() == absl::StatusCode::kAlreadyExists);
  {
    client::PushOptions o;
    o.version = 40;
    o.part_index = 1;
    o.part_count = 4;
    CHECK(d.trainer->PushTensors(part_views(1), o).status().code() ==
          absl::StatusCode::kFailedPrecondition);
  }

  auto p1 = push_part(1, client::Transport::kGrpc);
  INFO(p1.status().ToString());
  REQUIRE(p1.ok());
  CHECK(p1->parts_size() == 3);
  CHECK(p1->tensor_count() == m.views.size());  // the replicated tensor once

  auto result = d.Update(40);
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  REQUIRE(result->workers_size() == 2);
  for (const auto& w : result->workers()) {
    CHECK(w.ok());
    CHECK(w.tensors() == m.views.size());
  }
  CheckReport(cpp.Report(40), m);
  CheckReport(py.Report(40), m);
  RunResult shown = d.Ctl({"show", "40", "--json"});
  INFO(shown.err);
  REQUIRE(shown.exit.code == 0);
  nlohmann::json j = nlohmann::json::parse(shown.out);
  CHECK(j["part_count"] == kParts);
  CHECK(j["parts"] == nlohmann::json::array({0, 1, 2}));
  CHECK(j["label"] == "step-40");
}

// Issue 10 point 1: tensors larger than a bucket (64 KiB here) are split by the daemon and handed
// out whole by every client library.
StateDict LargeModel(uint32_t seed) {
  StateDict m;
  m.Add("model.norm.weight", DType::kFloat32, {96}, seed + 1);
  // 1000 rows of 200 bytes: pieces of 256 rows (two 128-row blocks per 64 KiB bucket).
  m.Add("model.embed_tokens.weight", DType::kBfloat16, {1000, 100}, seed + 2);
  m.Add("model.layers.0.input_layernorm.weight", DType::kFloat32, {96}, seed + 3);
  // 1-D, 200000 bytes: pieces of a whole bucket.
  m.Add("model.layers.0.bias", DType::kFloat32, {50000}, seed + 4);
  // Rows of 160000 bytes, larger than a bucket: pieces of whole elements.
  m.Add("lm_head.weight", DType::kFloat32, {2, 40000}, seed + 5);
  m.Add("scalar.step", DType::kInt64, {}, seed + 6);
  return m;
}

TEST_CASE("tensors larger than a bucket arrive whole and bit-exact in C++ and Python workers") {
  Daemon d;
  testing::TempDir dir;
  StateDict m = LargeModel(41);
  const uint64_t version = d.Push(m);
  const std::vector<std::string> only = {"lm_head.weight", "scalar.step"};
  Worker cpp(Worker::Kind::kCpp, d, dir, "cpp", {"--versions", "2"});
  Worker py(Worker::Kind::kPython, d, dir, "py", {"--versions", "2"});
  Worker verify(Worker::Kind::kCpp, d, dir, "verify", {"--verify-checksums"});
  Worker pyverify(Worker::Kind::kPython, d, dir, "pyverify", {"--verify-checksums"});
  Worker subset(Worker::Kind::kPython, d, dir, "subset",
                {"--tensor", only[0], "--tensor", only[1]});
  for (Worker* w : {&cpp, &py, &verify, &pyverify, &subset}) w->WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 5; }, 10s));

  auto result = d.Update(version);
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  CHECK(result->buckets() >= 10);  // 4 + 4 + 5 pieces, at least
  for (const auto& w : result->workers()) {
    CHECK(w.ok());
    CHECK(w.tensors() == (w.pid() == subset.proc->pid() ? only.size() : m.views.size()));
  }
  CheckReport(cpp.Report(version), m);
  CheckReport(py.Report(version), m);
  CheckReport(verify.Report(version), m);
  CheckReport(pyverify.Report(version), m);
  CheckReport(subset.Report(version), m, only);

  // A second version through the same workers (their piece buffers are reused or freed).
  for (Worker* w : {&verify, &pyverify, &subset}) CHECK(w->proc->Wait(20s).code == 0);
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));
  StateDict m2 = LargeModel(43);
  const uint64_t v2 = d.Push(m2);
  auto second = d.Update(v2);
  INFO(second.status().ToString());
  REQUIRE(second.ok());
  CheckReport(cpp.Report(v2), m2);
  CheckReport(py.Report(v2), m2);
  CHECK(cpp.proc->Wait(20s).code == 0);
  CHECK(py.proc->Wait(20s).code == 0);
}

TEST_CASE("a worker that asks for some tensors gets only those") {
  Daemon d;
  testing::TempDir dir;
  StateDict m = Model(3);
  const uint64_t version = d.Push(m);
  const std::vector<std::string> only = {"model.norm.weight",
                                         "model.layers.1.mlp.down_proj.weight"};
  Worker cpp(Worker::Kind::kCpp, d, dir, "cpp", {"--tensor", only[0], "--tensor", only[1]});
  cpp.WaitAttached();
  REQUIRE(d.Update(version).ok());
  CheckReport(cpp.Report(version), m, only);
}

// Issue 9, finding 10: workers may check every tensor against the version's XXH3-64.
TEST_CASE("workers with verify_checksums receive a version bit-exact") {
  Daemon d;
  testing::TempDir dir;
  StateDict m = Model(31);
  const uint64_t version = d.Push(m);
  const std::vector<std::string> only = {"model.norm.weight", "scalar.step"};
  Worker cpp(Worker::Kind::kCpp, d, dir, "cpp", {"--verify-checksums", "--versions", "2"});
  Worker py(Worker::Kind::kPython, d, dir, "py", {"--verify-checksums", "--versions", "2"});
  Worker subset(Worker::Kind::kCpp, d, dir, "subset",
                {"--verify-checksums", "--tensor", only[0], "--tensor", only[1]});
  cpp.WaitAttached();
  py.WaitAttached();
  subset.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 3; }, 10s));

  auto result = d.Update(version);
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  CHECK(result->buckets() >= 4);
  for (const auto& w : result->workers()) CHECK(w.ok());
  CheckReport(cpp.Report(version), m);
  CheckReport(py.Report(version), m);
  CheckReport(subset.Report(version), m, only);
  CHECK(subset.proc->Wait(20s).code == 0);

  StateDict m2 = Model(33);
  const uint64_t v2 = d.Push(m2);
  auto second = d.Update(v2);
  INFO(second.status().ToString());
  REQUIRE(second.ok());
  CheckReport(cpp.Report(v2), m2);
  CheckReport(py.Report(v2), m2);
  CHECK(cpp.proc->Wait(20s).code == 0);
  CHECK(py.proc->Wait(20s).code == 0);
}

TEST_CASE("verify_checksums catches a worker's view that differs from the committed version") {
  // The host slots are sealed (F_SEAL_FUTURE_WRITE): no process can change them. So the workers
  // change their own view instead (--garble-own-slot-view: private pages of 0xA5 over their
  // mappings of the slots): what they read is then what a worker would read from an overwritten
  // slot, while the daemon's slots stay intact for the honest worker.
  Daemon d;
  testing::TempDir dir;
  StateDict m = Model(32);
  const uint64_t version = d.Push(m);
  Worker control(Worker::Kind::kCpp, d, dir, "control", {"--garble-own-slot-view"});
  Worker verifying(Worker::Kind::kCpp, d, dir, "verifying",
                   {"--garble-own-slot-view", "--verify-checksums"});
  Worker honest(Worker::Kind::kCpp, d, dir, "honest", {"--verify-checksums"});
  control.WaitAttached();
  verifying.WaitAttached();
  honest.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 3; }, 10s));

  auto result = d.Update(version);
  const std::string message(result.status().message());
  INFO(message);
  REQUIRE(result.status().code() == absl::StatusCode::kAborted);
  CHECK(Contains(message,
                 "1 of 3 workers failed (worker pid " + std::to_string(verifying.proc->pid())));
  CHECK(Contains(message, "2 loaded it"));
  const auto mismatch = testing::ExpectedMismatch(message, m, '\xA5');
  REQUIRE(mismatch.has_value());
  const std::string& name = mismatch->tensor;
  const std::string& hashes = mismatch->hashes;
  CHECK(Contains(message, hashes));

  // The verifying worker stopped with DATA_LOSS naming the same tensor and hashes.
  testing::ExitInfo e = verifying.proc->Wait(20s);
  const std::string err = verifying.proc->Stderr();
  INFO("verifying worker stderr: " << err);
  CHECK(e.code == 1);
  CHECK(Contains(err, "DATA_LOSS: version " + std::to_string(version) + " bucket 0: "));
  CHECK(Contains(err, "checksum mismatch in tensor '" + name + "'"));
  CHECK(Contains(err, hashes));
  // Without verification the garbled bytes went unnoticed; the honest worker got the real ones.
  CHECK(testing::CompareWorkerReport(control.Report(version), m) != "");
  CheckReport(honest.Report(version), m);
}

TEST_CASE("updates refuse unknown, retired and missing things with clear errors") {
  Daemon d({"--max-versions", "1"});
  testing::TempDir dir;
  StateDict m = Model(1);

  RunResult none = d.Ctl({"update", "latest"});
  CHECK(none.exit.code == 1);
  CHECK(Contains(none.err, "no version is committed yet"));

  const uint64_t v1 = d.Push(m);
  RunResult no_workers = d.Ctl({"update", std::to_string(v1)});
  CHECK(no_workers.exit.code == 1);
  CHECK(Contains(no_workers.err, "no worker is attached"));

  Worker cpp(Worker::Kind::kCpp, d, dir, "cpp");
  cpp.WaitAttached();
  RunResult unknown = d.Ctl({"update", "99"});
  CHECK(unknown.exit.code == 1);
  CHECK(Contains(unknown.err, "no version 99 (never committed)"));

  d.Push(Model(2));  // retires v1 (max_versions 1)
  auto retired = d.Update(v1);
  CHECK(retired.status().code() == absl::StatusCode::kNotFound);
  CHECK(Contains(std::string(retired.status().message()), "retired or dropped"));

  RunResult bad = d.Ctl({"update", "abc"});
  CHECK(bad.exit.code == 2);
}

TEST_CASE("a worker killed mid-update fails alone; the others finish") {
  Daemon d({"--ack-timeout", "60s"});
  testing::TempDir dir;
  StateDict m = Model(11);
  const uint64_t version = d.Push(m);
  Worker good(Worker::Kind::kCpp, d, dir, "good", {"--versions", "2"});
  Worker staller(Worker::Kind::kCpp, d, dir, "staller", {"--stall-after-buckets", "1"});
  good.WaitAttached();
  staller.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));

  const auto start = std::chrono::steady_clock::now();
  auto update = std::async(std::launch::async, [&] { return d.Update(version); });
  REQUIRE(WaitUntil([&] { return d.StatusJson()["updating_version"] == version; }, 10s));

  // Status shows how far it got: bucket 0 acked by both, bucket 1 waits for the staller's ack.
  nlohmann::json progress;
  REQUIRE(WaitUntil(
      [&] {
        progress = d.StatusJson()["last_update"]["progress"];
        return progress["buckets_done"] == 1;
      },
      10s));
  INFO(progress.dump());
  CHECK(progress["buckets_total"].get<int>() >= 4);
  CHECK(progress["bytes_total"] == m.total);
  CHECK(progress["bytes_done"].get<uint64_t>() > 0);
  CHECK(progress["bytes_done"].get<uint64_t>() < m.total);
  CHECK(progress["workers_total"] == 2);
  CHECK(progress["workers_done"] == 0);
  CHECK(progress["workers_failed"] == 0);
  CHECK(progress["elapsed_seconds"].get<double>() > 0);

  // While it runs: a second update and a drop of the version are refused.
  RunResult second = d.Ctl({"update", std::to_string(version), "--force"});
  CHECK(second.exit.code == 1);
  CHECK(Contains(second.err, "an update to version " + std::to_string(version) + " is running"));
  RunResult drop = d.Ctl({"drop", std::to_string(version)});
  CHECK(drop.exit.code == 1);
  CHECK(Contains(drop.err, "being sent to workers"));

  staller.proc->Signal(SIGKILL);
  REQUIRE(update.wait_for(30s) == std::future_status::ready);
  auto result = update.get();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(elapsed < 30s);  // far below ack_timeout: the death was noticed, not waited out
  REQUIRE(result.status().code() == absl::StatusCode::kAborted);
  const std::string message(result.status().message());
  CHECK(Contains(message, "worker pid " + std::to_string(staller.proc->pid())));
  CHECK(Contains(message, "detached mid-update"));
  CHECK(Contains(message, "1 loaded it"));
  // The final figures: every bucket went to the worker left; one loaded it, one failed.
  progress = d.StatusJson()["last_update"]["progress"];
  INFO(progress.dump());
  CHECK(progress["buckets_done"] == progress["buckets_total"]);
  CHECK(progress["bytes_done"] == m.total);
  CHECK(progress["workers_done"] == 1);
  CHECK(progress["workers_failed"] == 1);
  CheckReport(good.Report(version), m);
  REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
  // Its slots are free again: the next update goes through.
  CHECK(d.Update(version, /*force=*/true).ok());
  CHECK(good.proc->Wait(20s).code == 0);
}

TEST_CASE("a worker that stops acking fails the update after ack_timeout, naming it") {
  Daemon d({"--ack-timeout", "1s"});
  testing::TempDir dir;
  StateDict m = Model(12);
  const uint64_t version = d.Push(m);
  Worker good(Worker::Kind::kPython, d, dir, "good", {"--versions", "2"});
  Worker staller(Worker::Kind::kCpp, d, dir, "staller", {"--stall-after-buckets", "2"});
  good.WaitAttached();
  staller.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));

  auto result = d.Update(version);
  const std::string message(result.status().message());
  INFO(message);
  REQUIRE(result.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(Contains(message, "worker pid " + std::to_string(staller.proc->pid())));
  CHECK(Contains(message, "did not ack bucket 2"));
  CHECK(Contains(message, "within ack_timeout 1.0s"));
  CheckReport(good.Report(version), m);
  // The staller is gone from the workers at once (its stream may take a while to end), so an
  // update right away goes to the good worker only and succeeds (issue 10 point 5).
  CHECK(d.Workers() == 1);
  CHECK(d.StatusJson()["workers"][0]["pid"] == good.proc->pid());
  // The staller may still run with part of the version: waiting for the version says so rather
  // than "loaded by every worker".
  auto wait = d.admin->WaitLoaded(version, absl::Seconds(5));
  REQUIRE(wait.ok());
  CHECK_FALSE(wait->loaded());
  CHECK(Contains(wait->summary(), "worker pid " + std::to_string(staller.proc->pid())));
  CHECK(Contains(wait->summary(), "no longer attached"));
  auto again = d.Update(version, /*force=*/true);
  INFO(again.status().ToString());
  REQUIRE(again.ok());
  REQUIRE(again->workers_size() == 1);
  CHECK(again->workers(0).pid() == good.proc->pid());
}

TEST_CASE("SIGTERM mid-update ends the workers' streams cleanly") {
  Daemon d({"--ack-timeout", "60s", "--shutdown-grace", "5s"});
  testing::TempDir dir;
  const uint64_t version = d.Push(Model(13));
  Worker waiting(Worker::Kind::kCpp, d, dir, "waiting", {"--versions", "2"});
  Worker py(Worker::Kind::kPython, d, dir, "py", {"--versions", "2"});
  Worker staller(Worker::Kind::kCpp, d, dir, "staller", {"--stall-after-buckets", "1"});
  waiting.WaitAttached();
  py.WaitAttached();
  staller.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 3; }, 10s));

  auto update = std::async(std::launch::async, [&] { return d.Update(version); });
  REQUIRE(WaitUntil([&] { return d.StatusJson()["updating_version"] == version; }, 10s));
  d.proc->Signal(SIGTERM);
  testing::ExitInfo daemon_exit = d.proc->Wait(20s);
  INFO("daemon stderr: " << d.proc->Stderr());
  CHECK(daemon_exit.exited);
  CHECK(daemon_exit.code == 0);
  REQUIRE(update.wait_for(20s) == std::future_status::ready);
  auto result = update.get();
  CHECK_FALSE(result.ok());
  // The workers saw the daemon's reason, not a hang or a bare broken pipe.
  for (Worker* w : {&waiting, &py}) {
    testing::ExitInfo e = w->proc->Wait(20s);
    INFO("worker stderr: " << w->proc->Stderr());
    CHECK_FALSE(e.timed_out);
    CHECK(e.code == 1);
    CHECK(Contains(w->proc->Stderr(), "shutting down"));
  }
}

TEST_CASE("auto_update sends every commit to the attached workers") {
  Daemon d({"--auto-update", "true"});
  testing::TempDir dir;
  Worker cpp(Worker::Kind::kCpp, d, dir, "cpp", {"--versions", "2"});
  cpp.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
  StateDict m1 = Model(21);
  const uint64_t v1 = d.Push(m1);
  CheckReport(cpp.Report(v1), m1);
  StateDict m2 = Model(22);
  const uint64_t v2 = d.Push(m2);
  CheckReport(cpp.Report(v2), m2);
  CHECK(cpp.proc->Wait(20s).code == 0);
}

// Issue 10 points 3 and 4: every outcome of an automatic update is visible to the trainer
// (WaitLoaded, ckptctl update --wait) and the operator (status), with the worker's own exception;
// a worker left with mixed weights is reported and restored by update --previous.
TEST_CASE("auto_update outcomes: wait_loaded, status, mixed weights and update --previous") {
  Daemon d({"--auto-update", "true"});
  testing::TempDir dir;
  Worker good(Worker::Kind::kCpp, d, dir, "good", {"--versions", "3"});
  Worker bad(Worker::Kind::kPython, d, dir, "bad",
             {"--versions", "2", "--load-fails-at-tensor", "5", "--load-fails-in-version", "2"});
  good.WaitAttached();
  bad.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));

  StateDict m1 = Model(51);
  const uint64_t v1 = d.Push(m1);
  RunResult waited = d.Ctl({"update", std::to_string(v1), "--wait", "--wait-timeout", "30s"});
  INFO(waited.err);
  CHECK(waited.exit.code == 0);
  CHECK(Contains(waited.out, "version " + std::to_string(v1) + " loaded by 2 workers"));
  CheckReport(bad.Report(v1), m1);

  // The second version fails in the Python worker's load function, after some buckets.
  StateDict m2 = Model(52);
  const uint64_t v2 = d.Push(m2);
  auto wait = d.admin->WaitLoaded(v2, absl::Seconds(30));
  INFO(wait.status().ToString());
  REQUIRE(wait.ok());
  CHECK_FALSE(wait->loaded());
  INFO(wait->summary());
  CHECK(Contains(wait->summary(), "update to version " + std::to_string(v2) + " failed"));
  CHECK(Contains(wait->summary(), "ValueError: injected load failure at tensor 5"));
  CHECK(wait->update().state() == "failed");
  CHECK(wait->update().trigger() == "auto_update");
  CheckReport(good.Report(v2), m2);

  nlohmann::json status = d.StatusJson();
  CHECK(status["last_update"]["version"] == v2);
  CHECK(status["last_update"]["state"] == "failed");
  CHECK(status["last_update"]["code"] == "ABORTED");
  bool found_bad = false;
  for (const auto& w : status["workers"]) {
    if (w["pid"] != bad.proc->pid()) {
      CHECK(w["loaded_version"] == v2);
      CHECK(w["last_update_ok"] == true);
      continue;
    }
    found_bad = true;
    CHECK(w["loaded_version"] == v1);
    CHECK(w["mixed_version"] == v2);
    CHECK(w["last_update_ok"] == false);
    CHECK(Contains(w["last_update_error"].get<std::string>(), "ValueError: injected"));
  }
  CHECK(found_bad);
  RunResult text = d.Ctl({"status"});
  CHECK(Contains(text.out, "MIXED with part of version " + std::to_string(v2)));
  CHECK(
      Contains(text.out, "last update:  version " + std::to_string(v2) + " FAILED (auto_update)"));
  CHECK_FALSE(Contains(text.out, "ABORTED: update to version"));  // the version said once
  RunResult failed_wait = d.Ctl({"update", std::to_string(v2), "--wait"});
  CHECK(failed_wait.exit.code == 1);
  // A version that was never committed is NOT_FOUND at once, not a wait until the timeout.
  auto never = d.admin->WaitLoaded(v2 + 100, absl::Seconds(30));
  CHECK(never.status().code() == absl::StatusCode::kNotFound);
  CHECK(Contains(std::string(never.status().message()), "was never committed"));
  INFO(failed_wait.out);
  CHECK(Contains(failed_wait.out,
                 "update to version " + std::to_string(v2) + " failed: 1 of 2 workers failed ("));
  CHECK_FALSE(Contains(failed_wait.out, "update to version " + std::to_string(v2) + ": "));

  // Recovery: the bad worker gets back the last version it fully loaded.
  RunResult previous = d.Ctl({"update", "--previous"});
  INFO(previous.err);
  REQUIRE(previous.exit.code == 0);
  CHECK(Contains(previous.out, "version " + std::to_string(v1) + " sent to 1 workers"));
  CheckReport(bad.Report(v1), m1);  // its second report: v1 again, whole
  status = d.StatusJson();
  for (const auto& w : status["workers"]) {
    if (w["pid"] == bad.proc->pid()) {
      CHECK(w["mixed_version"] == 0);
      CHECK(w["loaded_version"] == v1);
    }
  }
  CHECK(status["last_update"]["trigger"] == "previous");
  // Nothing is mixed any more: --previous says so.
  RunResult again = d.Ctl({"update", "--previous"});
  CHECK(again.exit.code == 1);
  CHECK(Contains(again.err, "no attached worker has mixed weights"));
  CHECK(bad.proc->Wait(20s).code == 0);
}

TEST_CASE("an update asked for the version being sent joins it and returns its outcome") {
  Daemon d({"--auto-update", "true"});
  testing::TempDir dir;
  const std::string go = dir / "go";
  Worker held(Worker::Kind::kCpp, d, dir, "held", {"--wait-for-file", go});
  held.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
  StateDict m = Model(61);
  const uint64_t version = d.Push(m);
  // The automatic update runs (the worker does not read until `go` exists).
  REQUIRE(WaitUntil([&] { return d.StatusJson()["updating_version"] == version; }, 10s));
  auto joined = std::async(std::launch::async, [&] { return d.Update(version); });
  auto by_ctl = std::async(std::launch::async, [&] {
    return d.Ctl({"update", std::to_string(version)});
  });
  // A request for another version is refused, naming the running one.
  RunResult other = d.Ctl({"update", std::to_string(version), "--force"});
  CHECK(other.exit.code == 1);
  CHECK(Contains(other.err, "an update to version " + std::to_string(version) + " is running"));
  // Both requests must have joined before the update may end: otherwise one that arrives late
  // (ckptctl is a process of its own) would start a fresh update after the worker has gone.
  REQUIRE(WaitUntil(
      [&] {
        const std::string err = d.proc->Stderr();
        size_t count = 0;
        for (size_t at = err.find("joining it"); at != std::string::npos;
             at = err.find("joining it", at + 1)) {
          ++count;
        }
        return count >= 2;
      },
      20s));
  { std::ofstream(go.c_str()) << "go"; }
  REQUIRE(joined.wait_for(30s) == std::future_status::ready);
  auto result = joined.get();
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  REQUIRE(result->workers_size() == 1);
  CHECK(result->workers(0).ok());
  CHECK_FALSE(result->workers(0).skipped());  // the automatic update's own result
  REQUIRE(by_ctl.wait_for(30s) == std::future_status::ready);
  RunResult ctl = by_ctl.get();
  INFO(ctl.err);
  CHECK(ctl.exit.code == 0);
  CHECK(Contains(ctl.out, "sent to 1 workers"));
  CheckReport(held.Report(version), m);
  CHECK(d.StatusJson()["last_update"]["trigger"] == "auto_update");
}

// The resume file a --pausable worker_client writes (OUT.resume.json), once it names `version`.
nlohmann::json ResumeReport(const std::string& out, uint64_t version) {
  auto resume = testing::WaitForWorkerReport(out + ".resume.json", version, 30s);
  INFO(out);
  REQUIRE(resume.has_value());
  return *resume;
}

TEST_CASE("a consistent update pauses every worker before any bucket and resumes all once loaded") {
  Daemon d({"--ack-timeout", "3s"});
  testing::TempDir dir;
  Worker a(Worker::Kind::kCpp, d, dir, "a", {"--pausable"});
  Worker b(Worker::Kind::kCpp, d, dir, "b", {"--pausable"});
  a.WaitAttached();
  b.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));
  StateDict m = Model(91);
  const uint64_t v = d.Push(m);
  RunResult u = d.Ctl({"update", std::to_string(v), "--consistent"});
  INFO(u.err << d.proc->Stderr());
  REQUIRE(u.exit.code == 0);
  nlohmann::json ra = a.Report(v), rb = b.Report(v);
  CheckReport(ra, m);
  CheckReport(rb, m);
  nlohmann::json pa = ResumeReport(a.out, v), pb = ResumeReport(b.out, v);
  CHECK(pa["loaded"] == true);
  CHECK(pb["loaded"] == true);
  // Every pause came before any worker's first bucket; every resume after every worker's last.
  const int64_t last_pause =
      std::max(pa["paused_ns"].get<int64_t>(), pb["paused_ns"].get<int64_t>());
  const int64_t first_resume =
      std::min(pa["resumed_ns"].get<int64_t>(), pb["resumed_ns"].get<int64_t>());
  CHECK(pa["paused_ns"].get<int64_t>() > 0);
  CHECK(pb["paused_ns"].get<int64_t>() > 0);
  CHECK(last_pause <
        std::min(ra["first_bucket_ns"].get<int64_t>(), rb["first_bucket_ns"].get<int64_t>()));
  CHECK(first_resume >
        std::max(ra["last_bucket_ns"].get<int64_t>(), rb["last_bucket_ns"].get<int64_t>()));
  CHECK(Contains(d.proc->Stderr(), "2 paused workers resume (loaded)"));
  for (Worker* w : {&a, &b}) CHECK(w->proc->Wait(20s).code == 0);

  // A worker without a pause hook: refused before anything is sent.
  Worker plain(Worker::Kind::kCpp, d, dir, "plain");
  Worker c(Worker::Kind::kCpp, d, dir, "c", {"--pausable"});
  plain.WaitAttached();
  c.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));
  StateDict m2 = Model(92);
  const uint64_t v2 = d.Push(m2);
  RunResult refused = d.Ctl({"update", std::to_string(v2), "--consistent"});
  CHECK(refused.exit.code == 1);
  CHECK(Contains(refused.err, "cannot (it attached without a pause hook); nothing was sent"));
  for (const auto& w : d.StatusJson()["workers"]) {
    CHECK(w["loaded_version"] == 0);
    CHECK(w["mixed_version"] == 0);
  }
  plain.proc->Signal(SIGTERM);
  plain.proc->Wait(10s);
  REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));

  // A worker that cannot pause: the update sends nothing and the worker that paused resumes,
  // told the version did not load.
  Worker busy(Worker::Kind::kCpp, d, dir, "busy", {"--pause-error", "still generating"});
  busy.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));
  RunResult aborted = d.Ctl({"update", std::to_string(v2), "--consistent"});
  CHECK(aborted.exit.code == 1);
  CHECK(Contains(aborted.err, "could not pause: still generating"));
  nlohmann::json pc = ResumeReport(c.out, v2);
  CHECK(pc["loaded"] == false);
  CHECK(Contains(pc["error"].get<std::string>(), "still generating"));
  for (const auto& w : d.StatusJson()["workers"]) CHECK(w["mixed_version"] == 0);
  // A worker whose engine does not stop within ack_timeout: the update fails by that deadline,
  // naming it, and the paused worker resumes.
  busy.proc->Signal(SIGTERM);
  busy.proc->Wait(10s);
  REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
  Worker slow(Worker::Kind::kCpp, d, dir, "slow", {"--pause-sleep-ms", "8000"});
  slow.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));
  StateDict m3 = Model(93);
  const uint64_t v3 = d.Push(m3);
  RunResult late = d.Ctl({"update", std::to_string(v3), "--consistent"});
  CHECK(late.exit.code == 1);
  CHECK(Contains(late.err,
                 "did not pause for version " + std::to_string(v3) + " within ack_timeout"));
  nlohmann::json pl = ResumeReport(c.out, v3);
  CHECK(pl["loaded"] == false);
  // Without --consistent the same update goes through.
  RunResult plain_update = d.Ctl({"update", std::to_string(v3)});
  INFO(plain_update.err);
  CHECK(plain_update.exit.code == 0);
  CheckReport(c.Report(v3), m3);
}

TEST_CASE("an update restricted to some workers is not joined by a plain request") {
  Daemon d;
  testing::TempDir dir;
  const std::string go = dir / "go";
  Worker held(Worker::Kind::kCpp, d, dir, "held", {"--wait-for-file", go});
  Worker other(Worker::Kind::kCpp, d, dir, "other");
  held.WaitAttached();
  other.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));
  StateDict m = Model(65);
  const uint64_t version = d.Push(m);
  v1::UpdateRequest only_held;
  only_held.set_version(version);
  only_held.add_worker_pids(held.proc->pid());
  auto restricted =
      std::async(std::launch::async, [&] { return d.admin->Update(only_held, absl::Seconds(60)); });
  REQUIRE(WaitUntil([&] { return d.StatusJson()["updating_version"] == version; }, 10s));
  // It would answer for one worker only: refused, naming the running update, not joined.
  auto plain = d.Update(version);
  CHECK(plain.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(std::string(plain.status().message()), "is running"));
  { std::ofstream(go.c_str()) << "go"; }
  REQUIRE(restricted.wait_for(30s) == std::future_status::ready);
  auto r = restricted.get();
  REQUIRE(r.ok());
  REQUIRE(r->workers_size() == 1);
  CHECK(r->workers(0).pid() == held.proc->pid());
  auto all = d.Update(version);  // now the other worker gets it
  INFO(all.status().ToString());
  REQUIRE(all.ok());
  CheckReport(other.Report(version), m);
}

TEST_CASE("update_on_attach sends the newest version to a worker that attaches") {
  testing::TempDir dir;
  SECTION("on by default with auto_update") {
    Daemon d({"--auto-update", "true"});
    StateDict m1 = Model(71);
    StateDict m2 = Model(72);
    d.Push(m1);
    const uint64_t v2 = d.Push(m2);  // no worker yet: nothing is sent
    Worker late(Worker::Kind::kPython, d, dir, "late");
    late.WaitAttached();
    CheckReport(late.Report(v2), m2);
    CHECK(late.proc->Wait(20s).code == 0);
    nlohmann::json status = d.StatusJson();
    CHECK(status["last_update"]["trigger"] == "attach");
    CHECK(status["last_update"]["state"] == "succeeded");
  }
  SECTION("off: the worker waits for the next version") {
    Daemon d({"--auto-update", "true", "--update-on-attach", "false"});
    d.Push(Model(73));
    Worker late(Worker::Kind::kCpp, d, dir, "late");
    late.WaitAttached();
    REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
    StateDict m = Model(74);
    const uint64_t next = d.Push(m);
    // Its first (and only) version is the one pushed after it attached.
    CheckReport(late.Report(next), m);
    CHECK(late.proc->Wait(20s).code == 0);
  }
}

TEST_CASE("a worker asking for tensors the version lacks fails, naming them") {
  Daemon d;
  testing::TempDir dir;
  StateDict m = Model(81);
  const uint64_t version = d.Push(m);
  Worker typo(Worker::Kind::kPython, d, dir, "typo",
              {"--tensor", "model.norm.weight", "--tensor", "model.nrom.weight"});
  Worker all(Worker::Kind::kCpp, d, dir, "all");
  typo.WaitAttached();
  all.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 2; }, 10s));
  auto result = d.Update(version);
  REQUIRE(result.status().code() == absl::StatusCode::kAborted);
  const std::string message(result.status().message());
  INFO(message);
  CHECK(Contains(message, "worker pid " + std::to_string(typo.proc->pid())));
  CHECK(Contains(message, "1 tensor(s) that version " + std::to_string(version) +
                              " lacks: 'model.nrom.weight'"));
  CHECK(Contains(message, "1 loaded it"));
  CheckReport(all.Report(version), m);
  // Nothing was sent to it: its weights are not mixed.
  const nlohmann::json status = d.StatusJson();
  for (const auto& w : status["workers"]) CHECK(w["mixed_version"] == 0);
}

// Issue 10, observability: /metrics during and after an update, /healthz and /readyz.
TEST_CASE("metrics_listen: the values during and after an update") {
  Daemon d({"--metrics-listen", "127.0.0.1:0"});
  std::string url;
  const nlohmann::json status = d.StatusJson();
  INFO(status.dump());
  for (const auto& l : status["listeners"]) {
    const std::string a = l["address"];
    if (a.rfind("http://", 0) == 0) url = a;
  }
  REQUIRE(!url.empty());
  const std::string base = url.substr(0, url.size() - std::string("/metrics").size());
  httplib::Client http(base);
  http.set_connection_timeout(5, 0);
  http.set_read_timeout(5, 0);
  auto scrape = [&] {
    auto r = http.Get("/metrics");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    return r->body;
  };
  auto has = [](const std::string& page, const std::string& line) {
    return page.find("\n" + line + "\n") != std::string::npos;
  };
  auto health = http.Get("/healthz");
  REQUIRE(health);
  CHECK(health->status == 200);
  REQUIRE(WaitUntil(
      [&] {
        auto r = http.Get("/readyz");
        return r && r->status == 200;
      },
      30s));

  testing::TempDir dir;
  const std::string go = dir / "go";
  Worker held(Worker::Kind::kCpp, d, dir, "held", {"--wait-for-file", go, "--versions", "2"});
  held.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
  StateDict m = Model(91);
  const uint64_t version = d.Push(m);
  std::string page = scrape();
  CHECK(has(page, "ckpt_versions{state=\"committed\"} 1"));
  CHECK(has(page, "ckpt_version_bytes{state=\"committed\"} " + std::to_string(m.total)));
  CHECK(has(page, "ckpt_pushes_total{path=\"local\"} 1"));  // a trainer on the Unix socket
  CHECK(has(page, "ckpt_push_bytes_total{path=\"local\"} " + std::to_string(m.total)));
  CHECK(has(page, "ckpt_workers_attached 1"));
  CHECK(has(page, "ckpt_workers_by_loaded_version{version=\"0\"} 1"));

  auto update = std::async(std::launch::async, [&] { return d.Update(version); });
  REQUIRE(WaitUntil(
      [&] { return has(scrape(), "ckpt_updating_version " + std::to_string(version)); }, 10s));
  CHECK(has(scrape(), "ckpt_updates_total{outcome=\"succeeded\"} 0"));
  { std::ofstream(go.c_str()) << "go"; }
  REQUIRE(update.wait_for(30s) == std::future_status::ready);
  REQUIRE(update.get().ok());
  page = scrape();
  CHECK(has(page, "ckpt_updating_version 0"));
  CHECK(has(page, "ckpt_updates_total{outcome=\"succeeded\"} 1"));
  CHECK(has(page, "ckpt_updates_total{outcome=\"failed\"} 0"));
  CHECK(has(page, "ckpt_update_seconds_count 1"));
  CHECK(has(page, "ckpt_update_bytes_total " + std::to_string(m.total)));
  CHECK(has(page, "ckpt_workers_by_loaded_version{version=\"" + std::to_string(version) + "\"} 1"));
  CHECK(has(page, "ckpt_host_memory_budget_bytes " + std::to_string(64 << 20)));
  CHECK(has(page, "ckpt_store_ready 1"));
  CheckReport(held.Report(version), m);
}

TEST_CASE("attach refuses a missing nonce, an unproven identity and a wrong pid") {
  Daemon d;
  v1::AttachRequest request;
  request.set_pid(::getpid());
  request.set_engine("raw");

  request.set_nonce("short");
  auto bad_nonce = testing::RawAttach(d.socket, request, /*present_nonce=*/false);
  CHECK(bad_nonce.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(bad_nonce.status.error_message(), "nonce"));
  CHECK_FALSE(bad_nonce.got_slots);

  request.set_nonce("0123456789abcdef-not-presented");
  auto unproven = testing::RawAttach(d.socket, request, /*present_nonce=*/false);
  CHECK(unproven.status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(Contains(unproven.status.error_message(), "cannot confirm the worker's identity"));
  CHECK_FALSE(unproven.got_slots);

  request.set_nonce("0123456789abcdef-wrong-pid");
  request.set_pid(::getpid() + 100000);
  auto wrong_pid = testing::RawAttach(d.socket, request, /*present_nonce=*/true);
  CHECK(wrong_pid.status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(Contains(wrong_pid.status.error_message(), "is not the pid of the process"));
  CHECK(Contains(wrong_pid.verdict, "refused:"));
  CHECK_FALSE(wrong_pid.got_slots);

  request.set_nonce("0123456789abcdef-good");
  request.set_pid(::getpid());
  auto good = testing::RawAttach(d.socket, request, /*present_nonce=*/true);
  CHECK(good.got_slots);
  CHECK(good.verdict == "ok");
  CHECK(good.status.ok());
  // Finding 10 of the security review: the slots came O_RDWR and unsealed, so one worker could
  // change what the others read. Sealed now: readable, and not writable by any route.
  CHECK(good.slot_fds == 2);
  CHECK(good.readable_slots == 2);
  CHECK(good.writable_slots == 0);
  CHECK(d.Workers() == 0);  // it detached again
}

TEST_CASE("silent descriptor-socket connections do not delay a worker's attach") {
  // Finding 9 of the security review: nonces were read one connection at a time with a 2 s limit
  // each, so three silent connections failed a real attach and ten blocked every attach for ~20 s.
  Daemon d;
  std::vector<ScopedFd> silent;
  for (int i = 0; i < 20; ++i) {
    ScopedFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, (d.socket + ".fds").c_str(), sizeof(addr.sun_path) - 1);
    REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    silent.push_back(std::move(fd));
  }
  v1::AttachRequest request;
  request.set_pid(::getpid());
  request.set_engine("raw");
  request.set_nonce("0123456789abcdef-after-silent-ones");
  const auto start = std::chrono::steady_clock::now();
  auto good = testing::RawAttach(d.socket, request, /*present_nonce=*/true);
  CHECK(good.got_slots);
  CHECK(good.verdict == "ok");
  CHECK(std::chrono::steady_clock::now() - start < 2s);
}

TEST_CASE("only the daemon's uid, root and uids with the worker role may attach") {
  if (::geteuid() != 0) {
    WARN("not root: cannot run a worker as another user; skipped");
    return;
  }
  for (const char* grant : {"", "--allowed-uids", "--uid-roles"}) {
    INFO("grant: " << grant);
    const bool allowed = grant[0] != 0;
    std::vector<std::string> extra;
    if (std::string(grant) == "--allowed-uids") extra = {grant, std::to_string(kNobody)};
    if (std::string(grant) == "--uid-roles") extra = {grant, std::to_string(kNobody) + "=worker"};
    Daemon d(extra);
    testing::TempDir dir;
    REQUIRE(::chmod(d.dir.path().c_str(), 0755) == 0);
    struct stat st;
    REQUIRE(::stat(d.socket.c_str(), &st) == 0);
    // The sockets open up (0666) only when another uid has a role; each call is checked anyway,
    // so open them in the refused case too, to show that the uid, not the mode, decides.
    CHECK((st.st_mode & 0777) == (allowed ? 0666 : 0600));
    REQUIRE(::chmod(d.socket.c_str(), 0666) == 0);
    REQUIRE(::chmod((d.socket + ".fds").c_str(), 0666) == 0);
    REQUIRE(::chmod(dir.path().c_str(), 0777) == 0);
    const std::string binary =
        testing::CopyExecutable(Runfile("tests/integration/worker_client"), dir.path());
    SpawnOptions as_nobody;
    as_nobody.run_as_uid = kNobody;
    Worker w(Worker::Kind::kCpp, d, dir, "nobody", {}, as_nobody, binary);
    if (!allowed) {
      testing::ExitInfo e = w.proc->Wait(20s);
      INFO("worker stderr: " << w.proc->Stderr());
      CHECK(e.code == 1);
      // Closed at accept on both sockets (a uid without any role); the error says why.
      CHECK(Contains(w.proc->Stderr(), "UNAVAILABLE"));
      CHECK(Contains(w.proc->Stderr(), "role: is uid 65534 in its uid_roles?"));
      CHECK(d.Workers() == 0);
    } else {
      w.WaitAttached();
      REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
      CHECK(d.StatusJson()["workers"][0]["uid"] == kNobody);
    }
  }
}

// ckptctl with its stderr on a pseudo-terminal (so that it draws progress) and its stdout in a
// file; a thread collects what it writes on the terminal.
class TerminalRun {
 public:
  TerminalRun(std::vector<std::string> argv, const std::string& out_path) : out_path_(out_path) {
    struct winsize size {};
    size.ws_col = 200;
    size.ws_row = 24;
    int master = -1, slave = -1;
    REQUIRE(::openpty(&master, &slave, nullptr, nullptr, &size) == 0);
    master_ = ScopedFd(master);
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {  // only async-signal-safe calls until exec
      const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (out < 0 || ::dup2(out, 1) < 0 || ::dup2(slave, 2) < 0) ::_exit(126);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(slave);
    reader_ = std::thread([this] { Read(); });
  }
  ~TerminalRun() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    stop_ = true;
    if (reader_.joinable()) reader_.join();
  }

  // Everything written on the terminal so far.
  std::string Terminal() {
    std::lock_guard<std::mutex> lock(mu_);
    return terminal_;
  }
  bool WaitForTerminal(const std::string& needle, std::chrono::milliseconds timeout) {
    return WaitUntil([&] { return Contains(Terminal(), needle); }, timeout);
  }
  // The exit code (-1: still running at `timeout`, then killed).
  int Wait(std::chrono::milliseconds timeout) {
    int status = 0;
    const bool done = WaitUntil([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; }, timeout);
    exited_ = true;
    if (!done) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    stop_ = true;  // the reader drains what is left, then ends
    reader_.join();
    return done && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::string Stdout() const {
    std::ifstream in(out_path_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  void Read() {
    char buffer[4096];
    for (;;) {
      pollfd p{master_.get(), POLLIN, 0};
      const int ready = ::poll(&p, 1, 50);
      if (ready == 0) {
        if (stop_) return;
        continue;
      }
      const ssize_t n = ::read(master_.get(), buffer, sizeof(buffer));
      if (n <= 0) return;  // EIO: every end of the terminal's other side is closed
      std::lock_guard<std::mutex> lock(mu_);
      terminal_.append(buffer, static_cast<size_t>(n));
    }
  }

  const std::string out_path_;
  ScopedFd master_;
  pid_t pid_ = -1;
  bool exited_ = false;
  std::atomic<bool> stop_{false};
  std::thread reader_;
  std::mutex mu_;
  std::string terminal_;
};

// Issue 10 point 9: on a terminal `ckptctl update` shows the running update's progress (from
// Admin.Status) and erases it when the update returns; with --json or without a terminal nothing.
TEST_CASE("ckptctl update draws progress on a terminal, and nothing with --json") {
  Daemon d;
  testing::TempDir dir;
  StateDict m = Model(71);
  const uint64_t version = d.Push(m);
  const std::string go = dir / "go";
  // It attaches, then reads nothing until `go` exists: the update waits at 0 buckets meanwhile.
  Worker held(Worker::Kind::kCpp, d, dir, "held", {"--wait-for-file", go, "--versions", "2"});
  held.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
  const std::string ctl = Runfile("client/ckptctl/ckptctl");

  TerminalRun run({ctl, "--socket", d.socket, "update", std::to_string(version)}, dir / "out");
  // The bar with the update's figures (every bucket still to go, one worker).
  const bool drawn = run.WaitForTerminal(" buckets  0 B/", 10s);
  INFO("terminal: " << run.Terminal());
  REQUIRE(drawn);
  const nlohmann::json progress = d.StatusJson()["last_update"]["progress"];
  const std::string buckets =
      "0/" + std::to_string(progress["buckets_total"].get<int>()) + " buckets";
  REQUIRE(run.WaitForTerminal(buckets, 5s));
  CHECK(Contains(run.Terminal(), "\r\033[K[--------------------]   0%  " + buckets));
  CHECK(Contains(run.Terminal(), "  1 worker  "));
  { std::ofstream(go.c_str()) << "go"; }
  REQUIRE(run.Wait(30s) == 0);
  const std::string terminal = run.Terminal();
  INFO("terminal: " << terminal);
  INFO("stdout: " << run.Stdout());
  CHECK(Contains(run.Stdout(), "version " + std::to_string(version) + " sent to 1 workers"));
  CHECK_FALSE(Contains(run.Stdout(), "\033"));  // the result alone on stdout
  // The line is erased at the end: the terminal's last bytes clear it.
  REQUIRE(terminal.size() >= 4);
  CHECK(terminal.substr(terminal.size() - 4) == "\r\033[K");
  CheckReport(held.Report(version), m);

  // --wait draws a waiting line with who holds what; the version is not sent, so it times out.
  const uint64_t v2 = d.Push(Model(72));
  TerminalRun waiting(
      {ctl, "--socket", d.socket, "update", std::to_string(v2), "--wait", "--wait-timeout", "1s"},
      dir / "wait.out");
  CHECK(waiting.Wait(20s) == 1);
  INFO("terminal: " << waiting.Terminal());
  CHECK(Contains(waiting.Terminal(), "waiting until every worker holds version " +
                                         std::to_string(v2) + " (0 of 1 do)"));

  // --json: the JSON alone, nothing on the terminal.
  TerminalRun json(
      {ctl, "--socket", d.socket, "update", std::to_string(version), "--force", "--json"},
      dir / "json.out");
  REQUIRE(json.Wait(30s) == 0);
  CHECK(json.Terminal().empty());
  CHECK(nlohmann::json::parse(json.Stdout())["version"] == version);
  CHECK(held.proc->Wait(20s).code == 0);
}

// Issue 10 point 9: an error says its context once ("update to version 1: ...", not "Update
// failed: update to version 1: ...").
TEST_CASE("ckptctl update errors say the version once") {
  Daemon d;
  testing::TempDir dir;
  const uint64_t version = d.Push(Model(81));
  Worker picky(Worker::Kind::kCpp, d, dir, "picky", {"--tensor", "no.such.tensor"});
  picky.WaitAttached();
  REQUIRE(WaitUntil([&] { return d.Workers() == 1; }, 10s));
  RunResult r = d.Ctl({"update", std::to_string(version)});
  INFO(r.err);
  CHECK(r.exit.code == 1);
  CHECK(testing::Lines(r.err).size() == 1);
  CHECK(r.err.rfind("ckptctl: update to version " + std::to_string(version) +
                        ": 1 of 1 workers failed (worker pid " + std::to_string(picky.proc->pid()),
                    0) == 0);
  CHECK(Contains(r.err, "that version " + std::to_string(version) + " lacks: 'no.such.tensor'"));
  CHECK_FALSE(Contains(r.err, "Update failed"));
  // A message without the context keeps the call's name in front.
  RunResult unknown = d.Ctl({"update", "99"});
  CHECK(unknown.exit.code == 1);
  CHECK(Contains(unknown.err, "ckptctl: Update failed: no version 99"));
}

}  // namespace
}  // namespace ckpt
