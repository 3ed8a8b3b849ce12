#include "client/cuda_driver.h"

#include <cuda.h>
#include <dlfcn.h>

#include <cstring>
#include <map>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/gpu_uuid.h"

namespace ckpt::client {

struct CudaDriver::Functions {
  CUresult (*init)(unsigned int) = nullptr;
  CUresult (*get_error_name)(CUresult, const char**) = nullptr;
  CUresult (*device_get)(CUdevice*, int) = nullptr;
  CUresult (*device_get_count)(int*) = nullptr;
  CUresult (*device_get_uuid)(CUuuid*, CUdevice) = nullptr;
  CUresult (*primary_ctx_retain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*ctx_push)(CUcontext) = nullptr;
  CUresult (*ctx_pop)(CUcontext*) = nullptr;
  CUresult (*ctx_synchronize)() = nullptr;
  CUresult (*pointer_get_attribute)(void*, CUpointer_attribute, CUdeviceptr) = nullptr;
  CUresult (*mem_get_address_range)(CUdeviceptr*, size_t*, CUdeviceptr) = nullptr;
  CUresult (*ipc_get_mem_handle)(CUipcMemHandle*, CUdeviceptr) = nullptr;
  CUresult (*memcpy_dtoh)(void*, CUdeviceptr, size_t) = nullptr;
  CUresult (*mem_host_alloc)(void**, size_t, unsigned int) = nullptr;
  CUresult (*mem_free_host)(void*) = nullptr;
  CUresult (*mem_host_register)(void*, size_t, unsigned int) = nullptr;
  CUresult (*mem_host_unregister)(void*) = nullptr;

  // Primary contexts by ordinal, retained once and kept for the process's life.
  mutable absl::Mutex mu;
  mutable std::map<int, CUcontext> contexts ABSL_GUARDED_BY(mu);
};

namespace {

using GetProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t,
                                    CUdriverProcAddressQueryResult*);

absl::StatusOr<const CudaDriver::Functions*> Load() {
  void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = ::dlerror();
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA tensors need the CUDA driver, and libcuda.so.1 cannot be loaded: ",
                     why != nullptr ? why : "unknown error"));
  }
  auto get_proc = reinterpret_cast<GetProcAddress>(::dlsym(lib, "cuGetProcAddress_v2"));
  if (get_proc == nullptr) {
    return absl::FailedPreconditionError(
        "the CUDA driver is older than CUDA 12 (no cuGetProcAddress_v2); update the driver");
  }
  auto* f = new CudaDriver::Functions;  // kept for the process's life
  absl::Status missing;
  auto bind = [&](auto& fn, const char* name, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
    void* p = nullptr;
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (get_proc(name, &p, 12000, flags, &found) != CUDA_SUCCESS || p == nullptr ||
        found != CU_GET_PROC_ADDRESS_SUCCESS) {
      if (missing.ok()) {
        missing = absl::FailedPreconditionError(absl::StrCat("the CUDA driver has no ", name));
      }
      return;
    }
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
  };
  bind(f->init, "cuInit");
  bind(f->get_error_name, "cuGetErrorName");
  bind(f->device_get, "cuDeviceGet");
  bind(f->device_get_count, "cuDeviceGetCount");
  bind(f->device_get_uuid, "cuDeviceGetUuid");
  bind(f->primary_ctx_retain, "cuDevicePrimaryCtxRetain");
  bind(f->ctx_push, "cuCtxPushCurrent");
  bind(f->ctx_pop, "cuCtxPopCurrent");
  bind(f->ctx_synchronize, "cuCtxSynchronize");
  bind(f->pointer_get_attribute, "cuPointerGetAttribute");
  bind(f->mem_get_address_range, "cuMemGetAddressRange");
  bind(f->ipc_get_mem_handle, "cuIpcGetMemHandle");
  // The per-thread default stream: the lanes' copies run side by side, and do not wait for the
  // trainer's work on the legacy default stream.
  bind(f->memcpy_dtoh, "cuMemcpyDtoH", CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  bind(f->mem_host_alloc, "cuMemHostAlloc");
  bind(f->mem_free_host, "cuMemFreeHost");
  bind(f->mem_host_register, "cuMemHostRegister");
  bind(f->mem_host_unregister, "cuMemHostUnregister");
  if (!missing.ok()) {
    delete f;
    return missing;
  }
  if (CUresult r = f->init(0); r != CUDA_SUCCESS) {
    delete f;
    return absl::FailedPreconditionError(
        absl::StrCat("cuInit failed (CUresult ", static_cast<int>(r), "): no usable GPU"));
  }
  return f;
}

