// Updates on the cuda backend (tag gpu): the real daemon drives every visible GPU; one C++ worker
// per GPU, each started under a different CUDA_VISIBLE_DEVICES ordering, and a Python (torch)
// worker when torch with CUDA is available, receive a pushed version bit-exact through CUDA IPC.
// A worker naming a GPU the daemon does not drive is refused. Workers with verify_checksums
// receive bit-exact too, and one of them catches a slot overwritten by a rogue worker on its GPU
// through the (always read-write) CUDA IPC mapping.
#include <unistd.h>
#include <xxhash.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "common/dtype.h"
#include "gpu/gpu_info.h"
#include "tests/testing/raw_attach.h"
#include "tests/testing/state_dict.h"
#include "tests/testing/subprocess.h"

namespace ckpt {
namespace {

using client::TensorView;
using testing::Runfile;
using testing::SpawnOptions;
using testing::StateDict;
using testing::Subprocess;
using testing::WaitUntil;
using namespace std::chrono_literals;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ~3 MiB over 1 MiB buckets: several buckets through both slots.
StateDict Model() {
  StateDict m;
  m.Add("embed", DType::kBfloat16, {512, 640}, 1);
  for (int l = 0; l < 4; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    m.Add(p + "qkv", DType::kBfloat16, {384, 512}, 10 + l);
    m.Add(p + "up", DType::kFloat32, {128, 256}, 20 + l);
    m.Add(p + "down", DType::kFloat8E5m2, {256, 300}, 30 + l);
    m.Add(p + "norm", DType::kFloat32, {512}, 40 + l);
  }
  m.Add("step", DType::kInt64, {}, 99);
  return m;
}

void CheckReport(const std::string& path, uint64_t version, const StateDict& m) {
  auto report = testing::WaitForWorkerReport(path, version, 30s);
  REQUIRE(report.has_value());
  CHECK(testing::CompareWorkerReport(*report, m) == "");
}

// The Python interpreter and package for a torch worker: on the GPU machine (CKPT_BIN_DIR set by
// the bundle runner) python3 from PATH with the bundle's python/ and lib/; empty when torch with
// CUDA is not importable.
struct PythonWorkerEnv {
  std::string python, pythonpath, library, script;
};
std::optional<PythonWorkerEnv> FindPython() {
  PythonWorkerEnv env;
  if (const char* bin = std::getenv("CKPT_BIN_DIR")) {
    env.python = "python3";
    env.pythonpath = std::string(bin) + "/../python";
    env.library = std::string(bin) + "/../lib/libckpt_client.so";
    env.script = std::string(bin) + "/worker_process.py";
  } else {
    env.python = "/usr/bin/python3";
    const std::string init = Runfile("client/python/ckpt_engine/__init__.py");
    env.pythonpath = init.substr(0, init.rfind("/ckpt_engine/"));
    env.library = Runfile("client/libckpt_client.so");
    env.script = Runfile("tests/python/worker_process.py");
  }
  testing::RunResult probe = testing::Run(
      {"/usr/bin/env", env.python, "-c", "import torch; assert torch.cuda.is_available()"});
  if (probe.exit.code != 0) return std::nullopt;
  return env;
}

TEST_CASE("cuda: a worker per GPU, under reordered CUDA_VISIBLE_DEVICES, receives bit-exact") {
  const gpu::GpuProbe probe = gpu::ProbeGpus();
  REQUIRE_FALSE(probe.gpus.empty());
  const int n = static_cast<int>(probe.gpus.size());
  testing::DaemonProcess d({"--backend", "cuda", "--host-memory-budget", "256MiB", "--bucket-bytes",
                            "1MiB", "--log-level", "info"});
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(d.ready());
  auto endpoint = *client::ResolveEndpoint(d.socket, "");
  auto trainer = std::move(*client::TrainerClient::Connect(endpoint));
  auto admin = std::move(*client::DaemonClient::Connect(endpoint));
  StateDict m = Model();
  auto pushed = trainer->PushTensors(m.views, {});
  REQUIRE(pushed.ok());
  const uint64_t version = pushed->version();

  testing::TempDir dir;
  std::vector<std::unique_ptr<Subprocess>> workers;
  std::vector<std::string> outs;
  for (int g = 0; g < n; ++g) {
    // GPU g comes last in a rotation that starts after it: its ordinal in the worker (n - 1)
    // differs from the daemon's (g) unless g == n - 1.
    std::vector<std::string> order;
    for (int k = 0; k < n; ++k) order.push_back(std::to_string((g + 1 + k) % n));
    const int ordinal = n - 1;  // where g lands in that rotation
    SpawnOptions options;
    options.env.push_back({"CUDA_VISIBLE_DEVICES", absl::StrJoin(order, ",")});
    outs.push_back(dir / ("gpu" + std::to_string(g) + ".json"));
    workers.push_back(std::make_unique<Subprocess>(
        std::vector<std::string>{Runfile("tests/integration/worker_client"), "--socket", d.socket,
                                 "--out", outs.back(), "--cuda-device", std::to_string(ordinal),
                                 "--engine", "cpp-gpu"},
        options));
  }
  auto python = FindPython();
  if (python.has_value()) {
    SpawnOptions options;
    options.env = {{"PYTHONPATH", python->pythonpath},
                   {"CKPT_CLIENT_LIB", python->library},
                   {"PYTHONDONTWRITEBYTECODE", "1"}};
    outs.push_back(dir / "python.json");
    workers.push_back(std::make_unique<Subprocess>(
        std::vector<std::string>{"/usr/bin/env", python->python, python->script, "--socket",
                                 d.socket, "--out", outs.back(), "--cuda-device", "0", "--engine",
                                 "python-gpu"},
        options));
  } else {
    WARN("python3 with torch and CUDA not found: the Python GPU worker is not run");
  }
  const size_t expected = workers.size();
  auto attached = [&] {
    auto s = admin->Status(absl::Seconds(5));
    return s.ok() && static_cast<size_t>(s->workers_size()) == expected;
  };
  bool all_attached = WaitUntil(attached, 60s);
  for (auto& w : workers) INFO("worker stderr: " << w->Stderr());
  REQUIRE(all_attached);
  auto status = admin->Status(absl::Seconds(5));
  REQUIRE(status.ok());
  CHECK(status->gpu_memory_per_gpu_bytes() == 2u << 20);
  for (const auto& w : status->workers()) {
    bool known = false;
    for (const auto& g : probe.gpus) known = known || g.uuid == w.gpu_uuid();
    CHECK(known);
  }

  v1::UpdateRequest request;
  request.set_version(version);
  auto result = admin->Update(request, absl::Seconds(120));
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  CHECK(result->buckets() >= 3);
  for (const auto& w : result->workers()) CHECK(w.ok());
  for (size_t i = 0; i < outs.size(); ++i) {
    INFO("worker " << i << " stderr: " << workers[i]->Stderr());
    CheckReport(outs[i], version, m);
  }
  for (auto& w : workers) CHECK(w->Wait(30s).code == 0);
}

TEST_CASE("cuda: verify_checksums passes, and catches a slot overwritten through CUDA IPC") {
  const gpu::GpuProbe probe = gpu::ProbeGpus();
  REQUIRE_FALSE(probe.gpus.empty());
  const int n = static_cast<int>(probe.gpus.size());
  testing::DaemonProcess d({"--backend", "cuda", "--host-memory-budget", "256MiB", "--bucket-bytes",
                            "1MiB", "--log-level", "info", "--ack-timeout", "60s"});
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(d.ready());
  auto endpoint = *client::ResolveEndpoint(d.socket, "");
  auto trainer = std::move(*client::TrainerClient::Connect(endpoint));
  auto admin = std::move(*client::DaemonClient::Connect(endpoint));
  StateDict m = Model();
  auto pushed = trainer->PushTensors(m.views, {});
  REQUIRE(pushed.ok());
  const uint64_t version = pushed->version();
  testing::TempDir dir;
  auto wait_workers = [&](size_t expected) {
    return WaitUntil(
        [&] {
          auto s = admin->Status(absl::Seconds(5));
          return s.ok() && static_cast<size_t>(s->workers_size()) == expected;
        },
        60s);
  };
  v1::UpdateRequest request;
  request.set_version(version);
  request.set_force(true);

  // 1. Verifying workers: one per GPU (all tensors), a subset on GPU 0, and Python if it can.
  {
    std::vector<std::unique_ptr<Subprocess>> workers;
    std::vector<std::string> outs;
    std::vector<std::vector<std::string>> only;
    for (int g = 0; g < n; ++g) {
      outs.push_back(dir / ("verify" + std::to_string(g) + ".json"));
      only.push_back({});
      workers.push_back(std::make_unique<Subprocess>(std::vector<std::string>{
          Runfile("tests/integration/worker_client"), "--socket", d.socket, "--out", outs.back(),
          "--cuda-device", std::to_string(g), "--engine", "cpp-verify", "--verify-checksums"}));
    }
    outs.push_back(dir / "verify-subset.json");
    only.push_back({"layers.1.qkv", "layers.3.down", "step"});
    workers.push_back(std::make_unique<Subprocess>(std::vector<std::string>{
        Runfile("tests/integration/worker_client"), "--socket", d.socket, "--out", outs.back(),
        "--cuda-device", "0", "--engine", "cpp-verify-subset", "--verify-checksums", "--tensor",
        only.back()[0], "--tensor", only.back()[1], "--tensor", only.back()[2]}));
    if (auto python = FindPython(); python.has_value()) {
      SpawnOptions options;
      options.env = {{"PYTHONPATH", python->pythonpath},
                     {"CKPT_CLIENT_LIB", python->library},
                     {"PYTHONDONTWRITEBYTECODE", "1"}};
      outs.push_back(dir / "verify-python.json");
      only.push_back({});
      workers.push_back(std::make_unique<Subprocess>(
          std::vector<std::string>{"/usr/bin/env", python->python, python->script, "--socket",
                                   d.socket, "--out", outs.back(), "--cuda-device", "0", "--engine",
                                   "python-verify", "--verify-checksums"},
          options));
    } else {
      WARN("python3 with torch and CUDA not found: the Python GPU worker is not run");
    }
    const bool attached = wait_workers(workers.size());
    for (auto& w : workers) INFO("worker stderr: " << w->Stderr());
    REQUIRE(attached);
    auto result = admin->Update(request, absl::Seconds(120));
    INFO(result.status().ToString());
    REQUIRE(result.ok());
    for (const auto& w : result->workers()) CHECK(w.ok());
    for (size_t i = 0; i < outs.size(); ++i) {
      INFO("worker " << i << " stderr: " << workers[i]->Stderr());
      auto report = testing::WaitForWorkerReport(outs[i], version, 30s);
      REQUIRE(report.has_value());
      CHECK(testing::CompareWorkerReport(*report, m, only[i]) == "");
    }
    for (auto& w : workers) CHECK(w->Wait(30s).code == 0);
    REQUIRE(wait_workers(0));
  }

  // 2. A rogue worker on GPU 0 overwrites the first tensor of bucket 0 in the shared slot (with
  // cudaMemset through its IPC mapping) and only then lets the verifying worker on GPU 0 read it.
  const std::string done = dir / "corrupted";
  Subprocess rogue({Runfile("tests/integration/worker_client"), "--socket", d.socket, "--out",
                    dir / "rogue.json", "--cuda-device", "0", "--engine", "rogue",
                    "--corrupt-first-bucket", done});
  Subprocess verifier({Runfile("tests/integration/worker_client"), "--socket", d.socket,
                       "--cuda-device", "0", "--engine", "verifier", "--verify-checksums",
                       "--wait-for-file", done});
  const bool attached = wait_workers(2);
  INFO("rogue stderr: " << rogue.Stderr());
  INFO("verifier stderr: " << verifier.Stderr());
  REQUIRE(attached);
  auto result = admin->Update(request, absl::Seconds(120));
  const std::string message(result.status().message());
  INFO(message);
  REQUIRE(result.status().code() == absl::StatusCode::kAborted);
  CHECK(Contains(message, "1 of 2 workers failed (worker pid " + std::to_string(verifier.pid())));
  const auto mismatch = testing::ExpectedMismatch(message, m, '\xA5');
  REQUIRE(mismatch.has_value());
  const std::string& hashes = mismatch->hashes;
  CHECK(Contains(message, hashes));
  testing::ExitInfo e = verifier.Wait(30s);
  CHECK(e.code == 1);
  CHECK(Contains(verifier.Stderr(), "DATA_LOSS: version " + std::to_string(version) + " bucket 0"));
  CHECK(Contains(verifier.Stderr(), hashes));
  CHECK(rogue.Wait(30s).code == 0);
}

// Issue 10 point 1: Kimi-K2 / DeepSeek-V3's 163840 x 7168 bf16 embedding (2.35 GB) is larger than
// the largest automatic bucket (2 GiB): with the default bucket_bytes and slots_per_gpu it is split
// across buckets and reaches the worker whole; the worker checks every tensor's XXH3-64 (the
// checksums the trainer computed from its own bytes) after the Consumer put it together.
TEST_CASE("cuda: a 2.35 GB tensor goes through the default bucket size, bit-exact") {
  const gpu::GpuProbe probe = gpu::ProbeGpus();
  REQUIRE_FALSE(probe.gpus.empty());
  // Only the budget is set (the default, half of RAM, would pin far more than this test needs).
  testing::DaemonProcess d(
      {"--backend", "cuda", "--host-memory-budget", "6GiB", "--log-level", "info"});
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(d.ready());
  auto endpoint = *client::ResolveEndpoint(d.socket, "");
  auto trainer = std::move(*client::TrainerClient::Connect(endpoint));
  auto admin = std::move(*client::DaemonClient::Connect(endpoint));
  auto status = admin->Status(absl::Seconds(5));
  REQUIRE(status.ok());
  const uint64_t bucket = status->bucket_bytes();
  StateDict m;
  m.Add("model.norm.weight", DType::kBfloat16, {7168}, 1);
  m.Add("model.embed_tokens.weight", DType::kBfloat16, {163840, 7168}, 2);
  m.Add("model.layers.0.input_layernorm.weight", DType::kBfloat16, {7168}, 3);
  REQUIRE(m.views[1].bytes > bucket);
  const auto push_start = std::chrono::steady_clock::now();
  auto pushed = trainer->PushTensors(m.views, {});
  INFO(pushed.status().ToString());
  REQUIRE(pushed.ok());
  const double push_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - push_start).count();

