#include "client/ckptctl/status_format.h"

#include <catch2/catch.hpp>

namespace ckpt::ctl {
namespace {

v1::StatusResponse Sample() {
  v1::StatusResponse s;
  s.set_daemon_version("0.1.0");
  s.set_pid(4242);
  s.set_uptime_seconds(192.5);
  s.set_backend("cuda");
  v1::GpuStatus* g = s.add_gpus();
  g->set_index(0);
  g->set_name("NVIDIA H200");
  g->set_uuid("GPU-01234567-89ab-cdef-0123-456789abcdef");
  g->set_total_memory_bytes(150ull << 30);
  g->set_pci_bus_id("0000:1b:00.0");
  s.set_host_memory_budget_bytes(64ull << 30);
  s.add_listen_addresses("unix:/run/ckpt-engine/ckpt-engined.sock");
  s.add_listen_addresses("0.0.0.0:7070");
  return s;
}

TEST_CASE("JSON keeps numbers as numbers and every field present") {
  nlohmann::json j = StatusJson(Sample());
  CHECK(j["pid"] == 4242);
  CHECK(j["backend"] == "cuda");
  CHECK(j["host_memory_budget_bytes"].is_number_unsigned());
  CHECK(j["host_memory_budget_bytes"] == (64ull << 30));
  CHECK(j["gpus"].size() == 1);
  CHECK(j["gpus"][0]["uuid"] == "GPU-01234567-89ab-cdef-0123-456789abcdef");
  CHECK(j["listen_addresses"].size() == 2);
  CHECK(j["latest_committed_version"] == 0);
  CHECK(j.contains("no_gpu_reason"));
  CHECK(StatusJson(v1::StatusResponse())["gpus"].is_array());
}

TEST_CASE("text names the backend, GPUs, memory and addresses") {
  std::string t = StatusText(Sample());
  CHECK(t.find("ckpt-engined 0.1.0 (pid 4242), up 3m12s") != std::string::npos);
  CHECK(t.find("backend:      cuda") != std::string::npos);
  CHECK(t.find("[0] NVIDIA H200") != std::string::npos);
  CHECK(t.find("0 B used of 64.0 GiB budget") != std::string::npos);
  CHECK(t.find("0.0.0.0:7070") != std::string::npos);
  v1::StatusResponse none;
  none.set_no_gpu_reason("no CUDA-capable device is detected");
  CHECK(StatusText(none).find("none (no CUDA-capable device is detected)") != std::string::npos);
}

TEST_CASE("the store's warm-up: progress, pinning, ready, and a warm-up that stopped early") {
  v1::StatusResponse s = Sample();
  s.set_store_ready_bytes(16ull << 30);
  s.set_store_warmup_seconds(3.2);
  std::string t = StatusText(s);
  CHECK(t.find("store:        getting memory ready: 16.0 GiB of 64.0 GiB (25%), 3.2s so far") !=
        std::string::npos);
  nlohmann::json j = StatusJson(s);
  CHECK(j["store_ready_bytes"] == (16ull << 30));
  CHECK(j["store_ready"] == false);
  CHECK(j["store_pinned"] == false);
  CHECK(j["store_error"] == "");
  CHECK(j["store_warmup_seconds"] == 3.2);

  s.set_store_ready_bytes(64ull << 30);
  CHECK(StatusText(s).find("store:        pinning 64.0 GiB (cudaHostRegister)") !=
        std::string::npos);

  s.set_store_ready(true);
  s.set_store_pinned(true);
  s.set_store_warmup_seconds(9.5);
  CHECK(StatusText(s).find("store:        ready (64.0 GiB pinned in 9.5s)") != std::string::npos);
  CHECK(StatusJson(s)["store_ready"] == true);

  s.set_store_ready(false);
  s.set_store_pinned(false);
  s.set_store_ready_bytes(40ull << 30);
  s.set_store_error("out of memory");
  CHECK(StatusText(s).find("store:        NOT fully ready: 40.0 GiB of 64.0 GiB usable (out of "
                           "memory)") != std::string::npos);
}

}  // namespace
}  // namespace ckpt::ctl
