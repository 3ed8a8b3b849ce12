// C++ client of ckpt-engined's Trainer API (proto/trainer.proto): pushes a named-tensor state dict
// as a new checkpoint version (BeginVersion, parallel PushChunks streams, Commit), or asks the
// daemon to load safetensors files itself (LoadFiles).
//
// Errors come back as absl::Status with one-line messages that say which step failed and why; the
// codes are the daemon's (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) or the client's own checks'.
// Nothing throws.
#ifndef CKPT_CLIENT_TRAINER_CLIENT_H_
#define CKPT_CLIENT_TRAINER_CLIENT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/daemon_client.h"
#include "common/dtype.h"
#include "proto/trainer.grpc.pb.h"

namespace ckpt::client {

// The daemon accepts chunks of at most this many data bytes.
inline constexpr size_t kMaxChunkBytes = 16u << 20;

// One tensor to push. The bytes are the caller's: they must stay valid and unchanged until
// PushTensors returns (they are read in place, never copied as a whole).
struct TensorView {
  std::string name;
  DType dtype = DType::kUnspecified;
  std::vector<int64_t> shape;
  // Host memory, or with `device` >= 0 a CUDA device address of this process.
  const void* data = nullptr;
  // Must equal product(shape) * DTypeSize(dtype).
  size_t bytes = 0;
  // -1: host memory. Otherwise the CUDA ordinal (of this process) of the GPU whose memory holds
  // the bytes: PushTensors first waits for all work queued on that GPU (so kernels still writing
  // the tensor finish), then, to a local daemon that drives that GPU, hands over the allocation's
  // CUDA IPC handle and the daemon copies the bytes itself; otherwise the client copies them
  // device-to-host (into its shared-memory windows, or pinned memory for gRPC).
  int device = -1;
};

// Called with the bytes sent so far and the total; see PushOptions::progress.
using ProgressCallback = std::function<void(uint64_t bytes_done, uint64_t bytes_total)>;

// How a push reaches the daemon. kLocal: shared-memory windows (Trainer.PushLocal), for a daemon
// on this node reached over its Unix socket; kGrpc: the bytes go in PushChunks messages; kAuto:
// kLocal when the daemon is on the Unix socket and takes it, else kGrpc. The version's
// VersionInfo.transport says which was taken ("local" or "grpc").
enum class Transport { kAuto, kLocal, kGrpc };

// "auto", "local", "grpc".
const char* TransportName(Transport transport);
// INVALID_ARGUMENT naming the accepted values for anything else.
absl::StatusOr<Transport> ParseTransport(const std::string& name);

struct PushOptions {
  // Version id to create; 0: the daemon picks the next one.
  uint64_t version = 0;
  // Free-form label stored with the version (e.g. "step-1200").
  std::string label;
  // Parallel PushChunks streams, each on its own connection: 1..64.
  int streams = 4;
  // Data bytes per chunk: 1..kMaxChunkBytes.
  size_t chunk_bytes = 4u << 20;
  // Deadline of BeginVersion and Abort, and of Commit plus one second per 2 GiB (the daemon
  // verifies the checksums). For the PushChunks streams: how long a stream may go without sending a
  // chunk before the push is cancelled with DEADLINE_EXCEEDED (a stalled daemon or network).
  absl::Duration timeout = absl::Seconds(60);
  // The push's slowest acceptable average rate: every stream also has a hard deadline of `timeout`
  // + total bytes / min_bytes_per_second.
  double min_bytes_per_second = 16.0 * (1 << 20);
  // Called on the thread that called PushTensors, never concurrently: every ~50 ms while bytes go
  // out (only when the count changed), and once with bytes_done == bytes_total after the last
  // stream finished, before Commit. bytes_done never decreases. May be empty.
  ProgressCallback progress;
  // When set and it becomes true, the push stops within ~50 ms, aborts the version and returns
  // CANCELLED. It is checked last after the final progress call, before Commit.
  const std::atomic<bool>* cancel = nullptr;
  // Threads computing the checksums (on the local path: the lanes, each copying whole tensors
  // into the windows and hashing them as it copies); 0: min(8, hardware threads).
  int hash_threads = 0;
  Transport transport = Transport::kAuto;
  // The local path's window: the bytes copied into one memfd before the daemon copies them out.
  // Two windows alternate; the client keeps them for its next push (so their pages are made
  // once), so a client holds up to twice this in shared memory: 1 MiB to 16 GiB.
  uint64_t window_bytes = uint64_t{64} << 20;
  // Push and update (the local path only; FAILED_PRECONDITION over gRPC): the daemon sends the
  // version to its workers while it arrives, each bucket once its tensors are in and verified, and
  // finishes the update after the commit (a push that fails is loaded by no worker; those sent some
  // of its buckets report it as mixed_version). The
  // caller needs the operator role too. PushTensors returns once the version is committed;
  // DaemonClient::WaitLoaded(version) then says when the workers have it.
  bool update = false;
  // One part of a version pushed in parts (docs/cluster.md "Versions in parts"): trainer rank
  // `part_index` of `part_count` pushes the whole tensors it owns, every rank under the same named
  // `version`, to the daemon of its choice. part_count 0: the version is pushed whole; else
  // 2..4096, part_index below it, `version` non-zero and `update` false. The version info says
  // which parts the daemon holds.
  uint32_t part_index = 0;
  uint32_t part_count = 0;
};

// Called with each message of a LoadFiles that reports progress (Trainer.LoadFilesWithProgress):
// the stage, files and bytes so far; the last one has stage LOAD_STAGE_DONE and the version.
using LoadProgressCallback = std::function<void(const v1::LoadFilesProgress& progress)>;

// Local checks of a push before anything goes to the daemon: at least one tensor; names non-empty
// and unique; known dtypes; non-negative dimensions; bytes == product(shape) * element size; data
// set when bytes > 0; options in range. INVALID_ARGUMENT naming the tensor and the problem.
absl::Status ValidatePush(const std::vector<TensorView>& tensors, const PushOptions& options);

// A best-effort Trainer.Abort of a version begun with `token` (deadline: `timeout`, at most
// 10 s), for a push that failed: its own error is what the caller reports.
void AbortQuietly(v1::Trainer::Stub* stub, uint64_t version, const std::string& token,
                  absl::Duration timeout);

// Checks that every CUDA tensor of `tensors` is device memory of the GPU it names
// (INVALID_ARGUMENT naming the tensor), then waits up to `timeout` for all work queued on those
// GPUs (CudaDriver::Synchronize; DEADLINE_EXCEEDED past it): a push reads them only after that.
// OK at once when none is on a GPU.
absl::Status SynchronizeDevices(const std::vector<TensorView>& tensors, absl::Duration timeout);

// The threads that hash a push (PushOptions::hash_threads): `requested` if positive, else
// min(8, hardware threads).
int HashThreadCount(int requested);

// XXH3-64 (seed 0) of each tensor's bytes, computed on up to `threads` threads (0: automatic).
std::vector<uint64_t> HashTensors(const std::vector<TensorView>& tensors, int threads);

// The manifest of a push (TensorSpec per tensor, in order) from the views and their checksums.
v1::Manifest BuildManifest(const std::vector<TensorView>& tensors,
                           const std::vector<uint64_t>& xxh3);

// One chunk of a tensor: bytes [offset, offset + bytes) of tensors[tensor].
struct ChunkRef {
  size_t tensor = 0;
  uint64_t offset = 0;
  size_t bytes = 0;
};

// Cuts every tensor into chunks of at most `chunk_bytes`, in tensor order; tensors of 0 bytes get
// none.
std::vector<ChunkRef> PlanChunks(const std::vector<TensorView>& tensors, size_t chunk_bytes);

// One PushChunks message: pieces [first, end) of a PlanChunks result, `bytes` in all. A message of
// one piece names its tensor; one of several carries them in Chunk.part_* (trainer.proto).
struct ChunkMessage {
  size_t first = 0;
  size_t end = 0;
  uint64_t bytes = 0;
};

// At most this many pieces go in one message (the daemon's limit of a Chunk's parts).
inline constexpr size_t kMaxChunkParts = 65536;

// Groups consecutive pieces into messages of at most `chunk_bytes` and `max_parts` pieces each, in
// order: many small tensors travel together instead of one message each.
std::vector<ChunkMessage> GroupChunks(const std::vector<ChunkRef>& pieces, size_t chunk_bytes,
                                      size_t max_parts = kMaxChunkParts);

// Thread-safe: PushTensors and LoadFiles may run concurrently from several threads.
class WindowPool;
class StagingPool;

class TrainerClient {
 public:
  // The checks and errors of OpenChannel (daemon_client.h); connections are made lazily.
  static absl::StatusOr<std::unique_ptr<TrainerClient>> Connect(const Endpoint& endpoint);

