// Runs everywhere: on a machine without GPU or driver (CI, the build machines) ProbeGpus must
// return an empty list with a reason, on a GPU machine a consistent, well-formed list.
#include "gpu/gpu_info.h"

#include <catch2/catch.hpp>
#include <regex>
#include <set>
#include <thread>
#include <vector>

namespace ckpt::gpu {
namespace {

TEST_CASE("ProbeGpus returns either GPUs or a reason, never both or neither") {
  const GpuProbe probe = ProbeGpus();
  INFO("reason: " << probe.no_gpu_reason << ", gpus: " << probe.gpus.size());
  if (probe.gpus.empty()) {
    WARN("no GPU: " << probe.no_gpu_reason);
    CHECK_FALSE(probe.no_gpu_reason.empty());
    CHECK(probe.no_gpu_reason.find("cuda") != std::string::npos);
    return;
  }
  CHECK(probe.no_gpu_reason.empty());
  const std::regex uuid("GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}");
  const std::regex pci("[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.0");
  std::set<std::string> uuids;
  for (size_t i = 0; i < probe.gpus.size(); ++i) {
    const GpuInfo& gpu = probe.gpus[i];
    INFO("gpu " << i << ": " << gpu.name << " " << gpu.uuid << " " << gpu.pci_bus_id << " "
                << gpu.total_memory_bytes);
    CHECK(gpu.index == static_cast<int>(i));
    CHECK_FALSE(gpu.name.empty());
    CHECK(std::regex_match(gpu.uuid, uuid));
    CHECK(std::regex_match(gpu.pci_bus_id, pci));
    CHECK(gpu.total_memory_bytes > (1ull << 30));
    uuids.insert(gpu.uuid);
    WARN("gpu " << gpu.index << ": " << gpu.name << ", " << gpu.uuid << ", " << gpu.pci_bus_id
                << ", " << gpu.total_memory_bytes << " bytes");
  }
  CHECK(uuids.size() == probe.gpus.size());
}

TEST_CASE("ProbeGpus is thread-safe and stable") {
  const GpuProbe first = ProbeGpus();
  std::vector<GpuProbe> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) threads.emplace_back([&r] { r = ProbeGpus(); });
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    REQUIRE(r.gpus.size() == first.gpus.size());
    CHECK(r.no_gpu_reason == first.no_gpu_reason);
    for (size_t i = 0; i < r.gpus.size(); ++i) CHECK(r.gpus[i].uuid == first.gpus[i].uuid);
  }
}

TEST_CASE("FormatGpuUuid prints nvidia-smi's format") {
  const unsigned char bytes[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                                   0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10};
  CHECK(FormatGpuUuid(bytes) == "GPU-01234567-89ab-cdef-fedc-ba9876543210");
}

}  // namespace
}  // namespace ckpt::gpu
