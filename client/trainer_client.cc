#include "client/trainer_client.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <optional>
#include <set>
#include <system_error>
#include <thread>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "client/cuda_driver.h"
#include "client/descriptor_socket.h"
#include "client/device_staging.h"
#include "client/local_push.h"
#include "common/fd_passing.h"
#include "common/load_paths.h"
#include "common/message_text.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "common/xxh3.h"

namespace ckpt::client {
namespace {

constexpr int kMaxStreams = 64;
// How often the calling thread wakes up during the upload: progress, cancellation, stall checks.
constexpr absl::Duration kTick = absl::Milliseconds(50);
// Commit verifies every checksum on the daemon: its deadline grows with the bytes.
constexpr double kCommitVerifyBytesPerSecond = 2.0 * (1ull << 30);

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

std::string Quoted(const std::string& name) { return absl::StrCat("'", name, "'"); }

// Opens a file to pass to the daemon: read-only, never blocking on a FIFO, regular files only.
absl::StatusOr<ScopedFd> OpenForLoad(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd.valid()) {
    const int err = errno;
    return absl::Status(err == ENOENT                   ? absl::StatusCode::kNotFound
                        : err == EACCES || err == EPERM ? absl::StatusCode::kPermissionDenied
                                                        : absl::StatusCode::kFailedPrecondition,
                        absl::StrCat("cannot open ", path, ": ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  }
  return fd;
}

}  // namespace

const char* TransportName(Transport transport) {
  switch (transport) {
    case Transport::kLocal:
      return "local";
    case Transport::kGrpc:
      return "grpc";
    case Transport::kAuto:
      break;
  }
  return "auto";
}

absl::StatusOr<Transport> ParseTransport(const std::string& name) {
  if (name == "auto") return Transport::kAuto;
  if (name == "local") return Transport::kLocal;
  if (name == "grpc") return Transport::kGrpc;
  return absl::InvalidArgumentError(
      absl::StrCat("transport ", QuoteForMessage(name, 64), " is not one of auto, local, grpc"));
}

absl::Status ValidatePush(const std::vector<TensorView>& tensors, const PushOptions& options) {
  if (tensors.empty()) return absl::InvalidArgumentError("nothing to push: no tensors");
  if (tensors.size() > std::numeric_limits<uint32_t>::max()) {
    // Chunk.part_tensor names tensors by a 32-bit index (the daemon allows far fewer anyway).
    return absl::InvalidArgumentError(
        absl::StrCat(tensors.size(), " tensors: a version has at most 2^32 - 1"));
  }
  if (options.streams < 1 || options.streams > kMaxStreams) {
    return absl::InvalidArgumentError(
        absl::StrCat("streams must be 1..", kMaxStreams, ", not ", options.streams));
  }
  if (options.chunk_bytes < 1 || options.chunk_bytes > kMaxChunkBytes) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_bytes must be 1..", kMaxChunkBytes,
                                                   " (16 MiB), not ", options.chunk_bytes));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  if (!(options.min_bytes_per_second > 0)) {
    return absl::InvalidArgumentError("min_bytes_per_second must be positive");
  }
  if (options.window_bytes < (uint64_t{1} << 20) || options.window_bytes > (uint64_t{16} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("window_bytes must be 1 MiB to 16 GiB, not ", options.window_bytes));
  }
  if (options.part_count != 0 || options.part_index != 0) {
    if (options.part_count < 2 || options.part_count > 4096 ||
        options.part_index >= options.part_count) {
      return absl::InvalidArgumentError(
          absl::StrCat("part ", options.part_index, " of ", options.part_count,
                       ": part_count is 2..4096 and part_index below it (part_count 0: whole)"));
    }
    if (options.version == 0) {
      return absl::InvalidArgumentError(
          "a part needs a named version: every part of a version is pushed under the same id");
    }
    if (options.update) {
      return absl::InvalidArgumentError(
          "update (push and update) with a part: a version pushed in parts is sent to workers "
          "once every part is in; ask for the update then (Admin.Update)");
    }
  }
  if (options.transport != Transport::kAuto && options.transport != Transport::kLocal &&
      options.transport != Transport::kGrpc) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown transport ", static_cast<int>(options.transport)));
  }
  std::unordered_set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = tensors[i];
    if (t.name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor #", i, " has an empty name"));
    }
    if (t.name.find('\0') != std::string::npos) {
      // Workers read names as C strings too: "w\0x" would come out as a second "w".
      return absl::InvalidArgumentError(absl::StrCat("tensor #", i, " has a NUL byte in its name"));
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name ", Quoted(t.name)));
    }
    if (!DTypeFromWire(static_cast<int>(t.dtype)).has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quoted(t.name), ": unknown dtype ", static_cast<int>(t.dtype)));
    }
    auto expected = TensorByteSize(t.dtype, t.shape);
    if (!expected.ok()) return Annotate(expected.status(), absl::StrCat("tensor ", Quoted(t.name)));
    if (*expected != t.bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", Quoted(t.name), ": ", t.bytes, " bytes given, but shape [",
          absl::StrJoin(t.shape, ", "), "] of ", DTypeName(t.dtype), " needs ", *expected));
    }
    if (t.bytes > 0 && t.data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quoted(t.name), ": data is null for ", t.bytes, " bytes"));
    }
    if (t.device < -1) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(t.name), ": device ",
                                                     t.device,
                                                     " (-1: host memory, else a CUDA ordinal)"));
    }
  }
  return absl::OkStatus();
}