std::string ErrorText(const CudaDriver::Functions& f, CUresult r) {
  const char* name = nullptr;
  if (f.get_error_name != nullptr && f.get_error_name(r, &name) == CUDA_SUCCESS &&
      name != nullptr) {
    return name;
  }
  return absl::StrCat("CUresult ", static_cast<int>(r));
}

absl::Status DriverError(const CudaDriver::Functions& f, CUresult r, const char* call) {
  return absl::InternalError(absl::StrCat(call, " failed: ", ErrorText(f, r)));
}

// Makes the primary context of `device` current on this thread until destruction.
class InContext {
 public:
  static absl::StatusOr<InContext> Enter(const CudaDriver::Functions& f, int device) {
    CUcontext ctx = nullptr;
    {
      absl::MutexLock lock(&f.mu);
      auto it = f.contexts.find(device);
      if (it != f.contexts.end()) {
        ctx = it->second;
      } else {
        CUdevice dev = 0;
        if (CUresult r = f.device_get(&dev, device); r != CUDA_SUCCESS) {
          return absl::InvalidArgumentError(
              absl::StrCat("CUDA device ", device, " does not exist: ", ErrorText(f, r)));
        }
        if (CUresult r = f.primary_ctx_retain(&ctx, dev); r != CUDA_SUCCESS) {
          return DriverError(f, r, "cuDevicePrimaryCtxRetain");
        }
        f.contexts.emplace(device, ctx);
      }
    }
    if (CUresult r = f.ctx_push(ctx); r != CUDA_SUCCESS) return DriverError(f, r, "cuCtxPush");
    return InContext(&f);
  }
  InContext(InContext&& other) noexcept : f_(std::exchange(other.f_, nullptr)) {}
  InContext& operator=(InContext&&) = delete;
  ~InContext() {
    if (f_ != nullptr) {
      CUcontext popped = nullptr;
      (void)f_->ctx_pop(&popped);
    }
  }

 private:
  explicit InContext(const CudaDriver::Functions* f) : f_(f) {}
  const CudaDriver::Functions* f_;
};

}  // namespace

absl::StatusOr<const CudaDriver*> CudaDriver::Get() {
  static const absl::StatusOr<const CudaDriver*> driver =
      []() -> absl::StatusOr<const CudaDriver*> {
    absl::StatusOr<const Functions*> f = Load();
    if (!f.ok()) return f.status();
    auto* d = new CudaDriver;  // kept for the process's life
    d->f_ = *f;
    return d;
  }();
  return driver;
}

absl::StatusOr<int> CudaDriver::DeviceCount() const {
  int n = 0;
  if (CUresult r = f_->device_get_count(&n); r != CUDA_SUCCESS) {
    return DriverError(*f_, r, "cuDeviceGetCount");
  }
  return n;
}

absl::StatusOr<std::string> CudaDriver::GpuUuid(int device) const {
  CUdevice dev = 0;
  if (CUresult r = f_->device_get(&dev, device); r != CUDA_SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " does not exist: ", ErrorText(*f_, r)));
  }
  CUuuid uuid;
  if (CUresult r = f_->device_get_uuid(&uuid, dev); r != CUDA_SUCCESS) {
    return DriverError(*f_, r, "cuDeviceGetUuid");
  }
  unsigned char bytes[16];
  std::memcpy(bytes, uuid.bytes, sizeof(bytes));
  return FormatGpuUuid(bytes);
}

absl::Status CudaDriver::Synchronize(int device) const {
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  if (!in.ok()) return in.status();
  if (CUresult r = f_->ctx_synchronize(); r != CUDA_SUCCESS) {
    return absl::FailedPreconditionError(absl::StrCat("waiting for the work queued on CUDA device ",
                                                      device, " failed: ", ErrorText(*f_, r)));
  }
  return absl::OkStatus();
}

