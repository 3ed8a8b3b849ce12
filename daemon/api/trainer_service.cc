#include "daemon/api/trainer_service.h"

#include <cstdlib>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/random_id.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "common/xxh3.h"
#include "daemon/api/grpc_status.h"
#include "daemon/api/local_push.h"
#include "daemon/store/file_loader.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

grpc::Status TrainerService::BeginVersion(grpc::ServerContext* context,
                                          const v1::BeginVersionRequest* request,
                                          v1::BeginVersionResponse* response) {
  std::string who;
  if (auto s = auth_->Check(*context, kRoleTrainer, "BeginVersion", &who); !s.ok()) return s;
  // The call's deadline bounds the wait for memory during warm-up.
  auto begun = store_->Begin(request->manifest(), request->version(), request->label(), who,
                             /*verify_checksums=*/true, CallDeadline(*context),
                             /*may_retire=*/true, /*transport=*/"",
                             {request->part().index(), request->part().count()});
  if (!begun.ok()) return ToGrpc(begun.status());
  response->set_version(begun->version);
  response->set_upload_token(begun->upload_token);
  return grpc::Status::OK;
}

grpc::Status TrainerService::PushChunks(grpc::ServerContext* context,
                                        grpc::ServerReader<v1::Chunk>* reader,
                                        v1::PushChunksResponse* response) {
  std::string who;
  if (auto s = auth_->Check(*context, kRoleTrainer, "PushChunks", &who); !s.ok()) return s;
  StreamWatchdog::Guard watch;
  if (options_.watchdog != nullptr) {
    watch = options_.watchdog->Watch(context, options_.push_idle_timeout,
                                     absl::StrCat("PushChunks stream of ", who));
  }
  v1::Chunk chunk;
  // Versions this stream wrote to, with their tokens: aborted if the stream breaks.
  std::set<std::pair<uint64_t, std::string>> touched;
  uint64_t chunks = 0, bytes = 0;
  std::vector<VersionStore::ChunkPart> parts;
  while (reader->Read(&chunk)) {
    watch.Touch();
    absl::Status s;
    const int nparts = chunk.part_tensor_size();
    if (nparts == 0 && chunk.part_offset_size() == 0 && chunk.part_bytes_size() == 0) {
      s = store_->WriteChunk(chunk.version(), chunk.upload_token(), chunk.tensor(), chunk.offset(),
                             chunk.data().data(), chunk.data().size());
    } else if (chunk.part_offset_size() != nparts || chunk.part_bytes_size() != nparts) {
      s = absl::InvalidArgumentError(absl::StrCat(
          "a chunk's part lists differ in length (", nparts, " part_tensor, ",
          chunk.part_offset_size(), " part_offset, ", chunk.part_bytes_size(), " part_bytes)"));
    } else if (!chunk.tensor().empty() || chunk.offset() != 0) {
      s = absl::InvalidArgumentError(
          "a chunk with parts must leave tensor empty and offset 0 (each part names its tensor)");
    } else if (static_cast<size_t>(nparts) > VersionStore::kMaxChunkParts) {
      s = absl::InvalidArgumentError(
          absl::StrCat("chunk has ", nparts, " parts, more than ", VersionStore::kMaxChunkParts));
    } else {
      parts.clear();
      parts.reserve(nparts);
      for (int k = 0; k < nparts; ++k) {
        parts.push_back({chunk.part_tensor(k), chunk.part_offset(k), chunk.part_bytes(k)});
      }
      s = store_->WriteChunkParts(chunk.version(), chunk.upload_token(), parts, chunk.data().data(),
                                  chunk.data().size());
    }
    if (!s.ok()) return ToGrpc(s);
    touched.emplace(chunk.version(), chunk.upload_token());
    ++chunks;
    bytes += chunk.data().size();
  }
  if (context->IsCancelled()) {
    const std::string why =
        watch.cancelled()
            ? absl::StrCat("no chunk came for ", absl::FormatDuration(options_.push_idle_timeout))
            : std::string("the trainer's push stream broke");
    for (const auto& [version, token] : touched) (void)store_->Abort(version, token, why);
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        absl::StrCat("push stream cancelled (", why, "); its versions aborted"));
  }
  response->set_chunks(chunks);
  response->set_bytes(bytes);
  return grpc::Status::OK;
}