int HashThreadCount(int requested) {
  if (requested > 0) return requested;
  return std::min<int>(8, std::max(1u, std::thread::hardware_concurrency()));
}

std::vector<uint64_t> HashTensors(const std::vector<TensorView>& tensors, int threads) {
  std::vector<uint64_t> hashes(tensors.size());
  // Largest first, handed out one at a time: the threads finish close together.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return tensors[a].bytes > tensors[b].bytes; });
  threads = std::max(1, std::min<int>(HashThreadCount(threads), static_cast<int>(tensors.size())));
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t k = next.fetch_add(1); k < order.size(); k = next.fetch_add(1)) {
      const TensorView& t = tensors[order[k]];
      hashes[order[k]] = XXH3_64bits(t.bytes > 0 ? t.data : "", t.bytes);
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  return hashes;
}

v1::Manifest BuildManifest(const std::vector<TensorView>& tensors,
                           const std::vector<uint64_t>& xxh3) {
  v1::Manifest manifest;
  for (size_t i = 0; i < tensors.size(); ++i) {
    v1::TensorSpec* spec = manifest.add_tensors();
    spec->set_name(tensors[i].name);
    spec->set_dtype(static_cast<v1::DType>(tensors[i].dtype));
    for (int64_t d : tensors[i].shape) spec->add_shape(d);
    spec->set_byte_size(tensors[i].bytes);
    spec->set_xxh3(i < xxh3.size() ? xxh3[i] : 0);
  }
  return manifest;
}

std::vector<ChunkRef> PlanChunks(const std::vector<TensorView>& tensors, size_t chunk_bytes) {
  std::vector<ChunkRef> chunks;
  if (chunk_bytes == 0) return chunks;
  for (size_t i = 0; i < tensors.size(); ++i) {
    for (uint64_t offset = 0; offset < tensors[i].bytes; offset += chunk_bytes) {
      chunks.push_back(
          {i, offset,
           static_cast<size_t>(std::min<uint64_t>(chunk_bytes, tensors[i].bytes - offset))});
    }
  }
  return chunks;
}

std::vector<ChunkMessage> GroupChunks(const std::vector<ChunkRef>& pieces, size_t chunk_bytes,
                                      size_t max_parts) {
  std::vector<ChunkMessage> messages;
  for (size_t k = 0; k < pieces.size(); ++k) {
    ChunkMessage* last = messages.empty() ? nullptr : &messages.back();
    if (last == nullptr || last->end - last->first >= max_parts ||
        pieces[k].bytes > chunk_bytes - std::min<uint64_t>(chunk_bytes, last->bytes)) {
      messages.push_back({k, k, 0});
      last = &messages.back();
    }
    last->end = k + 1;
    last->bytes += pieces[k].bytes;
  }
  return messages;
}

