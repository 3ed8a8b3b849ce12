// IpcHandle: the 64-byte CUDA IPC handle of a device allocation, as a copyable value that can
// travel between processes (raw bytes in a protobuf `bytes` field, or hex in logs and JSON).
//
//   ASSIGN_OR_RETURN(IpcHandle handle, IpcHandle::Export(slot));   // exporting process
//   reply.set_ipc_handle(handle.ToBytes());
//   ...
//   ASSIGN_OR_RETURN(IpcHandle handle, IpcHandle::FromBytes(msg.ipc_handle()));  // importing
//   process ASSIGN_OR_RETURN(IpcMapping view, IpcMapping::Open(device, handle, size));   //
//   ipc_mapping.h
//
// Contract:
// - A handle names a whole cudaMalloc allocation and owns nothing: it stays meaningful only while
//   the exporting process keeps the allocation alive. Exporting is cheap and may be repeated; the
//   handle of an allocation does not change.
// - Export needs memory from plain cudaMalloc (DeviceBuffer), not from cudaMallocAsync pools,
//   managed or host memory. Pass the allocation's base address: the importer maps the whole
//   allocation and gets its base back.
// - Thread-safe (a value; Export only reads the allocation's metadata).
#ifndef CKPT_GPU_IPC_HANDLE_H_
#define CKPT_GPU_IPC_HANDLE_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gpu/device_buffer.h"

namespace ckpt::gpu {

class IpcHandle {
 public:
  static constexpr size_t kSize = CUDA_IPC_HANDLE_SIZE;  // 64
  static_assert(sizeof(cudaIpcMemHandle_t) == kSize, "unexpected cudaIpcMemHandle_t layout");

  IpcHandle() = default;  // all zero bytes; opening it fails

  // cudaIpcGetMemHandle on the buffer's allocation. FAILED_PRECONDITION for an empty buffer.
  static absl::StatusOr<IpcHandle> Export(const DeviceBuffer& buffer);
  // Same for a raw allocation base `data` that cudaMalloc returned on `device`.
  static absl::StatusOr<IpcHandle> Export(int device, void* data);

  // Parses exactly kSize raw bytes / 2 * kSize hex digits (either case). INVALID_ARGUMENT
  // otherwise.
  static absl::StatusOr<IpcHandle> FromBytes(absl::string_view bytes);
  static absl::StatusOr<IpcHandle> FromHex(absl::string_view hex);
  static IpcHandle FromCuda(const cudaIpcMemHandle_t& handle);

  std::string ToBytes() const;  // kSize raw bytes
  std::string ToHex() const;    // 2 * kSize lowercase hex digits
  const cudaIpcMemHandle_t& cuda() const { return handle_; }

  friend bool operator==(const IpcHandle& a, const IpcHandle& b);
  friend bool operator!=(const IpcHandle& a, const IpcHandle& b) { return !(a == b); }

 private:
  cudaIpcMemHandle_t handle_{};
};

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_IPC_HANDLE_H_