grpc::Status TrainerService::Commit(grpc::ServerContext* context, const v1::CommitRequest* request,
                                    v1::VersionInfo* response) {
  if (auto s = auth_->Check(*context, kRoleTrainer, "Commit"); !s.ok()) return s;
  auto info = store_->Commit(request->version(), request->upload_token());
  if (!info.ok()) return ToGrpc(info.status());
  *response = std::move(*info);
  return grpc::Status::OK;
}

grpc::Status TrainerService::Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                                   v1::AbortResponse* response) {
  if (auto s = auth_->Check(*context, kRoleTrainer, "Abort"); !s.ok()) return s;
  if (request->upload_token().empty()) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "Abort needs the upload token");
  }
  return ToGrpc(store_->Abort(request->version(), request->upload_token(), "the trainer asked"));
}

absl::Time TrainerService::LoadDeadline(const grpc::ServerContext& context) const {
  return std::min(absl::Now() + options_.load_timeout, CallDeadline(context));
}

absl::StatusOr<v1::VersionInfo> TrainerService::RunLoad(grpc::ServerContext* context,
                                                        const v1::LoadFilesRequest& request,
                                                        const Principal& caller, bool tcp,
                                                        absl::Time deadline,
                                                        LoadProgress* progress) {
  std::vector<std::string> paths(request.paths().begin(), request.paths().end());
  RETURN_IF_ERROR(CheckLoadPaths(paths));
  LoadControl control;
  control.progress = progress;
  control.cancelled = [context] { return context->IsCancelled(); };
  if (tcp) {
    // A TCP caller may only name files under load_files_dirs, and learns nothing about others.
    if (options_.load_files_dirs.empty()) {
      return absl::PermissionDeniedError(
          "LoadFiles over TCP is off: the daemon's load_files_dirs is empty (use the Unix socket, "
          "or push the tensors)");
    }
    if (request.fd_nonces_size() > 0) {
      return absl::InvalidArgumentError("LoadFilesRequest.fd_nonces is for the Unix socket only");
    }
    return LoadSafetensorsFiles(*store_, paths, request.version(), request.label(), caller.name,
                                options_.load_threads, deadline, options_.load_files_dirs, control);
  }
  HeldFds held(&held_passed_fds_);  // until the load has ended
  ASSIGN_OR_RETURN(std::vector<LoadFile> files, ClaimPassedFiles(request, caller, held));
  return LoadSafetensorsFds(*store_, std::move(files), request.version(), request.label(),
                            caller.name, options_.load_threads, deadline, control);
}

grpc::Status TrainerService::LoadFiles(grpc::ServerContext* context,
                                       const v1::LoadFilesRequest* request,
                                       v1::VersionInfo* response) {
  Principal caller;
  if (auto s = auth_->Check(*context, kRoleTrainer, "LoadFiles", &caller); !s.ok()) return s;
  auto info = RunLoad(context, *request, caller, IsTcpCall(*context), LoadDeadline(*context),
                      /*progress=*/nullptr);
  if (!info.ok()) return ToGrpc(info.status());
  *response = std::move(*info);
  return grpc::Status::OK;
}

namespace {

v1::LoadFilesProgress ProgressMessage(const LoadProgress::Snapshot& s) {
  v1::LoadFilesProgress m;
  m.set_stage(s.stage);
  m.set_files_total(s.files_total);
  m.set_headers_read(s.headers_read);
  m.set_files_done(s.files_done);
  m.set_bytes_total(s.bytes_total);
  m.set_bytes_done(s.bytes_done);
  return m;
}

}  // namespace