TrainerClient::TrainerClient(Endpoint endpoint, std::shared_ptr<grpc::Channel> channel)
    : endpoint_(std::move(endpoint)),
      stub_(v1::Trainer::NewStub(std::move(channel))),
      windows_(std::make_unique<WindowPool>()),
      staging_(std::make_unique<StagingPool>()) {}

TrainerClient::~TrainerClient() = default;

void TrainerClient::ReleaseStaging() {
  windows_->Release();
  staging_->Release();
}

absl::StatusOr<std::unique_ptr<TrainerClient>> TrainerClient::Connect(const Endpoint& endpoint) {
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, OpenChannel(endpoint));
  return std::unique_ptr<TrainerClient>(new TrainerClient(endpoint, std::move(channel)));
}

absl::StatusOr<v1::Trainer::Stub*> TrainerClient::StreamStub(int i) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int>(stream_stubs_.size()) <= i) stream_stubs_.resize(i + 1);
  if (stream_stubs_[i] == nullptr) {
    ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                     OpenChannel(endpoint_, /*private_connection=*/true));
    stream_stubs_[i] = v1::Trainer::NewStub(std::move(channel));
  }
  return stream_stubs_[i].get();
}

void AbortQuietly(v1::Trainer::Stub* stub, uint64_t version, const std::string& token,
                  absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(&context, std::min(timeout, absl::Seconds(10)));
  v1::AbortRequest request;
  request.set_version(version);
  request.set_upload_token(token);
  v1::AbortResponse response;
  stub->Abort(&context, request, &response);  // Best effort: the push's own error is reported.
}

namespace {

// One PushChunks stream of a push. The context lives here so that the calling thread can cancel
// the stream while a worker thread blocks in Write.
struct Stream {
  grpc::ClientContext context;
  // absl::Now() in nanoseconds when the stream last sent a chunk (or started).
  std::atomic<int64_t> last_progress_ns{0};
  std::atomic<bool> finished{false};
  absl::Status status;  // Written by the worker before `finished`.
  v1::PushChunksResponse response;
};

int64_t NowNs() { return absl::ToUnixNanos(absl::Now()); }

}  // namespace

absl::StatusOr<v1::VersionInfo> TrainerClient::PushTensors(const std::vector<TensorView>& tensors,
                                                           const PushOptions& options) {
  RETURN_IF_ERROR(ValidatePush(tensors, options));
  RETURN_IF_ERROR(SynchronizeDevices(tensors, options.timeout));
  const absl::Status update_needs_local = absl::FailedPreconditionError(
      "update (push and update) needs the local path: a daemon on this node, over its Unix "
      "socket; over gRPC push first, then ask for the update (Admin.Update)");
  if (options.transport == Transport::kGrpc ||
      (options.transport == Transport::kAuto && endpoint_.unix_path.empty())) {
    if (options.update) return update_needs_local;
    return StageAndPushOverGrpc(tensors, options);
  }
  LocalUnavailable unavailable;
  absl::StatusOr<v1::VersionInfo> local =
      PushLocally(stub_.get(), endpoint_, tensors, options, windows_.get(), &unavailable);
  if (local.ok() || options.transport == Transport::kLocal || !unavailable.unavailable) {
    return local;
  }
  // kAuto: the local path is not there and nothing was begun.
  if (options.update) return Annotate(update_needs_local, local.status().message());
  return StageAndPushOverGrpc(tensors, options);
}

absl::StatusOr<v1::VersionInfo> TrainerClient::StageAndPushOverGrpc(
    const std::vector<TensorView>& tensors, const PushOptions& options) {
  ASSIGN_OR_RETURN(StagedTensors staged, StageDeviceTensors(tensors, *staging_));
  absl::StatusOr<v1::VersionInfo> pushed = PushOverGrpc(staged.tensors, options);
  if (staged.block != nullptr) staging_->Give(std::move(staged.block));
  return pushed;
}

