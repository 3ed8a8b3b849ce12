#include "client/checksum_verify.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/xxh3.h"
#include "gpu/cuda_status.h"
#include "gpu/cuda_stream.h"
#include "gpu/pinned_region.h"
#include "gpu/scoped_device.h"

namespace ckpt::client {
namespace {

// Tensors closer than this in the source are copied as one run: copying the gap costs less than
// another copy's fixed latency (~10 us, i.e. ~0.5 MB at D2H speed).
constexpr uintptr_t kMaxGap = 64 << 10;

using HashState = Xxh3State;

absl::Status Compare(const std::vector<TensorChecksum>& tensors,
                     const std::vector<uint64_t>& actual) {
  size_t first = tensors.size();
  size_t more = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    // 0: the daemon does not know it (a tensor it converted, e.g. to FP8): not checked.
    if (actual[i] == tensors[i].xxh3 || tensors[i].xxh3 == 0) continue;
    if (first == tensors.size()) {
      first = i;
    } else {
      ++more;
    }
  }
  if (first == tensors.size()) return absl::OkStatus();
  const TensorChecksum& t = tensors[first];
  std::string message =
      absl::StrFormat("checksum mismatch in tensor '%s' (%d bytes): expected xxh3 %016x, got %016x",
                      std::string(t.name), t.bytes, t.xxh3, actual[first]);
  if (more > 0) {
    absl::StrAppend(
        &message, "; ", more,
        more == 1 ? " more tensor of this bucket differs" : " more tensors of this bucket differ");
  }
  return absl::DataLossError(message);
}

absl::Status CheckPointers(const std::vector<TensorChecksum>& tensors) {
  for (const TensorChecksum& t : tensors) {
    if (t.bytes == 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(t.data);
    if (t.data == nullptr || t.bytes > UINTPTR_MAX - begin) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': no valid address for ", t.bytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status VerifyHostChecksums(const std::vector<TensorChecksum>& tensors) {
  RETURN_IF_ERROR(CheckPointers(tensors));
  std::vector<uint64_t> actual(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    actual[i] = XXH3_64bits(tensors[i].bytes > 0 ? tensors[i].data : "", tensors[i].bytes);
  }
  return Compare(tensors, actual);
}

absl::Status VerifyStagedChecksums(const std::vector<TensorChecksum>& tensors,
                                   StagingCopier& copier, uint8_t* staging, size_t staging_bytes) {
  if (staging == nullptr || staging_bytes < 2) {
    return absl::InvalidArgumentError("checksum staging buffer missing or smaller than 2 bytes");
  }
  RETURN_IF_ERROR(CheckPointers(tensors));
  const uintptr_t half = staging_bytes / 2;
  std::vector<uint64_t> actual(tensors.size());
  auto begin_of = [&](size_t i) { return reinterpret_cast<uintptr_t>(tensors[i].data); };
  auto end_of = [&](size_t i) { return begin_of(i) + tensors[i].bytes; };

  // Non-empty tensors by address; empty ones hash to XXH3 of nothing.
  std::vector<size_t> order;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].bytes == 0) {
      actual[i] = XXH3_64bits("", 0);
    } else {
      order.push_back(i);
    }
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return begin_of(a) != begin_of(b) ? begin_of(a) < begin_of(b) : a < b;
  });

  // Runs of nearby tensors (order[first, last)), cut into pieces of at most `half` bytes.
  struct Run {
    uintptr_t begin, end;
    size_t first, last;
  };
  std::vector<Run> runs;
  for (size_t q = 0; q < order.size(); ++q) {
    const uintptr_t b = begin_of(order[q]), e = end_of(order[q]);
    if (runs.empty() || (b > runs.back().end && b - runs.back().end > kMaxGap)) {
      runs.push_back({b, e, q, q + 1});
    } else {
      runs.back().end = std::max(runs.back().end, e);
      runs.back().last = q + 1;
    }
  }
  struct Piece {
    uintptr_t begin, end;
    size_t run;
  };
  std::vector<Piece> pieces;
  for (size_t r = 0; r < runs.size(); ++r) {
    for (uintptr_t p = runs[r].begin; p < runs[r].end; p += std::min(half, runs[r].end - p)) {
      pieces.push_back({p, p + std::min(half, runs[r].end - p), r});
    }
  }

  std::vector<HashState> states(tensors.size());
  // Hashes what piece `j` (now at `host`) holds of each tensor of its run. `lo` is the first tensor
  // of the run (in address order) that may still reach into this piece.
  size_t lo = 0;
  auto hash_piece = [&](size_t j, const uint8_t* host) -> absl::Status {
    const Piece& piece = pieces[j];
    const Run& run = runs[piece.run];
    if (j == 0 || pieces[j - 1].run != piece.run) lo = run.first;
    while (lo < run.last && end_of(order[lo]) <= piece.begin) ++lo;
    for (size_t q = lo; q < run.last; ++q) {
      const size_t i = order[q];
      const uintptr_t b = begin_of(i), e = end_of(i);
      if (b >= piece.end) break;
      if (e <= piece.begin) continue;  // ended earlier (overlapping tensors)
      const uintptr_t from = std::max(b, piece.begin), to = std::min(e, piece.end);
      const uint8_t* bytes = host + (from - piece.begin);
      if (b >= piece.begin && e <= piece.end) {
        actual[i] = XXH3_64bits(bytes, to - from);
        continue;
      }
      if (states[i] == nullptr) {
        states[i].reset(XXH3_createState());
        if (states[i] == nullptr || XXH3_64bits_reset(states[i].get()) != XXH_OK) {
          return absl::ResourceExhaustedError("out of memory for a checksum state");
        }
      }
      XXH3_64bits_update(states[i].get(), bytes, to - from);
      if (e <= piece.end) {
        actual[i] = XXH3_64bits_digest(states[i].get());
        states[i].reset();
      }
    }
    return absl::OkStatus();
  };

  // Double buffering: piece j + 1 is copied into one half while piece j is hashed from the other.
  auto source = [&](size_t j) { return reinterpret_cast<const void*>(pieces[j].begin); };
  auto length = [&](size_t j) { return static_cast<size_t>(pieces[j].end - pieces[j].begin); };
  if (!pieces.empty()) {
    RETURN_IF_ERROR(copier.Start(staging, source(0), length(0)));
    RETURN_IF_ERROR(copier.Wait());
  }
  for (size_t j = 0; j < pieces.size(); ++j) {
    const uint8_t* current = staging + (j % 2) * half;
    if (j + 1 == pieces.size()) {
      RETURN_IF_ERROR(hash_piece(j, current));
      break;
    }
    RETURN_IF_ERROR(copier.Start(staging + ((j + 1) % 2) * half, source(j + 1), length(j + 1)));
    absl::Status hashed = hash_piece(j, current);
    RETURN_IF_ERROR(copier.Wait());
    RETURN_IF_ERROR(hashed);
  }
  return Compare(tensors, actual);
}

