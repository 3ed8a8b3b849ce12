// PieceAssembler: puts a tensor larger than a staging slot back together on the worker's side.
//
// The daemon splits a tensor that does not fit one slot into pieces, sent in order in consecutive
// buckets (proto/consumer.proto, TensorPlacement). The Consumer copies each piece out of its slot
// into a buffer of the whole tensor's size (device memory of the worker's GPU on cuda, host memory
// otherwise) and hands out the whole tensor, as a view into that buffer, with the bucket of its
// last piece. What that costs the worker: one buffer of the tensor's size while it is put together
// and until the bucket that completed it is acked (then kept for the next split tensor of the
// version, and freed when the version ends), and a device-to-device (or host) copy of its bytes.
// Tensors that fit a slot never go through here.
//
//   PieceAssembler pieces(/*cuda_device=*/-1);
//   ASSIGN_OR_RETURN(void* whole, pieces.Add(name, total, offset, slot_view, n));
//   if (whole != nullptr) { /* the whole tensor; valid until Release(version, bucket) */ }
//
// Not thread-safe: the thread that drives the Consumer uses it.
#ifndef CKPT_CLIENT_PIECE_ASSEMBLER_H_
#define CKPT_CLIENT_PIECE_ASSEMBLER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gpu/cuda_stream.h"

namespace ckpt::client {

class PieceAssembler {
 public:
  // cuda_device < 0: host memory.
  explicit PieceAssembler(int cuda_device);
  ~PieceAssembler();
  PieceAssembler(const PieceAssembler&) = delete;
  PieceAssembler& operator=(const PieceAssembler&) = delete;

  // Copies bytes [offset, offset + n) of tensor `name` (of `total` bytes) from `src` (a slot view:
  // device memory on cuda) into its buffer. Pieces must come in order: the first at offset 0, each
  // next where the previous ended. Returns the whole tensor's address once the last piece is in,
  // else nullptr. The address stays valid until Release of the bucket it was handed out with (see
  // HandOut). Errors: INTERNAL for pieces out of order or past the end (the daemon's bug: the
  // tensor in progress is dropped), RESOURCE_EXHAUSTED when the buffer cannot be allocated
  // (naming the tensor, its size and the device), CUDA's codes for a failed copy.
  absl::StatusOr<void*> Add(const std::string& name, uint64_t total, uint64_t offset,
                            const void* src, uint64_t n);
  // The whole tensor returned by the last Add goes out with bucket (version, bucket).
  void HandOut(uint64_t version, uint64_t bucket);
  // The bucket was acked: buffers handed out with it may be reused.
  void Release(uint64_t version, uint64_t bucket);
  // Drops a tensor in progress (a failed or restarted attempt).
  void Abandon();
  // The version ended: frees every buffer not handed out.
  void FreeIdle();

  bool in_progress() const { return current_ != nullptr; }
  const std::string& in_progress_name() const { return name_; }
  // Bytes of the buffers held now (for tests and diagnostics).
  uint64_t held_bytes() const;

 private:
  class Buffer;
  absl::StatusOr<std::unique_ptr<Buffer>> Take(uint64_t bytes, const std::string& name);

  const int cuda_device_;
  gpu::CudaStream stream_;           // cuda: the copies, each synchronized before Add returns
  std::unique_ptr<Buffer> current_;  // being assembled
  std::string name_;
  uint64_t total_ = 0;
  uint64_t received_ = 0;
  std::unique_ptr<Buffer> completed_;  // completed by the last Add, not yet handed out
  struct Handed {
    uint64_t version = 0;
    uint64_t bucket = 0;
    std::unique_ptr<Buffer> buffer;
  };
  std::vector<Handed> handed_;
  std::vector<std::unique_ptr<Buffer>> idle_;
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_PIECE_ASSEMBLER_H_