absl::Status SynchronizeDevices(const std::vector<TensorView>& tensors, absl::Duration timeout) {
  std::set<int> devices;
  for (const TensorView& t : tensors) {
    if (t.device >= 0 && t.bytes > 0) devices.insert(t.device);
  }
  if (devices.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  // Every CUDA tensor must be where it says: the synchronization below covers only its GPU.
  for (const TensorView& t : tensors) {
    if (t.device < 0 || t.bytes == 0) continue;
    if (absl::Status s = cuda->CheckDevicePointer(t.device, reinterpret_cast<uint64_t>(t.data));
        !s.ok()) {
      return Annotate(s, absl::StrCat("tensor ", Quoted(t.name), " (device ", t.device, ")"));
    }
  }
  // cuCtxSynchronize has no deadline of its own: it runs on a helper thread, which is left
  // behind (blocked in the driver) if the GPU never finishes.
  struct Shared {
    absl::Notification done;
    absl::Status status;
  };
  auto shared = std::make_shared<Shared>();
  std::vector<int> list(devices.begin(), devices.end());
  try {
    std::thread([shared, cuda, list] {
      for (int d : list) {
        shared->status = cuda->Synchronize(d);
        if (!shared->status.ok()) break;
      }
      shared->done.Notify();
    }).detach();
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("starting a thread: ", e.what()));
  }
  if (!shared->done.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("the work queued on the tensors' GPUs did not finish within ",
                     absl::FormatDuration(timeout), " (a hung kernel or collective?)"));
  }
  return shared->status;
}

