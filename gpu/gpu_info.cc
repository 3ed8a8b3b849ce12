#include "gpu/gpu_info.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gpu/cuda_status.h"

namespace ckpt::gpu {
namespace {

// "what: description (cudaErrorName)", and clears the thread's last error.
std::string Reason(const char* what, cudaError_t error) {
  (void)cudaGetLastError();
  const char* name = cudaGetErrorName(error);
  const char* text = cudaGetErrorString(error);
  return absl::StrCat(what, ": ", text != nullptr ? text : "unknown error", " (",
                      name != nullptr ? name : "cudaError?", ")");
}

std::string UuidOf(const cudaDeviceProp& prop) {
  unsigned char uuid[16];
  static_assert(sizeof(prop.uuid.bytes) == sizeof(uuid), "unexpected cudaUUID_t");
  for (int k = 0; k < 16; ++k) uuid[k] = static_cast<unsigned char>(prop.uuid.bytes[k]);
  return FormatGpuUuid(uuid);
}

}  // namespace

absl::StatusOr<std::string> GpuUuid(int device) {
  cudaDeviceProp prop{};
  CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  return UuidOf(prop);
}

GpuProbe ProbeGpus() {
  GpuProbe probe;
  int count = 0;
  // With the static runtime and no libcuda.so this returns cudaErrorInsufficientDriver; without a
  // device cudaErrorNoDevice. Neither is fatal here.
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    probe.no_gpu_reason = Reason("cudaGetDeviceCount", error);
    return probe;
  }
  std::string first_failure;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    const cudaError_t prop_error = cudaGetDeviceProperties(&prop, i);
    if (prop_error != cudaSuccess) {
      // Skip a device we cannot read (e.g. fallen off the bus) rather than hide the others.
      if (first_failure.empty()) {
        first_failure =
            Reason(absl::StrCat("cudaGetDeviceProperties(", i, ")").c_str(), prop_error);
      }
      continue;
    }
    GpuInfo info;
    info.index = i;
    info.name = prop.name;
    info.uuid = UuidOf(prop);
    info.total_memory_bytes = static_cast<uint64_t>(prop.totalGlobalMem);
    // CUDA exposes no PCI function number; GPUs are function 0.
    info.pci_bus_id =
        absl::StrFormat("%04x:%02x:%02x.0", prop.pciDomainID, prop.pciBusID, prop.pciDeviceID);
    probe.gpus.push_back(std::move(info));
  }
  if (probe.gpus.empty()) {
    probe.no_gpu_reason =
        !first_failure.empty()
            ? first_failure
            : "cudaGetDeviceCount: no CUDA devices visible (check CUDA_VISIBLE_DEVICES)";
  }
  return probe;
}

}  // namespace ckpt::gpu
