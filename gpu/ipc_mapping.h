// IpcMapping: another process's device allocation mapped into this one (cudaIpcOpenMemHandle),
// unmapped on destruction (cudaIpcCloseMemHandle).
//
//   ASSIGN_OR_RETURN(IpcHandle handle, IpcHandle::FromBytes(msg.ipc_handle()));
//   ASSIGN_OR_RETURN(IpcMapping slot, IpcMapping::Open(/*device=*/local_gpu, handle, msg.size()));
//   // slot.data() is a device pointer valid on local_gpu; copy out of it or build a tensor view.
//
// Contract:
// - Opened with cudaIpcMemLazyEnablePeerAccess, so the allocation may live on another GPU of the
//   node than `device` (peer access over NVLink/PCIe is enabled on first use); opening on the
//   exporter's own GPU is the common case and needs no peer access.
// - The handle must come from another process: CUDA refuses to open a handle in the process that
//   exported it. A garbage or stale handle fails with a status (never a crash).
// - The exporter must keep the allocation alive until every importer has closed its mapping; the
//   importer must not use data() after destruction. Reads and writes through the mapping are
//   ordered with the exporter's work only by explicit synchronization (events, acks over the
//   control channel).
// - `bytes` is the size the caller expects (from the control plane); CUDA does not report it, so it
//   is recorded, not checked.
// - Move-only; a default-constructed or moved-from IpcMapping is empty (data() == nullptr).
// - On failure nothing is mapped. The calling thread's current device is unchanged.
// - The object is not synchronized; the mapped memory may be used from any thread.
#ifndef CKPT_GPU_IPC_MAPPING_H_
#define CKPT_GPU_IPC_MAPPING_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "gpu/ipc_handle.h"

namespace ckpt::gpu {

class IpcMapping {
 public:
  IpcMapping() = default;  // empty
  ~IpcMapping();

  IpcMapping(IpcMapping&& other) noexcept;
  IpcMapping& operator=(IpcMapping&& other) noexcept;
  IpcMapping(const IpcMapping&) = delete;
  IpcMapping& operator=(const IpcMapping&) = delete;

  // Maps the allocation named by `handle` for use on `device`.
  static absl::StatusOr<IpcMapping> Open(int device, const IpcHandle& handle, size_t bytes);

  bool empty() const { return data_ == nullptr; }
  void* data() const { return data_; }
  size_t size() const { return size_; }
  int device() const { return device_; }

 private:
  IpcMapping(void* data, size_t size, int device) : data_(data), size_(size), device_(device) {}
  void Reset();

  void* data_ = nullptr;
  size_t size_ = 0;
  int device_ = -1;
};

}  // namespace ckpt::gpu

#endif  // CKPT_GPU_IPC_MAPPING_H_