// Device memory -> pinned host staging memory on a non-blocking stream of the worker's device.
class ChecksumVerifier::Device final : public StagingCopier {
 public:
  static absl::StatusOr<std::unique_ptr<Device>> Create(int device, size_t bytes) {
    ASSIGN_OR_RETURN(gpu::ScopedDevice scope, gpu::ScopedDevice::Create(device));
    std::unique_ptr<Device> d(new Device);
    ASSIGN_OR_RETURN(d->stream_, gpu::CudaStream::Create(device));
    ASSIGN_OR_RETURN(d->pinned_, gpu::PinnedRegion::Create(bytes));
    return d;
  }
  absl::Status Start(void* dst, const void* src, size_t n) override {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream_.get()));
    return absl::OkStatus();
  }
  absl::Status Wait() override {
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
    return absl::OkStatus();
  }
  uint8_t* staging() const { return static_cast<uint8_t*>(pinned_.data()); }
  size_t staging_bytes() const { return pinned_.size(); }

 private:
  Device() = default;
  // Declared first, destroyed last: nothing is ever left in flight into it (Verify waits).
  gpu::PinnedRegion pinned_;
  gpu::CudaStream stream_;
};

ChecksumVerifier::ChecksumVerifier(int cuda_device, size_t staging_bytes)
    : cuda_device_(cuda_device), staging_bytes_(std::max<size_t>(staging_bytes, 2)) {}

ChecksumVerifier::~ChecksumVerifier() = default;

absl::Status ChecksumVerifier::Verify(const std::vector<TensorChecksum>& tensors) {
  if (cuda_device_ < 0) return VerifyHostChecksums(tensors);
  if (device_ == nullptr) {
    auto device = Device::Create(cuda_device_, staging_bytes_);
    if (!device.ok()) {
      return Annotate(device.status(), absl::StrCat("checksum staging buffer of ", staging_bytes_,
                                                    " bytes for CUDA device ", cuda_device_));
    }
    device_ = *std::move(device);
  }
  ASSIGN_OR_RETURN(gpu::ScopedDevice scope, gpu::ScopedDevice::Create(cuda_device_));
  return VerifyStagedChecksums(tensors, *device_, device_->staging(), device_->staging_bytes());
}

}  // namespace ckpt::client