absl::StatusOr<v1::VersionInfo> TrainerClient::PushOverGrpc(const std::vector<TensorView>& tensors,
                                                            const PushOptions& options) {
  auto cancelled = [&] { return options.cancel != nullptr && options.cancel->load(); };
  const std::vector<uint64_t> hashes = HashTensors(tensors, options.hash_threads);
  if (cancelled()) return absl::CancelledError("push cancelled before it began");

  uint64_t total = 0;
  for (const TensorView& t : tensors) total += t.bytes;

  v1::BeginVersionRequest begin;
  *begin.mutable_manifest() = BuildManifest(tensors, hashes);
  begin.set_version(options.version);
  begin.set_label(options.label);
  if (options.part_count != 0) {
    begin.mutable_part()->set_index(options.part_index);
    begin.mutable_part()->set_count(options.part_count);
  }
  v1::BeginVersionResponse began;
  {
    grpc::ClientContext context;
    SetDeadline(&context, options.timeout);
    grpc::Status s = stub_->BeginVersion(&context, begin, &began);
    if (!s.ok()) {
      return Annotate(
          FromGrpc(s, "BeginVersion", endpoint_),
          absl::StrCat("push of ", tensors.size(), tensors.size() == 1 ? " tensor (" : " tensors (",
                       FormatBytes(total), ")"));
    }
  }
  const uint64_t version = began.version();
  const std::string& token = began.upload_token();
  const std::string context_text = absl::StrCat("push of version ", version);
  auto fail = [&](const absl::Status& status) {
    AbortQuietly(stub_.get(), version, token, options.timeout);
    return Annotate(status, context_text);
  };

  // Upload: each stream takes the next message in tensor order until none is left.
  const std::vector<ChunkRef> pieces = PlanChunks(tensors, options.chunk_bytes);
  const std::vector<ChunkMessage> chunks = GroupChunks(pieces, options.chunk_bytes);
  const int n = static_cast<int>(std::min<size_t>(options.streams, chunks.size()));
  std::vector<std::unique_ptr<Stream>> streams;
  std::vector<v1::Trainer::Stub*> stubs;
  for (int i = 0; i < n; ++i) {
    auto stub = StreamStub(i);
    if (!stub.ok()) return fail(stub.status());
    stubs.push_back(*stub);
    streams.push_back(std::make_unique<Stream>());
  }
  const absl::Duration hard_limit =
      options.timeout + absl::Seconds(static_cast<double>(total) / options.min_bytes_per_second);
  std::atomic<size_t> next_chunk{0};
  std::atomic<uint64_t> sent{0};
  std::atomic<bool> stop{false};

  auto run_stream = [&](int i) {
    Stream& st = *streams[i];
    auto writer = stubs[i]->PushChunks(&st.context, &st.response);
    v1::Chunk chunk;
    chunk.set_version(version);
    chunk.set_upload_token(token);
    bool write_failed = false;
    for (size_t k = next_chunk.fetch_add(1); k < chunks.size() && !stop.load();
         k = next_chunk.fetch_add(1)) {
      const ChunkMessage& m = chunks[k];
      chunk.clear_part_tensor();
      chunk.clear_part_offset();
      chunk.clear_part_bytes();
      std::string* data = chunk.mutable_data();
      if (m.end - m.first == 1) {
        const ChunkRef& c = pieces[m.first];
        const TensorView& t = tensors[c.tensor];
        chunk.set_tensor(t.name);
        chunk.set_offset(c.offset);
        data->assign(static_cast<const char*>(t.data) + c.offset, c.bytes);
      } else {
        chunk.clear_tensor();
        chunk.set_offset(0);
        data->clear();
        data->reserve(m.bytes);
        for (size_t p = m.first; p < m.end; ++p) {
          const ChunkRef& c = pieces[p];
          chunk.add_part_tensor(static_cast<uint32_t>(c.tensor));
          chunk.add_part_offset(c.offset);
          chunk.add_part_bytes(c.bytes);
          data->append(static_cast<const char*>(tensors[c.tensor].data) + c.offset, c.bytes);
        }
      }
      if (!writer->Write(chunk)) {
        write_failed = true;  // The stream broke; Finish says why.
        break;
      }
      sent.fetch_add(m.bytes);
      st.last_progress_ns.store(NowNs());
    }
    if (stop.load() && !write_failed) st.context.TryCancel();
    if (!write_failed) writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (!s.ok()) {
      st.status = FromGrpc(s, "PushChunks", endpoint_);
    } else if (stop.load()) {
      st.status = absl::CancelledError("stopped");
    }
    st.finished.store(true);
  };

  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    streams[i]->context.set_deadline(absl::ToChronoTime(absl::Now() + hard_limit));
    streams[i]->last_progress_ns.store(NowNs());
    threads.emplace_back(run_stream, i);
  }

  // The calling thread reports progress and watches for cancellation and stalled streams.
  absl::Status failure;
  uint64_t reported = 0;
  bool have_reported = false;
  auto stop_all = [&](absl::Status why) {
    if (failure.ok()) failure = std::move(why);
    stop.store(true);
    for (auto& st : streams) st->context.TryCancel();
  };
  for (;;) {
    bool all_finished = true;
    for (int i = 0; i < n; ++i) {
      Stream& st = *streams[i];
      if (st.finished.load()) {
        if (!st.status.ok() && failure.ok() && !stop.load()) stop_all(st.status);
        continue;
      }
      all_finished = false;
      absl::Duration idle = absl::Nanoseconds(NowNs() - st.last_progress_ns.load());
      if (failure.ok() && idle > options.timeout) {
        stop_all(absl::DeadlineExceededError(absl::StrCat(
            "PushChunks stream ", i, " of ", n, " made no progress for ", HumanDuration(idle), " (",
            FormatBytes(sent.load()), " of ", FormatBytes(total), " sent)")));
      }
    }
    if (failure.ok() && cancelled()) stop_all(absl::CancelledError("push cancelled"));
    if (all_finished) break;
    uint64_t done = sent.load();
    if (options.progress && done < total && (!have_reported || done != reported)) {
      options.progress(done, total);
      reported = done;
      have_reported = true;
    }
    absl::SleepFor(kTick);
  }
  for (std::thread& t : threads) t.join();
  if (!failure.ok()) return fail(failure);
  if (cancelled()) return fail(absl::CancelledError("push cancelled"));
  if (options.progress) options.progress(total, total);
  if (cancelled()) return fail(absl::CancelledError("push cancelled"));

  v1::CommitRequest commit;
  commit.set_version(version);
  commit.set_upload_token(token);
  v1::VersionInfo info;
  grpc::ClientContext context;
  SetDeadline(&context, options.timeout + absl::Seconds(static_cast<double>(total) /
                                                        kCommitVerifyBytesPerSecond));
  grpc::Status s = stub_->Commit(&context, commit, &info);
  if (!s.ok()) return fail(FromGrpc(s, "Commit", endpoint_));
  return info;
}