  // The worker copies every tensor into its own buffer, as an engine's load_weights would.
  const uint64_t own = (m.total + (1 << 20)) / 256 * 256 + 4096;
  Subprocess worker({Runfile("tests/integration/worker_client"), "--socket", d.socket,
                     "--cuda-device", "0", "--engine", "cpp-gpu", "--verify-checksums",
                     "--copy-into-bytes", std::to_string(own)});
  auto attached = [&] {
    auto s = admin->Status(absl::Seconds(5));
    return s.ok() && s->workers_size() == 1;
  };
  bool ok = WaitUntil(attached, 60s);
  INFO("worker stderr: " << worker.Stderr());
  REQUIRE(ok);
  v1::UpdateRequest request;
  request.set_version(pushed->version());
  auto result = admin->Update(request, absl::Seconds(300));
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  REQUIRE(result->workers_size() == 1);
  CHECK(result->workers(0).ok());
  CHECK(result->workers(0).tensors() == 3);
  CHECK(result->workers(0).bytes() == m.total);
  CHECK(result->buckets() >= 3);  // two pieces of the embedding, at least
  REQUIRE(worker.Wait(60s).code == 0);
  nlohmann::json line = nlohmann::json::parse(worker.Stdout());
  CHECK(line["bytes"] == m.total);
  WARN(absl::StrFormat(
      "2.35 GB tensor, bucket_bytes %.2f GiB (default), %d buckets: push %.2f s (%.2f GB/s), "
      "update %.2f s (%.2f GB/s; fill %.2f s, load %.2f s summed over buckets), worker first "
      "bucket to done %.2f s",
      bucket / double(1 << 30), result->buckets(), push_s, m.total / 1e9 / push_s,
      result->seconds(), m.total / 1e9 / result->seconds(), result->fill_seconds(),
      result->load_seconds(), line["seconds_first_bucket_to_done"].get<double>()));
}

TEST_CASE("cuda: a worker naming a GPU the daemon does not drive is refused") {
  testing::DaemonProcess d(
      {"--backend", "cuda", "--host-memory-budget", "64MiB", "--bucket-bytes", "1MiB"});
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(d.ready());
  v1::AttachRequest request;
  request.set_pid(::getpid());
  request.set_gpu_uuid("GPU-00000000-0000-0000-0000-000000000000");
  request.set_nonce("gpu-test-nonce-0123456789");
  auto r = testing::RawAttach(d.socket, request, /*present_nonce=*/true);
  CHECK(r.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(Contains(r.status.error_message(),
                 "does not drive GPU 'GPU-00000000-0000-0000-0000-000000000000'"));
  CHECK(Contains(r.status.error_message(), gpu::ProbeGpus().gpus.at(0).uuid));
  CHECK_FALSE(r.got_slots);
}

}  // namespace
}  // namespace ckpt