absl::Status CudaDriver::CheckDevicePointer(int device, uint64_t ptr) const {
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  if (!in.ok()) return in.status();
  CUmemorytype type = CU_MEMORYTYPE_HOST;
  CUresult r = f_->pointer_get_attribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                         static_cast<CUdeviceptr>(ptr));
  if (r != CUDA_SUCCESS || type != CU_MEMORYTYPE_DEVICE) {
    return absl::InvalidArgumentError(
        absl::StrCat("address 0x", absl::Hex(ptr), " is not CUDA device memory (",
                     r != CUDA_SUCCESS ? ErrorText(*f_, r) : "host memory", ")"));
  }
  int ordinal = -1;
  r = f_->pointer_get_attribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                static_cast<CUdeviceptr>(ptr));
  if (r != CUDA_SUCCESS) return DriverError(*f_, r, "cuPointerGetAttribute");
  if (ordinal != device) {
    return absl::InvalidArgumentError(absl::StrCat("address 0x", absl::Hex(ptr),
                                                   " is memory of CUDA device ", ordinal,
                                                   ", not of device ", device));
  }
  return absl::OkStatus();
}

absl::StatusOr<CudaDriver::Allocation> CudaDriver::AllocationOf(int device, uint64_t ptr) const {
  if (absl::Status s = CheckDevicePointer(device, ptr); !s.ok()) return s;
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  if (!in.ok()) return in.status();
  CUdeviceptr base = 0;
  size_t size = 0;
  const CUresult r = f_->mem_get_address_range(&base, &size, static_cast<CUdeviceptr>(ptr));
  if (r != CUDA_SUCCESS) return DriverError(*f_, r, "cuMemGetAddressRange");
  return Allocation{static_cast<uint64_t>(base), static_cast<uint64_t>(size)};
}

absl::StatusOr<std::string> CudaDriver::IpcHandle(int device, uint64_t base) const {
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  if (!in.ok()) return in.status();
  CUipcMemHandle handle;
  if (CUresult r = f_->ipc_get_mem_handle(&handle, static_cast<CUdeviceptr>(base));
      r != CUDA_SUCCESS) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuIpcGetMemHandle refused the allocation (", ErrorText(*f_, r),
                     "; memory from cuMemCreate, such as PyTorch's expandable segments, or "
                     "from a cudaMallocAsync pool cannot be shared this way)"));
  }
  static_assert(sizeof(handle.reserved) == 64, "CUipcMemHandle is 64 bytes");
  return std::string(handle.reserved, sizeof(handle.reserved));
}

absl::Status CudaDriver::CopyToHost(int device, void* dst, uint64_t src, size_t bytes) const {
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  if (!in.ok()) return in.status();
  if (CUresult r = f_->memcpy_dtoh(dst, static_cast<CUdeviceptr>(src), bytes); r != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("copying ", bytes, " bytes from CUDA device ", device,
                                            " to the host failed: ", ErrorText(*f_, r)));
  }
  return absl::OkStatus();
}

absl::StatusOr<void*> CudaDriver::AllocHost(int device, size_t bytes) const {
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  if (!in.ok()) return in.status();
  void* p = nullptr;
  if (CUresult r = f_->mem_host_alloc(&p, bytes, CU_MEMHOSTALLOC_PORTABLE); r != CUDA_SUCCESS) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cuMemHostAlloc of ", bytes, " bytes of pinned memory failed: ", ErrorText(*f_, r)));
  }
  return p;
}

void CudaDriver::FreeHost(int device, void* p) const {
  if (p == nullptr) return;
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  (void)f_->mem_free_host(p);
}

absl::Status CudaDriver::RegisterHost(int device, void* p, size_t bytes) const {
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  if (!in.ok()) return in.status();
  if (CUresult r = f_->mem_host_register(p, bytes, CU_MEMHOSTREGISTER_PORTABLE);
      r != CUDA_SUCCESS) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cuMemHostRegister of ", bytes, " bytes failed: ", ErrorText(*f_, r)));
  }
  return absl::OkStatus();
}

void CudaDriver::UnregisterHost(int device, void* p) const {
  if (p == nullptr) return;
  absl::StatusOr<InContext> in = InContext::Enter(*f_, device);
  (void)f_->mem_host_unregister(p);
}

}  // namespace ckpt::client
