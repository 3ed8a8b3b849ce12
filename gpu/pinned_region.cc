#include "gpu/pinned_region.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/cuda_status.h"

namespace ckpt::gpu {
namespace {

absl::Status RegisterRange(void* data, size_t bytes) {
  const cudaError_t error = cudaHostRegister(data, bytes, cudaHostRegisterPortable);
  if (error != cudaSuccess) {
    return Annotate(CudaStatus(error, "cudaHostRegister(data, bytes, cudaHostRegisterPortable)",
                               __FILE__, __LINE__),
                    absl::StrCat("pinning ", bytes, " bytes of host memory"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PinnedRegion> PinnedRegion::Register(void* data, size_t bytes) {
  if (data == nullptr || bytes == 0) {
    return absl::InvalidArgumentError("PinnedRegion::Register: null pointer or zero size");
  }
  RETURN_IF_ERROR(RegisterRange(data, bytes));
  return PinnedRegion(data, bytes, /*mapped_bytes=*/0);
}

absl::StatusOr<PinnedRegion> PinnedRegion::Create(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("PinnedRegion::Create: size 0");
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t mapped = (bytes + page - 1) / page * page;
  // MAP_POPULATE faults the pages in inside the kernel, much faster than first-touch faults from
  // user space (see the header). NUMA placement follows the calling thread's memory policy.
  void* data = mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (data == MAP_FAILED) {
    const int err = errno;
    return absl::ResourceExhaustedError(
        absl::StrCat("PinnedRegion::Create: mmap of ", mapped, " bytes failed: ", strerror(err)));
  }
  // MAP_POPULATE is best effort; a write per page guarantees every page is backed before pinning.
  // On memory MAP_POPULATE already faulted in this costs one cache miss per page.
  volatile char* bytes_ptr = static_cast<volatile char*>(data);
  for (size_t offset = 0; offset < mapped; offset += page) bytes_ptr[offset] = 0;
  absl::Status registered = RegisterRange(data, mapped);
  if (!registered.ok()) {
    munmap(data, mapped);
    return registered;
  }
  return PinnedRegion(data, bytes, mapped);
}

PinnedRegion::~PinnedRegion() { Reset(); }

PinnedRegion::PinnedRegion(PinnedRegion&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_bytes_(std::exchange(other.mapped_bytes_, 0)) {}

PinnedRegion& PinnedRegion::operator=(PinnedRegion&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
  }
  return *this;
}

void PinnedRegion::Reset() {
  if (data_ != nullptr) {
    if (cudaHostUnregister(data_) != cudaSuccess) (void)cudaGetLastError();
    if (mapped_bytes_ != 0) munmap(data_, mapped_bytes_);
  }
  data_ = nullptr;
  size_ = 0;
  mapped_bytes_ = 0;
}

}  // namespace ckpt::gpu