  // Pushes `tensors` as one new version and commits it. Returns the committed version's
  // VersionInfo (its `transport` says which path was taken).
  //
  // Over gRPC (options.transport kGrpc, or kAuto when the local path is not there): ValidatePush,
  // checksums (in parallel), BeginVersion, `options.streams` parallel PushChunks streams (chunks
  // handed out in tensor order to whichever stream is free), Commit.
  //
  // Locally (kLocal, or kAuto on the Unix socket): the tensors are copied, and hashed as they are
  // copied, into two alternating memfd windows that the daemon copies into the version
  // (Trainer.PushLocal, client/local_push.h); kAuto falls back to gRPC only when nothing was begun
  // (no memfd, the descriptor socket refused this process, an older daemon).
  //
  // On any failure after the version was begun it is aborted (a broken stream aborts it on the
  // daemon's side anyway) and nothing is left behind; the error names the step, e.g. "push of
  // version 7: PushChunks failed: ...". The caller's memory is only read.
  absl::StatusOr<v1::VersionInfo> PushTensors(const std::vector<TensorView>& tensors,
                                              const PushOptions& options);

  // Trainer.LoadFiles: the daemon reads the safetensors files itself and commits one new version
  // (0: the daemon picks the id). Relative paths are made absolute against this process's working
  // directory (the daemon's differs). A path may name a directory (the shards its
  // model.safetensors.index.json names, else all its *.safetensors files) or an index file
  // (*.index.json): on the Unix socket this client expands them (ExpandLoadPaths,
  // common/load_paths.h) and opens every file itself, with its own permissions; over TCP the
  // daemon expands and opens them (under its load_files_dirs only). Deadline: now + `timeout`.
  //
  // With `progress` set the call is LoadFilesWithProgress and `progress` is called on this thread
  // for every message (a few per second; a slow callback only means fewer of them). A daemon
  // without that method (UNIMPLEMENTED) gets the plain LoadFiles, without progress.
  absl::StatusOr<v1::VersionInfo> LoadFiles(const std::vector<std::string>& paths, uint64_t version,
                                            const std::string& label, absl::Duration timeout,
                                            const LoadProgressCallback& progress = nullptr);