absl::StatusOr<v1::VersionInfo> TrainerClient::LoadFiles(const std::vector<std::string>& paths,
                                                         uint64_t version, const std::string& label,
                                                         absl::Duration timeout,
                                                         const LoadProgressCallback& progress) {
  if (paths.empty()) return absl::InvalidArgumentError("no files to load");
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<std::string> absolute_paths;
  for (const std::string& p : paths) {
    if (p.empty()) return absl::InvalidArgumentError("empty file path");
    std::error_code ec;
    std::filesystem::path absolute = std::filesystem::absolute(p, ec);
    if (ec) return absl::InvalidArgumentError(absl::StrCat("path ", p, ": ", ec.message()));
    absolute_paths.push_back(absolute.lexically_normal().string());
  }
  v1::LoadFilesRequest request;
  request.set_version(version);
  request.set_label(label);
  // On the Unix socket the daemon opens nothing for us: this process expands directories and
  // indexes, opens the files with its own permissions and passes the descriptors, in batches, on
  // the descriptor socket. The connections stay open until the call has ended.
  std::vector<Presentation> presented;
  if (!endpoint_.unix_path.empty()) {
    ASSIGN_OR_RETURN(std::vector<std::string> files, ExpandLoadPaths(absolute_paths, OpenPath));
    for (const std::string& f : files) request.add_paths(f);
    const absl::Time present_by = absl::Now() + std::min(timeout, absl::Seconds(10));
    for (size_t first = 0; first < static_cast<size_t>(request.paths_size());
         first += kMaxFdsPerMessage) {
      std::vector<ScopedFd> batch;
      std::vector<int> raw;
      const size_t end =
          std::min<size_t>(first + kMaxFdsPerMessage, static_cast<size_t>(request.paths_size()));
      for (size_t i = first; i < end; ++i) {
        ASSIGN_OR_RETURN(ScopedFd fd, OpenForLoad(request.paths(static_cast<int>(i))));
        raw.push_back(fd.get());
        batch.push_back(std::move(fd));
      }
      auto p = PresentOnDescriptorSocket(endpoint_.unix_path, raw, present_by);
      if (!p.ok()) return Annotate(p.status(), "LoadFiles: passing the files' descriptors");
      request.add_fd_nonces(p->nonce);
      presented.push_back(*std::move(p));
    }
  } else {
    for (const std::string& p : absolute_paths) request.add_paths(p);
  }
  auto unary = [&]() -> absl::StatusOr<v1::VersionInfo> {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    v1::VersionInfo info;
    grpc::Status s = stub_->LoadFiles(&context, request, &info);
    if (!s.ok()) return FromGrpc(s, "LoadFiles", endpoint_);
    return info;
  };
  if (!progress) return unary();

  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  std::unique_ptr<grpc::ClientReader<v1::LoadFilesProgress>> reader =
      stub_->LoadFilesWithProgress(&context, request);
  v1::LoadFilesProgress message;
  bool any = false;
  std::optional<v1::VersionInfo> info;
  while (reader->Read(&message)) {
    any = true;
    if (message.stage() == v1::LOAD_STAGE_DONE && message.has_version()) info = message.version();
    progress(message);
  }
  grpc::Status s = reader->Finish();
  // An older daemon: the descriptors were not claimed (the method never ran), so the plain call
  // can present the same nonces.
  if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED && !any) return unary();
  if (!s.ok()) return FromGrpc(s, "LoadFiles", endpoint_);
  if (!info.has_value()) {
    return absl::InternalError(
        "LoadFilesWithProgress ended without the committed version (a daemon bug)");
  }
  return *std::move(info);
}

}  // namespace ckpt::client
