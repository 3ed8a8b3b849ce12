#include "gpu/ipc_handle.h"

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/cuda_status.h"
#include "gpu/scoped_device.h"

namespace ckpt::gpu {

absl::StatusOr<IpcHandle> IpcHandle::Export(const DeviceBuffer& buffer) {
  if (buffer.empty()) return absl::FailedPreconditionError("IpcHandle::Export: empty DeviceBuffer");
  return Export(buffer.device(), buffer.data());
}

absl::StatusOr<IpcHandle> IpcHandle::Export(int device, void* data) {
  if (data == nullptr) return absl::InvalidArgumentError("IpcHandle::Export: null pointer");
  ASSIGN_OR_RETURN(ScopedDevice scope, ScopedDevice::Create(device));
  IpcHandle handle;
  CUDA_RETURN_IF_ERROR(cudaIpcGetMemHandle(&handle.handle_, data));
  return handle;
}

absl::StatusOr<IpcHandle> IpcHandle::FromBytes(absl::string_view bytes) {
  if (bytes.size() != kSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("IpcHandle: expected ", kSize, " bytes, got ", bytes.size()));
  }
  IpcHandle handle;
  std::memcpy(&handle.handle_, bytes.data(), kSize);
  return handle;
}

absl::StatusOr<IpcHandle> IpcHandle::FromHex(absl::string_view hex) {
  if (hex.size() != 2 * kSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("IpcHandle: expected ", 2 * kSize, " hex digits, got ", hex.size()));
  }
  for (char c : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError("IpcHandle: not a hex string");
    }
  }
  return FromBytes(absl::HexStringToBytes(hex));
}

IpcHandle IpcHandle::FromCuda(const cudaIpcMemHandle_t& cuda_handle) {
  IpcHandle handle;
  handle.handle_ = cuda_handle;
  return handle;
}

std::string IpcHandle::ToBytes() const {
  return std::string(reinterpret_cast<const char*>(&handle_), kSize);
}

std::string IpcHandle::ToHex() const { return absl::BytesToHexString(ToBytes()); }

bool operator==(const IpcHandle& a, const IpcHandle& b) {
  return std::memcmp(&a.handle_, &b.handle_, IpcHandle::kSize) == 0;
}

}  // namespace ckpt::gpu
