// Worker-side checksum verification (ConsumerOptions::verify_checksums): the XXH3-64 (seed 0) of
// each received tensor's bytes, as they sit in the staging slot this worker mapped, compared with
// the checksum the version was committed with (TensorSpec.xxh3, checked by the daemon at commit).
//
// Why a worker would want it: CUDA IPC mappings are always read-write, so on the cuda backend any
// process holding a slot's handle (another worker on that GPU, the root GPU's worker before the
// broadcast) could change a bucket before this worker reads it. Verification turns that, and any
// other corruption between the daemon's store and this worker, into an error naming the tensor.
//
//   ChecksumVerifier verifier(/*cuda_device=*/-1);              // host memory, read in place
//   RETURN_IF_ERROR(verifier.Verify({{"w", ptr, bytes, expected_xxh3}}));
//
// Errors: DATA_LOSS "checksum mismatch in tensor 'w' (4096 bytes): expected xxh3
// 9f2c0a11e4b3d870, got 0123456789abcdef" (the first mismatching tensor in the order given; more
// mismatches are counted: "; 2 more tensors of this bucket differ"). Failures to copy device
// memory keep CUDA's code (see gpu/cuda_status.h).
//
// Thread-safety: the free functions are; a ChecksumVerifier is used by one thread at a time.
#ifndef CKPT_CLIENT_CHECKSUM_VERIFY_H_
#define CKPT_CLIENT_CHECKSUM_VERIFY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ckpt::client {

// One tensor to check. `data` is where its bytes are: host memory for VerifyHostChecksums, the
// copier's source address space (device memory) for VerifyStagedChecksums. It may be null when
// `bytes` is 0. `name` must outlive the call.
struct TensorChecksum {
  absl::string_view name;
  const void* data = nullptr;
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;  // expected; 0: not known (a tensor the daemon converted), not checked
};

// XXH3-64 of host memory read in place; OK when every tensor matches.
absl::Status VerifyHostChecksums(const std::vector<TensorChecksum>& tensors);

// Moves bytes from the tensors' address space into host memory, asynchronously.
class StagingCopier {
 public:
  virtual ~StagingCopier() = default;
  // Starts copying `n` bytes from `src` (tensor address space) to `dst` (host staging memory).
  virtual absl::Status Start(void* dst, const void* src, size_t n) = 0;
  // Waits until every copy started so far has completed.
  virtual absl::Status Wait() = 0;
};

// XXH3-64 through a bounded host staging buffer: `staging` of `staging_bytes` (>= 2) is used as two
// halves, so that the copy of the next piece overlaps the hashing of the current one. Tensors that
// lie close together in the source (within 64 KiB) are copied as one run, so a bucket of many
// small tensors costs few copies; overlapping tensors are allowed. At most staging_bytes / 2 bytes
// move per copy. Nothing is left in flight when it returns.
absl::Status VerifyStagedChecksums(const std::vector<TensorChecksum>& tensors,
                                   StagingCopier& copier, uint8_t* staging, size_t staging_bytes);

// The verifier a Consumer keeps: host memory (cuda_device < 0) is hashed in place; device memory
// (cuda_device >= 0: pointers valid on that device, e.g. CUDA IPC mappings) is copied to the host
// through a pinned staging buffer of `staging_bytes`, allocated on the first Verify and reused
// (with a non-blocking stream on that device). The calling thread's current device is unchanged.
class ChecksumVerifier {
 public:
  static constexpr size_t kDefaultStagingBytes = size_t{16} << 20;  // 2 x 8 MiB

  explicit ChecksumVerifier(int cuda_device, size_t staging_bytes = kDefaultStagingBytes);
  ~ChecksumVerifier();
  ChecksumVerifier(const ChecksumVerifier&) = delete;
  ChecksumVerifier& operator=(const ChecksumVerifier&) = delete;

  absl::Status Verify(const std::vector<TensorChecksum>& tensors);

 private:
  class Device;
  int cuda_device_;
  size_t staging_bytes_;
  std::unique_ptr<Device> device_;  // created by the first Verify on a device
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_CHECKSUM_VERIFY_H_