grpc::Status TrainerService::LoadFilesWithProgress(
    grpc::ServerContext* context, const v1::LoadFilesRequest* request,
    grpc::ServerWriter<v1::LoadFilesProgress>* writer) {
  Principal caller;
  if (auto s = auth_->Check(*context, kRoleTrainer, "LoadFilesWithProgress", &caller); !s.ok()) {
    return s;
  }
  const bool tcp = IsTcpCall(*context);
  const absl::Time deadline = LoadDeadline(*context);
  // Idle time accrues only while a Write blocks (a reader that stopped reading): the loop below
  // touches the guard every kProgressInterval otherwise.
  StreamWatchdog::Guard watch;
  if (options_.watchdog != nullptr) {
    watch = options_.watchdog->Watch(context, options_.push_idle_timeout,
                                     absl::StrCat("LoadFilesWithProgress stream of ", caller.name));
  }
  LoadProgress progress;
  absl::StatusOr<v1::VersionInfo> info;
  std::thread load;
  try {
    load = std::thread([&] {
      info = RunLoad(context, *request, caller, tcp, deadline, &progress);
      progress.Finish();
    });
  } catch (const std::system_error& e) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("LoadFilesWithProgress: no thread to load with: ", e.what()));
  }
  // This thread only reports. A Write that blocks holds up nothing but the reports: the load
  // counts on, and the next report is simply the newest count.
  bool stream_ok = true;
  bool sent_any = false;
  LoadProgress::Snapshot sent;
  for (bool finished = false; !finished;) {
    const std::vector<LoadProgress::Snapshot> snapshots =
        progress.Take(kProgressInterval, &finished);
    watch.Touch();
    for (const LoadProgress::Snapshot& snap : snapshots) {
      if (!stream_ok || snap.stage == v1::LOAD_STAGE_UNSPECIFIED || (sent_any && snap == sent)) {
        continue;
      }
      if (!writer->Write(ProgressMessage(snap))) {
        stream_ok = false;  // the caller went away; the load sees the cancelled context
        continue;
      }
      watch.Touch();
      sent = snap;
      sent_any = true;
    }
  }
  load.join();
  if (!info.ok()) return ToGrpc(info.status());
  v1::LoadFilesProgress last = ProgressMessage(progress.Current());
  last.set_stage(v1::LOAD_STAGE_DONE);
  *last.mutable_version() = *info;
  if (!stream_ok || !writer->Write(last)) {
    spdlog::warn(
        "LoadFilesWithProgress: version {} is committed, but the progress stream of {} "
        "broke before it was told",
        info->version(), caller.name);
    return grpc::Status(
        grpc::StatusCode::CANCELLED,
        absl::StrCat("the progress stream broke; version ", info->version(), " was committed"));
  }
  return grpc::Status::OK;
}

namespace {

// Window pieces copied by one thread at a time.
constexpr uint64_t kWindowPieceBytes = uint64_t{8} << 20;
// A pull lane reads 1 MiB at a time and hashes it at once: up to 16 lanes then keep 16 MiB in
// flight, which stays in cache for the hash (8 MiB pieces, 128 MiB across 16 lanes, did not: the
// hash read them back from memory, a third pass).
constexpr uint64_t kPullPieceBytes = uint64_t{1} << 20;

const char* StepName(v1::LocalPushRequest::StepCase step) {
  switch (step) {
    case v1::LocalPushRequest::kBegin:
      return "begin";
    case v1::LocalPushRequest::kWindow:
      return "window";
    case v1::LocalPushRequest::kCommit:
      return "commit";
    case v1::LocalPushRequest::kIpc:
      return "ipc";
    case v1::LocalPushRequest::kPull:
      return "pull";
    default:
      return "an empty message";
  }
}

}  // namespace

grpc::Status TrainerService::PushLocal(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::LocalPushReply, v1::LocalPushRequest>* stream) {
  Principal caller;
  if (auto s = auth_->Check(*context, kRoleTrainer, "PushLocal", &caller); !s.ok()) return s;
  if (IsTcpCall(*context) || !caller.local || options_.descriptors == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "PushLocal is for trainers on this node, over the daemon's Unix socket "
                        "and its descriptor socket; over TCP push with PushChunks");
  }
  StreamWatchdog::Guard watch;
  if (options_.watchdog != nullptr) {
    watch = options_.watchdog->Watch(context, options_.push_idle_timeout,
                                     absl::StrCat("PushLocal stream of ", caller.name));
  }
  v1::LocalPushRequest first;
  if (!stream->Read(&first)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "PushLocal: the stream ended before begin");
  }
  watch.Touch();
  if (first.step_case() != v1::LocalPushRequest::kBegin) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("PushLocal: the first message must be begin, not ",
                                     StepName(first.step_case())));
  }
  return RunLocalPush(context, stream, caller, first.begin(), watch);
}