  const Endpoint& endpoint() const { return endpoint_; }

  // Frees the memory kept between pushes: the local path's windows and the pinned host copy of
  // CUDA tensors (the next push makes them again).
  void ReleaseStaging();

  ~TrainerClient();

 private:
  TrainerClient(Endpoint endpoint, std::shared_ptr<grpc::Channel> channel);

  // The stub of upload stream `i`: one private connection per stream, created on first use and
  // kept for later pushes.
  absl::StatusOr<v1::Trainer::Stub*> StreamStub(int i) ABSL_LOCKS_EXCLUDED(mu_);

  // PushOverGrpc of `tensors` with the CUDA tensors copied to pinned host memory first.
  absl::StatusOr<v1::VersionInfo> StageAndPushOverGrpc(const std::vector<TensorView>& tensors,
                                                       const PushOptions& options);
  // PushTensors over gRPC (BeginVersion, PushChunks, Commit), after ValidatePush.
  absl::StatusOr<v1::VersionInfo> PushOverGrpc(const std::vector<TensorView>& tensors,
                                               const PushOptions& options);

  const Endpoint endpoint_;
  const std::unique_ptr<v1::Trainer::Stub> stub_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<v1::Trainer::Stub>> stream_stubs_ ABSL_GUARDED_BY(mu_);
  // The local path's windows, kept between pushes (client/local_push.h).
  const std::unique_ptr<WindowPool> windows_;
  // The gRPC path's pinned host copy of CUDA tensors, kept between pushes
  // (client/device_staging.h).
  const std::unique_ptr<StagingPool> staging_;
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_TRAINER_CLIENT_H_
