#include "client/piece_assembler.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "gpu/cuda_status.h"
#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"
#include "gpu/scoped_device.h"

namespace ckpt::client {

// Host memory or one cudaMalloc allocation.
class PieceAssembler::Buffer {
 public:
  static absl::StatusOr<std::unique_ptr<Buffer>> Create(int cuda_device, uint64_t bytes) {
    auto b = std::unique_ptr<Buffer>(new Buffer);
    b->size_ = bytes;
    if (cuda_device < 0) {
      b->host_.reset(new (std::nothrow) uint8_t[bytes]);
      if (b->host_ == nullptr) {
        return absl::ResourceExhaustedError(
            absl::StrCat("cannot allocate ", FormatBytes(bytes), " of host memory"));
      }
    } else {
      ASSIGN_OR_RETURN(b->device_, gpu::DeviceBuffer::Create(cuda_device, bytes));
    }
    return b;
  }
  uint8_t* data() const {
    return host_ != nullptr ? host_.get() : static_cast<uint8_t*>(device_.data());
  }
  uint64_t size() const { return size_; }

 private:
  Buffer() = default;
  uint64_t size_ = 0;
  std::unique_ptr<uint8_t[]> host_;
  gpu::DeviceBuffer device_;
};

PieceAssembler::PieceAssembler(int cuda_device) : cuda_device_(cuda_device) {}
PieceAssembler::~PieceAssembler() = default;

absl::StatusOr<std::unique_ptr<PieceAssembler::Buffer>> PieceAssembler::Take(
    uint64_t bytes, const std::string& name) {
  // The smallest idle buffer that holds it; else a new one (idle ones that are too small go, so
  // that at most one buffer per handed-out tensor plus one is held).
  size_t best = idle_.size();
  for (size_t i = 0; i < idle_.size(); ++i) {
    if (idle_[i]->size() >= bytes &&
        (best == idle_.size() || idle_[i]->size() < idle_[best]->size()))
      best = i;
  }
  if (best < idle_.size()) {
    std::unique_ptr<Buffer> b = std::move(idle_[best]);
    idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(best));
    return b;
  }
  idle_.clear();
  auto b = Buffer::Create(cuda_device_, bytes);
  if (!b.ok()) {
    return absl::Status(
        b.status().code(),
        absl::StrCat("tensor '", name, "' (", FormatBytes(bytes),
                     ") is larger than a staging slot: putting its pieces together needs a buffer "
                     "of its size ",
                     cuda_device_ < 0 ? std::string("in host memory")
                                      : absl::StrCat("on CUDA device ", cuda_device_),
                     ": ", b.status().message(),
                     " (free that much memory, or raise the daemon's bucket_bytes above it)"));
  }
  return b;
}

absl::StatusOr<void*> PieceAssembler::Add(const std::string& name, uint64_t total, uint64_t offset,
                                          const void* src, uint64_t n) {
  if (current_ != nullptr && (name != name_ || total != total_ || offset != received_)) {
    const std::string was = name_;
    const uint64_t expected = received_;
    Abandon();
    return absl::InternalError(absl::StrCat(
        "the daemon sent bytes ", offset, "+", n, " of tensor '", name, "' while tensor '", was,
        "' was incomplete (", expected, " bytes in); both are dropped"));
  }
  if (current_ == nullptr) {
    if (offset != 0) {
      return absl::InternalError(absl::StrCat("the daemon sent bytes ", offset, "+", n,
                                              " of tensor '", name, "' without its first piece"));
    }
    ASSIGN_OR_RETURN(current_, Take(total, name));
    name_ = name;
    total_ = total;
    received_ = 0;
  }
  if (n > total_ - received_) {
    Abandon();
    return absl::InternalError(absl::StrCat("the daemon sent bytes ", offset, "+", n,
                                            " of tensor '", name, "', past its end at ", total));
  }
  uint8_t* dst = current_->data() + received_;
  if (n > 0) {
    if (cuda_device_ < 0) {
      std::memcpy(dst, src, n);
    } else {
      absl::Status copied = [&]() -> absl::Status {
        // cudaMemcpy device to device may return before the copy ran: the slot is acked (and
        // refilled by the daemon) right after Add, so the copy must be complete by then. A
        // stream of our own, synchronized, waits for nothing else of the process.
        ASSIGN_OR_RETURN(gpu::ScopedDevice scope, gpu::ScopedDevice::Create(cuda_device_));
        if (stream_.empty()) {
          ASSIGN_OR_RETURN(stream_, gpu::CudaStream::Create(cuda_device_));
        }
        CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream_.get()));
        CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
        return absl::OkStatus();
      }();
      if (!copied.ok()) {
        Abandon();
        return Annotate(copied, absl::StrCat("copying a piece of tensor '", name, "'"));
      }
    }
  }
  received_ += n;
  if (received_ < total_) return nullptr;
  if (completed_ != nullptr) {
    // Two tensors completed before the first was handed out (the daemon never plans that): the
    // first one's view would be freed under the caller.
    Abandon();
    return absl::InternalError(absl::StrCat("the daemon completed tensor '", name,
                                            "' in the same bucket as another split tensor"));
  }
  void* whole = current_->data();
  completed_ = std::move(current_);
  name_.clear();
  return whole;
}

void PieceAssembler::HandOut(uint64_t version, uint64_t bucket) {
  if (completed_ != nullptr) handed_.push_back({version, bucket, std::move(completed_)});
}

void PieceAssembler::Release(uint64_t version, uint64_t bucket) {
  for (auto it = handed_.begin(); it != handed_.end();) {
    if (it->version == version && it->bucket == bucket) {
      idle_.push_back(std::move(it->buffer));
      it = handed_.erase(it);
    } else {
      ++it;
    }
  }
}

void PieceAssembler::Abandon() {
  if (current_ != nullptr) idle_.push_back(std::move(current_));
  if (completed_ != nullptr) idle_.push_back(std::move(completed_));
  name_.clear();
  total_ = received_ = 0;
}

void PieceAssembler::FreeIdle() { idle_.clear(); }

uint64_t PieceAssembler::held_bytes() const {
  uint64_t n = 0;
  for (const auto* b : {current_.get(), completed_.get()}) n += b != nullptr ? b->size() : 0;
  for (const Handed& h : handed_) n += h.buffer->size();
  for (const auto& b : idle_) n += b->size();
  return n;
}

}  // namespace ckpt::client