grpc::Status TrainerService::RunLocalPush(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::LocalPushReply, v1::LocalPushRequest>* stream,
    const Principal& caller, const v1::LocalPushBegin& begin, StreamWatchdog::Guard& watch) {
  if (begin.update() && (caller.roles & kRoleOperator) == 0) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat("PushLocal: begin.update (push and update) sends the version "
                                     "to the workers: it needs the operator role, which ",
                                     caller.name, " lacks"));
  }
  const bool is_part = begin.part().count() != 0;
  if (begin.update() && is_part) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "PushLocal: begin.update (push and update) with begin.part: a version "
                        "pushed in parts is sent to workers once every part is in (ask for the "
                        "update then)");
  }
  if (static_cast<size_t>(begin.ipc_gpus_size()) > kMaxIpcGpus) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("PushLocal: begin names ", begin.ipc_gpus_size(),
                                     " ipc_gpus; at most ", kMaxIpcGpus));
  }
  // The trainer's GPUs this daemon copies from itself (uuid -> this process's ordinal).
  std::map<std::string, int> ipc_gpus;
  if (options_.gpu_ingest != nullptr) {
    for (const std::string& uuid : begin.ipc_gpus()) {
      const int device = options_.gpu_ingest->DeviceOf(uuid);
      if (device >= 0) ipc_gpus.emplace(uuid, device);
    }
  }
  // The checksums come at commit (the trainer hashes while it copies): the version begins without
  // them and is verified against the commit's list.
  auto begun = store_->Begin(begin.manifest(), begin.version(), begin.label(), caller.name,
                             /*verify_checksums=*/false, CallDeadline(*context),
                             /*may_retire=*/true, /*transport=*/"local",
                             {begin.part().index(), begin.part().count()});
  if (!begun.ok()) return ToGrpc(begun.status());
  const uint64_t version = begun->version;
  const std::string token = begun->upload_token;
  const v1::Manifest& manifest = begin.manifest();
  const std::string what = absl::StrCat("PushLocal of version ", version);
  bool committed = false;
  std::string abort_why = "the trainer's PushLocal stream broke";
  // An update that follows the push is sent while the push arrives: the engine's overlapped
  // update hears of each tensor through `feed` (null when it does not run: the version is then
  // updated once committed).
  // (Not for a part: auto_update hears of a parted version once every part is committed here.)
  const bool update_follows = (begin.update() || options_.auto_update) && !is_part;
  std::shared_ptr<PushFeed> feed;
  if (update_follows && options_.engine != nullptr) {
    auto leased = store_->LeaseStaging(version, token);
    if (leased.ok()) {
      feed = std::make_shared<PushFeed>(version, static_cast<size_t>(manifest.tensors_size()));
      // Tensors of no bytes never come in a window: they are final now (the commit checks the
      // trainer's value of them too).
      for (int i = 0; i < manifest.tensors_size(); ++i) {
        if (manifest.tensors(i).byte_size() == 0) {
          feed->MarkReady(static_cast<size_t>(i), XXH3_64bits("", 0));
        }
      }
      if (!options_.engine->StartOverlapped(std::move(leased->lease), std::move(leased->manifest),
                                            feed, begin.update() ? "push" : "auto_update")) {
        feed.reset();
      }
    }
  }
  // Aborts the version on every way out but a commit (and fails the update that follows it).
  struct AbortUnlessCommitted {
    VersionStore* store;
    uint64_t version;
    const std::string& token;
    const bool& committed;
    const std::string& why;
    PushFeed* feed;
    ~AbortUnlessCommitted() {
      if (committed) return;
      if (feed != nullptr) {
        feed->Fail(absl::AbortedError(absl::StrCat("version ", version, " was aborted: ", why)));
      }
      (void)store->Abort(version, token, why);
    }
  } abort_guard{store_, version, token, committed, abort_why, feed.get()};
  auto fail = [&](const absl::Status& s) {
    abort_why = absl::StrCat("PushLocal failed: ", s.message());
    return ToGrpc(Annotate(s, what));
  };

  // The trainer's memory, when it offered its host tensors to be read there: the nonce proves, at
  // every pull step, that the memory read is that of the process the nonce was handed to.
  std::unique_ptr<TrainerMemory> memory;
  std::string pull_nonce;
  if (begin.pull() && options_.local_pull) {
    std::string why;
    if (MayPull(caller.uid, &why)) {
      auto opened = TrainerMemory::Open(caller.pid);
      if (opened.ok()) {
        memory = *std::move(opened);
        pull_nonce = RandomHex128();
      } else {
        why = std::string(opened.status().message());
      }
    }
    if (memory == nullptr) {
      spdlog::info("PushLocal of version {}: no pull ({}); the trainer uses windows", version, why);
    }
  }
  v1::LocalPushReply reply;
  reply.mutable_begun()->set_version(version);
  reply.mutable_begun()->set_upload_token(token);
  reply.mutable_begun()->set_pull_nonce(pull_nonce);
  for (const auto& [uuid, device] : ipc_gpus) reply.mutable_begun()->add_ipc_gpus(uuid);
  if (!stream->Write(reply)) return grpc::Status(grpc::StatusCode::CANCELLED, "stream broke");
  watch.Touch();

  auto cancelled = [context] { return context->IsCancelled(); };
  // What the lanes of an ipc or pull step poll between pieces: a long copy keeps the stream alive.
  auto cancelled_or_alive = [&] {
    watch.Touch();
    return context->IsCancelled();
  };
  // Copies the windows into the version, each tensor's bytes once and in order, hashing them as
  // they land: the commit verifies those checksums against the trainer's.
  LocalPushCopier copier(manifest);
  uint64_t windows = 0;
  uint64_t ipc_steps = 0;
  uint64_t ipc_bytes = 0;
  uint64_t pull_steps = 0;
  int pull_probes = 0;
  v1::LocalPushRequest message;
  while (stream->Read(&message)) {
    watch.Touch();
    if (message.step_case() == v1::LocalPushRequest::kWindow) {
      uint64_t window_bytes = 0;
      auto parts = WindowParts(message.window(), manifest, &window_bytes);
      if (!parts.ok()) return fail(parts.status());
      if (absl::Status s = CheckEndedShape(message.window(), manifest); !s.ok()) return fail(s);
      HeldFds held(&held_passed_fds_);
      auto fd = ClaimWindow(message.window().fd_nonce(), caller, held);
      if (!fd.ok()) return fail(fd.status());
      if (absl::Status s = CheckWindowFd(fd->get(), window_bytes); !s.ok()) return fail(s);
      auto lease = store_->OpenWriter(version, token);
      if (!lease.ok()) return fail(lease.status());
      absl::Status copied = copier.CopyWindow(
          fd->get(), *parts, **lease, options_.local_copy_threads, kWindowPieceBytes, cancelled);
      lease->reset();
      if (copied.ok()) {
        copied =
            VerifyEnded(message.window(), manifest, copier, [&feed](uint32_t t, uint64_t xxh3) {
              if (feed != nullptr) feed->MarkReady(t, xxh3);
            });
      }
      if (!copied.ok()) return fail(Annotate(copied, absl::StrCat("window ", windows)));
      ++windows;
      watch.Touch();
      reply.Clear();
      reply.set_windows_done(windows);
      if (!stream->Write(reply)) break;  // the trainer went away: aborted below
      continue;
    }
    if (message.step_case() == v1::LocalPushRequest::kPull) {
      v1::LocalPushPulled pulled;
      absl::Status st =
          PullStep(message.pull(), manifest, memory.get(), pull_nonce, copier, version, token,
                   cancelled_or_alive, feed.get(), &pull_probes, &pulled);
      if (!st.ok()) return fail(Annotate(st, absl::StrCat("pull step ", pull_steps)));
      pulled.set_steps(++pull_steps);
      watch.Touch();
      reply.Clear();
      *reply.mutable_pulled() = pulled;
      if (!stream->Write(reply)) break;  // the trainer went away: aborted below
      continue;
    }
    if (message.step_case() == v1::LocalPushRequest::kIpc) {
      absl::Status copied = CopyIpcStep(message.ipc(), manifest, ipc_gpus, copier, version, token,
                                        cancelled_or_alive, &ipc_bytes, feed.get());
      if (!copied.ok()) return fail(Annotate(copied, absl::StrCat("ipc step ", ipc_steps)));
      ++ipc_steps;
      watch.Touch();
      reply.Clear();
      reply.set_ipc_done(ipc_steps);
      if (!stream->Write(reply)) break;  // the trainer went away: aborted below
      continue;
    }
    if (message.step_case() == v1::LocalPushRequest::kCommit) {
      std::vector<uint64_t> expected;
      if (message.commit().xxh3_size() > 0) {
        expected.assign(message.commit().xxh3().begin(), message.commit().xxh3().end());
      } else {
        for (const v1::TensorSpec& t : manifest.tensors()) expected.push_back(t.xxh3());
      }
      // The trainer has no checksum of a tensor the daemon copied from its GPU memory: the
      // daemon's, of the bytes it stored, is recorded (what workers verify against).
      if (expected.size() == static_cast<size_t>(manifest.tensors_size())) {
        for (size_t t = 0; t < expected.size(); ++t) {
          if (copier.Claimed(static_cast<uint32_t>(t))) expected[t] = copier.Checksums()[t];
        }
      }
      // With every byte in, the copier's checksums are those of the stored bytes; otherwise the
      // store hashes what is there and names the tensors that lack bytes.
      // With an overlapped update the engine sends the version (or queues it) itself.
      auto info = store_->Commit(version, token, /*notify=*/feed == nullptr, &expected,
                                 copier.Complete() ? &copier.Checksums() : nullptr);
      if (!info.ok()) return fail(info.status());
      committed = true;
      if (feed != nullptr) {
        feed->MarkCommitted(expected);
      } else if (begin.update() && !options_.auto_update && options_.engine != nullptr) {
        options_.engine->RequestAutoUpdate(version);
      }
      reply.Clear();
      *reply.mutable_committed() = *info;
      if (!stream->Write(reply)) {
        spdlog::warn(
            "PushLocal: version {} is committed, but the stream of {} broke before it "
            "was told",
            version, caller.name);
      }
      spdlog::info(
          "version {}: {} from host memory ({} window(s), {} pull step(s)) and {} from GPU memory "
          "by {} (local push)",
          version, FormatBytes(info->total_bytes() - ipc_bytes), windows, pull_steps,
          FormatBytes(ipc_bytes), caller.name);
      return grpc::Status::OK;
    }
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "expected a window, an ipc step or the commit, not ", StepName(message.step_case()))));
  }
  if (watch.cancelled()) {
    abort_why =
        absl::StrCat("no message came for ", absl::FormatDuration(options_.push_idle_timeout));
  }
  return grpc::Status(grpc::StatusCode::CANCELLED,
                      absl::StrCat(what, ": the stream ended before the commit (", abort_why,
                                   "); the version is aborted"));
}

