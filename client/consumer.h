// Consumer: the worker side of an update. An inference worker attaches to its node's daemon, maps
// the staging slots once, and then receives each version bucket by bucket as views into the slots.
//
//   ckpt::client::ConsumerOptions options;
//   options.cuda_device = 0;                      // -1: host tensors (host backend)
//   ASSIGN_OR_RETURN(auto consumer, Consumer::Attach(endpoint, options));
//   ASSIGN_OR_RETURN(LoadedVersion v, consumer->ReceiveVersion(
//       [&](const ConsumerBucket& bucket) -> absl::Status {
//         for (const ReceivedTensor& t : bucket.tensors) CopyIntoModel(t);   // before returning
//         return absl::OkStatus();
//       }, absl::Minutes(10)));
//
// Views are valid only until the bucket is acked (ReceiveVersion: when the callback returns; Next:
// at the next Ack): the daemon then fills the slot again.
//
// Tensors larger than a slot come from the daemon in pieces, one bucket each; the Consumer puts
// them together (piece_assembler.h: a buffer of the tensor's size, on the worker's GPU on cuda,
// held from its first piece until the bucket that completes it is acked) and hands out only whole
// tensors: the bucket of the last piece carries the tensor, buckets of middle pieces are acked by
// Next itself and never seen by the caller. cuda views are device pointers on the
// worker's GPU, mapped through CUDA IPC; host views point into shared memory (read-only).
//
// Checksums (options.verify_checksums, off by default): Next hashes every tensor of a bucket in
// the slot (XXH3-64) and compares it with the version's checksum before it hands the bucket out,
// so every bucket a caller sees (Next, ReceiveVersion's callback) was verified. A mismatch fails
// that bucket: Next acks it with an error naming the tensor and both hashes (the daemon fails this
// worker's update with it) and returns DATA_LOSS with the same text. Cost per bucket: one read of
// its bytes from host memory (host backend), or a copy to host memory through a 16 MiB pinned
// buffer plus the hashing (cuda backend), before the bucket is handed out.
//
// Thread-safety: one thread drives a Consumer (Next/Ack/Loaded or ReceiveVersion); a background
// thread reads the stream. Every wait has a deadline.
#ifndef CKPT_CLIENT_CONSUMER_H_
#define CKPT_CLIENT_CONSUMER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/checksum_verify.h"
#include "client/daemon_client.h"
#include "client/piece_assembler.h"
#include "common/dtype.h"
#include "proto/consumer.grpc.pb.h"

namespace ckpt::client {

struct ConsumerOptions {
  // The CUDA device (ordinal in this process) the worker loads into; its UUID is sent to the
  // daemon. -1: no GPU (host backend; the views are host memory).
  int cuda_device = -1;
  // "vllm", "sglang", ...: shown in `ckptctl status` and in errors.
  std::string engine = "cpp";
  // Only these tensors are sent; empty: all.
  std::vector<std::string> tensor_names;
  // Deadline of the attach (descriptor socket, stream, slot mapping).
  absl::Duration attach_timeout = absl::Seconds(30);
  // Verify each tensor's XXH3-64 against the version's checksum before a bucket is handed out
  // (see the top of this file). Also settable later: Consumer::set_verify_checksums.
  bool verify_checksums = false;
  // The consistent switch (UpdateRequest.consistent): set, this worker is pausable. on_pause is
  // called when a consistent update begins, before any of its buckets: stop generating, then
  // return OK (or an error saying why not: the update then sends nothing and fails). on_resume is
  // called once every worker of the update loaded it (`loaded` true) or it failed (false, with
  // `error`): generation may go on. Both run on the consumer's reader thread, whatever the
  // caller's thread is doing (generating, or waiting in Next); they must not call this Consumer's
  // methods. A pause is answered after on_pause returns, so it may take up to ack_timeout.
  std::function<absl::Status(uint64_t version)> on_pause;
  std::function<void(uint64_t version, bool loaded, const std::string& error)> on_resume;
};

struct ReceivedTensor {
  std::string name;
  DType dtype = DType::kUnspecified;
  std::vector<int64_t> shape;
  void* data = nullptr;  // device pointer (cuda) or host pointer (host)
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;  // the version's XXH3-64 of these bytes (checked by Next when verifying)
  bool no_checksum = false;  // the daemon has none (converted on the way): not verified
};

struct ConsumerEvent {
  enum class Kind {
    kBucket,       // tensors to load; Ack when done with them
    kVersionDone,  // every bucket of `version` was sent; answer with Loaded
  };
  Kind kind = Kind::kBucket;
  uint64_t version = 0;
  uint64_t bucket = 0;
  bool last = false;
  std::vector<ReceivedTensor> tensors;
};

struct LoadedVersion {
  uint64_t version = 0;
  uint64_t tensors = 0;
  uint64_t bytes = 0;
};

class Consumer {
 public:
  // Attaches: proves this process's identity on `<socket>.fds`, opens the Attach stream, maps the
  // slots. Errors from the daemon keep its code (PERMISSION_DENIED for a disallowed uid,
  // FAILED_PRECONDITION for a GPU it does not drive) and name the daemon. Unix sockets only.
  static absl::StatusOr<std::unique_ptr<Consumer>> Attach(const Endpoint& endpoint,
                                                          ConsumerOptions options);
  // Detaches (closes the stream) and unmaps the slots.
  ~Consumer();
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  // The next event, waiting until `deadline`. DEADLINE_EXCEEDED when none came; UNAVAILABLE when
  // the daemon ended the stream (the message gives its reason, e.g. shutting down) or it broke.
  // With verify_checksums: DATA_LOSS when a tensor of the bucket does not match its checksum (or
  // the error that kept it from being verified, e.g. a failed device copy); the bucket was acked
  // with that error already (do not Ack it), the rest of that attempt is dropped, and the next
  // Next waits for the next update.
  absl::StatusOr<ConsumerEvent> Next(absl::Time deadline);
  // Acks a bucket (frees its slot on the daemon). A non-empty `error` reports that this worker
  // failed to load it (the update then fails naming this worker; the rest of that attempt, already
  // queued, is dropped by Next).
  absl::Status Ack(uint64_t version, uint64_t bucket, const std::string& error = "");
  // Answers VersionDone.
  absl::Status Loaded(uint64_t version, uint64_t tensors, uint64_t bytes,
                      const std::string& error = "");

