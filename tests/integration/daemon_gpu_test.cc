// GPU machine only: the real daemon picks the cuda backend by itself and reports the GPUs it sees,
// by UUID, whatever CUDA_VISIBLE_DEVICES says about their order.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "gpu/gpu_info.h"
#include "tests/testing/subprocess.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

nlohmann::json StatusOfDaemon(const std::string& backend, const SpawnOptions& options) {
  DaemonProcess daemon({"--backend", backend, "--host-memory-budget", "1GiB"}, options,
                       std::chrono::seconds(30));
  INFO("daemon stderr: " << daemon.proc->Stderr());
  REQUIRE(daemon.ready());
  RunResult r = daemon.Ctl({"status", "--json"});
  INFO("ckptctl stderr: " << r.err);
  REQUIRE(r.exit.code == 0);
  daemon.proc->Signal(SIGTERM);
  ExitInfo e = daemon.proc->Wait(30s);
  CHECK(e.exited);
  CHECK(e.code == 0);
  return nlohmann::json::parse(r.out);
}

TEST_CASE("auto picks cuda on a GPU machine and Status lists every GPU") {
  gpu::GpuProbe probe = gpu::ProbeGpus();
  INFO(probe.no_gpu_reason);
  REQUIRE_FALSE(probe.gpus.empty());
  nlohmann::json j = StatusOfDaemon("auto", {});
  CHECK(j["backend"] == "cuda");
  CHECK(j["no_gpu_reason"] == "");
  REQUIRE(j["gpus"].size() == probe.gpus.size());
  for (size_t i = 0; i < probe.gpus.size(); ++i) {
    CHECK(j["gpus"][i]["uuid"] == probe.gpus[i].uuid);
    CHECK(j["gpus"][i]["name"] == probe.gpus[i].name);
    CHECK(j["gpus"][i]["total_memory_bytes"] == probe.gpus[i].total_memory_bytes);
    WARN("gpu " << i << ": " << j["gpus"][i].dump());
  }
  CHECK(StatusOfDaemon("cuda", {})["backend"] == "cuda");
}

TEST_CASE("a reversed CUDA_VISIBLE_DEVICES reorders indices but not UUIDs") {
  gpu::GpuProbe probe = gpu::ProbeGpus();
  REQUIRE_FALSE(probe.gpus.empty());
  std::string reversed;
  for (size_t i = probe.gpus.size(); i-- > 0;) {
    reversed += std::to_string(i) + (i ? "," : "");
  }
  SpawnOptions options;
  options.env = {{"CUDA_VISIBLE_DEVICES", reversed}};
  nlohmann::json j = StatusOfDaemon("auto", options);
  REQUIRE(j["gpus"].size() == probe.gpus.size());
  std::set<std::string> expected, seen;
  for (const auto& g : probe.gpus) expected.insert(g.uuid);
  for (const auto& g : j["gpus"]) seen.insert(g["uuid"].get<std::string>());
  CHECK(seen == expected);
  CHECK(j["gpus"][0]["uuid"] == probe.gpus.back().uuid);
}

TEST_CASE("hiding every GPU makes auto fall back to host and cuda fail at start-up") {
  SpawnOptions hide;
  hide.env = {{"CUDA_VISIBLE_DEVICES", ""}};
  nlohmann::json j = StatusOfDaemon("auto", hide);
  CHECK(j["backend"] == "host");
  CHECK(j["gpus"].empty());
  CHECK(j["no_gpu_reason"] != "");
  TempDir dir;
  RunResult r = Run(
      {Runfile("daemon/ckpt-engined"), "--backend", "cuda", "--listen-unix", dir / "d.sock"}, hide);
  CHECK(r.exit.code == 2);
  CHECK(r.err.find("no CUDA device is visible") != std::string::npos);
}

}  // namespace
}  // namespace ckpt::testing