absl::Status TrainerService::CopyIpcStep(const v1::LocalPushIpc& ipc, const v1::Manifest& manifest,
                                         const std::map<std::string, int>& ipc_gpus,
                                         LocalPushCopier& copier, uint64_t version,
                                         const std::string& token,
                                         const std::function<bool()>& cancelled,
                                         uint64_t* ipc_bytes, PushFeed* feed) {
  ASSIGN_OR_RETURN(std::vector<IpcPart> parts, IpcParts(ipc, manifest, ipc_gpus));
  std::vector<uint32_t> tensors;
  uint64_t bytes = 0;
  for (const IpcPart& p : parts) {
    tensors.push_back(p.tensor);
    bytes += p.bytes;  // no overflow: each tensor is in the version's memory
  }
  RETURN_IF_ERROR(copier.ClaimWhole(tensors));
  ASSIGN_OR_RETURN(std::unique_ptr<VersionStore::WriteLease> lease,
                   store_->OpenWriter(version, token));
  std::vector<GpuIngest::Source> sources;
  sources.reserve(parts.size());
  for (const IpcPart& p : parts) {
    ASSIGN_OR_RETURN(gpu::IpcHandle handle, gpu::IpcHandle::FromBytes(p.handle));
    sources.push_back({p.device, handle, p.offset, p.bytes, lease->data(static_cast<int>(p.tensor)),
                       manifest.tensors(static_cast<int>(p.tensor)).name()});
  }
  GpuIngest::Feed progress;
  if (feed != nullptr) {
    // The update sends buckets in manifest order: the tensors it needs first come first. A tensor
    // is final once copied and hashed (the daemon's checksum is its checksum).
    progress.in_order = true;
    progress.tensor_done = [&parts, feed](size_t k, uint64_t xxh3) {
      feed->MarkReady(parts[k].tensor, xxh3);
    };
  }
  GpuIngest::Result copied = options_.gpu_ingest->Copy(sources, cancelled, progress);
  if (!copied.status.ok() && options_.gpu_ingest->ContextLost(sources)) {
    // Every later CUDA call of this process would fail (updates too): only a restart recovers.
    spdlog::critical(
        "version {}: a GPU copy of a local push left the daemon's CUDA context lost ({}); exiting "
        "so that the service manager restarts the daemon",
        version, std::string(copied.status.message()));
    std::_Exit(EXIT_FAILURE);
  }
  if (!copied.quiesced) {
    // The GPU never finished a copy into this version: its memory must never be reused, so the
    // lease (which keeps it allocated) is kept forever. The daemon needs a restart to get it back.
    spdlog::error(
        "version {}: a GPU copy of a local push did not finish within the GPU timeout; "
        "its {} of host memory stay reserved until the daemon restarts",
        version, FormatBytes(bytes));
    (void)lease.release();
    return copied.status.ok() ? absl::InternalError("a GPU copy did not finish") : copied.status;
  }
  RETURN_IF_ERROR(copied.status);
  for (size_t k = 0; k < parts.size(); ++k) {
    RETURN_IF_ERROR(lease->MarkReceived(static_cast<int>(parts[k].tensor), 0, parts[k].bytes));
    copier.CompleteClaimed(parts[k].tensor, copied.xxh3[k]);
  }
  lease->AddIpcBytes(bytes);
  *ipc_bytes += bytes;
  return absl::OkStatus();
}

