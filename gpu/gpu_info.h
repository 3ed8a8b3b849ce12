// GPU discovery: which CUDA devices this process can use, without failing on machines that have
// none.
//
//   GpuProbe probe = ProbeGpus();
//   if (probe.gpus.empty()) LOG: "no GPU: " + probe.no_gpu_reason  -> fall back to the host backend
//
// Thread-safe. Creates no CUDA context beyond what cudaGetDeviceProperties needs (it initializes
// the driver, allocates nothing on the devices). Honors CUDA_VISIBLE_DEVICES like every CUDA
// program: `index` is the CUDA ordinal inside this process, not nvidia-smi's index.
#ifndef CKPT_GPU_GPU_INFO_H_
#define CKPT_GPU_GPU_INFO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/gpu_uuid.h"

namespace ckpt::gpu {

struct GpuInfo {
  int index = 0;     // CUDA device ordinal in this process
  std::string name;  // "NVIDIA H100 80GB HBM3"
  std::string uuid;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lowercase, as nvidia-smi prints
  uint64_t total_memory_bytes = 0;
  std::string pci_bus_id;  // "0000:1b:00.0" (domain:bus:device.function, lowercase hex)
};

struct GpuProbe {
  std::vector<GpuInfo> gpus;
  // Empty when gpus is non-empty; otherwise why there are none, e.g.
  // "cudaGetDeviceCount: CUDA driver version is insufficient for CUDA runtime version
  //  (cudaErrorInsufficientDriver)".
  std::string no_gpu_reason;
};

// Enumerates the CUDA devices visible to this process. Never fails: a machine without driver or
// device yields an empty list and a reason. Thread-safe. Does not create CUDA contexts beyond what
// cudaGetDeviceProperties needs.
GpuProbe ProbeGpus();

// The UUID of CUDA device `device` (an ordinal of this process), formatted as FormatGpuUuid.
absl::StatusOr<std::string> GpuUuid(int device);

// "GPU-" followed by the 16 bytes as 8-4-4-4-12 lowercase hex digits (common/gpu_uuid.h).
using ::ckpt::FormatGpuUuid;

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_GPU_INFO_H_