  // Waits (until now + `timeout`) for the next version and receives all of it: `on_bucket` per
  // bucket (its error is reported to the daemon and returned), then reports it loaded.
  absl::StatusOr<LoadedVersion> ReceiveVersion(
      const std::function<absl::Status(const ConsumerEvent&)>& on_bucket, absl::Duration timeout);

  // Turns checksum verification on or off for the buckets Next returns from now on.
  void set_verify_checksums(bool on) { options_.verify_checksums = on; }
  bool verify_checksums() const { return options_.verify_checksums; }

  // "cuda" or "host".
  const std::string& backend() const { return backend_; }
  const std::string& gpu_uuid() const { return gpu_uuid_; }
  int slot_count() const { return static_cast<int>(slots_.size()); }
  uint64_t slot_bytes() const { return slot_bytes_; }
  // Where each slot is mapped in this process (device pointers on cuda): views of whole tensors
  // that fit a slot lie inside one of them.
  const std::vector<uint8_t*>& slot_addresses() const { return slots_; }

 private:
  class Slots;
  Consumer() = default;
  void ReadLoop();
  absl::Status Write(const v1::WorkerMessage& message);
  // One message's worth of Next: nullopt when it gave nothing to hand out (a middle piece of a
  // split tensor, acked already).
  absl::StatusOr<std::optional<ConsumerEvent>> NextOnce(absl::Time deadline);
  // Checks the bucket in `event` (verify_checksums); on failure acks it with the error.
  absl::Status VerifyBucket(const ConsumerEvent& event);

  Endpoint endpoint_;
  ConsumerOptions options_;
  std::string backend_;
  std::string gpu_uuid_;
  uint64_t slot_bytes_ = 0;
  std::vector<uint8_t*> slots_;
  std::unique_ptr<Slots> mappings_;
  std::unique_ptr<ChecksumVerifier> verifier_;  // created by the first bucket verified
  // Tensors larger than a slot, put together from their pieces (piece_assembler.h).
  std::unique_ptr<PieceAssembler> pieces_;
  uint64_t pieces_version_ = 0;
  // The (version, bucket) this worker last failed (acked with an error): the daemon sends it
  // nothing more of that attempt, but buckets it had already sent may still be queued; Next drops
  // them.
  bool failed_ = false;
  uint64_t failed_version_ = 0;
  uint64_t failed_bucket_ = 0;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Consumer::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::DaemonMessage>> stream_;
  absl::Mutex write_mu_;
  bool finished_ ABSL_GUARDED_BY(write_mu_) = false;     // Finish was called
  bool writes_done_ ABSL_GUARDED_BY(write_mu_) = false;  // the worker's side is half-closed
  std::thread reader_;

  absl::Mutex mu_;
  std::deque<v1::DaemonMessage> inbox_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  // Why the stream ended: the daemon's status (its code kept, e.g. PERMISSION_DENIED at attach), or
  // UNAVAILABLE with the daemon's Detached reason.
  absl::Status end_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_CONSUMER_H_