absl::Status TrainerService::PullStep(const v1::LocalPushPull& pull, const v1::Manifest& manifest,
                                      const TrainerMemory* memory, const std::string& nonce,
                                      LocalPushCopier& copier, uint64_t version,
                                      const std::string& token,
                                      const std::function<bool()>& cancelled, PushFeed* feed,
                                      int* probes, v1::LocalPushPulled* pulled) {
  if (memory == nullptr) {
    return absl::FailedPreconditionError(
        "this daemon reads none of the trainer's memory (begun.pull_nonce is empty: local_pull "
        "is off, begin did not offer it, or the platform lacks pidfd_open); send those tensors "
        "in windows");
  }
  ASSIGN_OR_RETURN(std::vector<PullPart> parts, PullParts(pull, manifest));
  if (*probes > 0 && parts.empty()) {
    return absl::InvalidArgumentError("a push probes whether the daemon can read it once");
  }
  absl::Status proof = memory->CheckNonce(pull.nonce_address(), nonce);
  if (parts.empty()) {
    // A probe: whether the daemon can read the trainer at all. It never fails the push, and says
    // no more than yes or no (the detail goes to the log: no map of the trainer's memory).
    ++*probes;
    pulled->set_ok(proof.ok());
    if (!proof.ok()) {
      pulled->set_why("the daemon cannot read this process's memory (its log says why)");
      spdlog::info("PushLocal of version {}: pull probe failed: {}", version,
                   std::string(proof.message()));
    }
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(proof);
  std::vector<uint32_t> tensors;
  for (const PullPart& p : parts) tensors.push_back(p.tensor);
  RETURN_IF_ERROR(copier.ClaimWhole(tensors, "pull"));
  ASSIGN_OR_RETURN(std::unique_ptr<VersionStore::WriteLease> lease,
                   store_->OpenWriter(version, token));
  std::vector<uint8_t*> dst;
  dst.reserve(parts.size());
  for (const PullPart& p : parts) dst.push_back(lease->data(static_cast<int>(p.tensor)));
  std::vector<uint64_t> xxh3;
  RETURN_IF_ERROR(PullTensors(*memory, parts, dst, manifest, options_.pull_lanes, kPullPieceBytes,
                              cancelled, &xxh3, [&parts, feed](size_t k, uint64_t x) {
                                if (feed != nullptr) feed->MarkReady(parts[k].tensor, x);
                              }));
  for (size_t k = 0; k < parts.size(); ++k) {
    RETURN_IF_ERROR(lease->MarkReceived(static_cast<int>(parts[k].tensor), 0, parts[k].bytes));
    copier.CompleteClaimed(parts[k].tensor, xxh3[k]);
  }
  pulled->set_ok(true);
  return absl::OkStatus();
}

absl::StatusOr<ScopedFd> TrainerService::ClaimWindow(const std::string& nonce,
                                                     const Principal& caller, HeldFds& held) {
  if (!AttachSocket::ValidNonce(nonce)) {
    return absl::InvalidArgumentError(
        "the window's fd_nonce is not 16 to 128 printable characters");
  }
  auto p = options_.descriptors->Claim(nonce, absl::Now() + kPassedFilesTimeout);
  if (!p.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the window's memfd (fd_nonce): ", p.status().message()));
  }
  if (p->peer.uid != caller.uid) {
    return absl::PermissionDeniedError(absl::StrCat("the window's memfd comes from uid ",
                                                    p->peer.uid, ", not from the caller's uid ",
                                                    caller.uid));
  }
  if (p->fds.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a window's fd_nonce must carry exactly one descriptor (its memfd), not ", p->fds.size()));
  }
  if (!held.Add(1)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the daemon holds ", kMaxHeldPassedFds, " passed descriptors; retry when they are done"));
  }
  return std::move(p->fds[0]);
}

bool TrainerService::HeldFds::Add(int64_t n) {
  if (held_->fetch_add(n) + n > kMaxHeldPassedFds) {
    held_->fetch_sub(n);
    return false;
  }
  count_ += n;
  return true;
}

absl::StatusOr<std::vector<LoadFile>> TrainerService::ClaimPassedFiles(
    const v1::LoadFilesRequest& request, const Principal& caller, HeldFds& held) {
  // Claim every nonce first, so that none is left behind on an error below.
  std::vector<AttachSocket::Presented> presented;
  absl::Status error;
  if (request.fd_nonces_size() == 0) {
    error = absl::InvalidArgumentError(
        "LoadFiles on the Unix socket takes the files' descriptors, not their paths: the daemon "
        "never opens a file for a local caller (LoadFilesRequest.fd_nonces; the ckpt-engine "
        "clients do this)");
  } else if (options_.descriptors == nullptr || !caller.local) {
    error = absl::FailedPreconditionError("no descriptor socket to receive the files from");
  } else if (static_cast<size_t>(request.fd_nonces_size()) >
             (kMaxLoadFiles + kMaxFdsPerMessage - 1) / kMaxFdsPerMessage) {
    error = absl::InvalidArgumentError(
        absl::StrCat("LoadFilesRequest has ", request.fd_nonces_size(), " fd_nonces; at most ",
                     (kMaxLoadFiles + kMaxFdsPerMessage - 1) / kMaxFdsPerMessage));
  }
  const absl::Time deadline = absl::Now() + kPassedFilesTimeout;
  size_t passed = 0;
  for (int i = 0; error.ok() && i < request.fd_nonces_size(); ++i) {
    if (!AttachSocket::ValidNonce(request.fd_nonces(i))) {
      error = absl::InvalidArgumentError(absl::StrCat("LoadFilesRequest.fd_nonces[", i,
                                                      "] is not 16 to 128 printable characters"));
      break;
    }
    auto p = options_.descriptors->Claim(request.fd_nonces(i), deadline);
    if (!p.ok()) {
      error = absl::FailedPreconditionError(absl::StrCat(
          "LoadFiles: the files' descriptors (fd_nonces[", i, "]): ", p.status().message()));
      break;
    }
    if (p->peer.uid != caller.uid) {
      error = absl::PermissionDeniedError(absl::StrCat("LoadFiles: the descriptors of fd_nonces[",
                                                       i, "] come from uid ", p->peer.uid,
                                                       ", not from the caller's uid ", caller.uid));
      break;
    }
    passed += p->fds.size();
    if (passed > static_cast<size_t>(request.paths_size())) {
      error = absl::InvalidArgumentError(absl::StrCat(
          "LoadFiles: ", request.paths_size(), " path(s) but more descriptors passed (", passed,
          " in the first ", i + 1, " nonce(s)); give one per file, in order"));
      break;
    }
    if (!held.Add(static_cast<int64_t>(p->fds.size()))) {
      error = absl::ResourceExhaustedError(
          absl::StrCat("LoadFiles: the daemon holds ", kMaxHeldPassedFds,
                       " passed descriptors of other loads; retry when they end"));
      break;
    }
    presented.push_back(*std::move(p));
  }
  RETURN_IF_ERROR(error);
  if (passed != static_cast<size_t>(request.paths_size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoadFiles: ", request.paths_size(), " path(s) but ", passed,
                     " descriptor(s) passed; give one descriptor per file, in order"));
  }
  std::vector<LoadFile> files;
  for (AttachSocket::Presented& p : presented) {
    for (ScopedFd& fd : p.fds) {
      files.push_back(LoadFile{request.paths(static_cast<int>(files.size())), std::move(fd)});
    }
  }
  return files;
}

}  // namespace ckpt::daemon
