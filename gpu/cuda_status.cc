#include "gpu/cuda_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace ckpt::gpu {

absl::StatusCode CudaErrorToCode(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return absl::StatusCode::kOk;
    // The machine cannot run CUDA at all: an operator must fix it, retrying will not help.
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorStubLibrary:
    case cudaErrorCallRequiresNewerDriver:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorNoKernelImageForDevice:
      return absl::StatusCode::kFailedPrecondition;
    case cudaErrorMemoryAllocation:
      return absl::StatusCode::kResourceExhausted;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidResourceHandle:
    case cudaErrorInvalidMemcpyDirection:
    case cudaErrorHostMemoryAlreadyRegistered:
    case cudaErrorHostMemoryNotRegistered:
      return absl::StatusCode::kInvalidArgument;
    // Another process holds the device exclusively, or an asynchronous operation is still running.
    case cudaErrorDevicesUnavailable:
    case cudaErrorNotReady:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

std::string CudaErrorText(cudaError_t error) {
  // Both lookups are static tables in cudart: they work with no driver loaded.
  const char* name = cudaGetErrorName(error);
  const char* text = cudaGetErrorString(error);
  return absl::StrCat(name != nullptr ? name : "cudaError?", ": ",
                      text != nullptr ? text : "unknown error", " (", static_cast<int>(error), ")");
}

absl::Status CudaStatus(cudaError_t error, const char* expr, const char* file, int line) {
  if (error == cudaSuccess) return absl::OkStatus();
  // Reset the thread's last error so the failure is reported once, here. For sticky errors this is
  // a no-op by CUDA's design (see the header).
  (void)cudaGetLastError();
  return absl::Status(CudaErrorToCode(error),
                      absl::StrCat(expr, " at ", file, ":", line, ": ", CudaErrorText(error)));
}

bool IsStickyError(cudaError_t error) {
  switch (error) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorLaunchTimeout:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorECCUncorrectable:
    case cudaErrorContextIsDestroyed:
      return true;
    default:
      return false;
  }
}

}  // namespace ckpt::gpu
