#include "daemon/trainer_service.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/file_loader.h"
#include "daemon/grpc_status.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

grpc::Status TrainerService::BeginVersion(grpc::ServerContext* context,
                                          const v1::BeginVersionRequest* request,
                                          v1::BeginVersionResponse* response) {
  std::string who;
  if (auto s = auth_->Check(*context, kRoleTrainer, "BeginVersion", &who); !s.ok()) return s;
  auto begun = store_->Begin(request->manifest(), request->version(), request->label(), who);
  if (!begun.ok()) return ToGrpc(begun.status());
  response->set_version(begun->version);
  response->set_upload_token(begun->upload_token);
  return grpc::Status::OK;
}

grpc::Status TrainerService::PushChunks(grpc::ServerContext* context,
                                        grpc::ServerReader<v1::Chunk>* reader,
                                        v1::PushChunksResponse* response) {
  if (auto s = auth_->Check(*context, kRoleTrainer, "PushChunks"); !s.ok()) return s;
  v1::Chunk chunk;
  // Versions this stream wrote to, with their tokens: aborted if the stream breaks.
  std::set<std::pair<uint64_t, std::string>> touched;
  uint64_t chunks = 0, bytes = 0;
  while (reader->Read(&chunk)) {
    absl::Status s = store_->WriteChunk(chunk.version(), chunk.upload_token(), chunk.tensor(),
                                        chunk.offset(), chunk.data().data(), chunk.data().size());
    if (!s.ok()) return ToGrpc(s);
    touched.emplace(chunk.version(), chunk.upload_token());
    ++chunks;
    bytes += chunk.data().size();
  }
  if (context->IsCancelled()) {
    for (const auto& [version, token] : touched) {
      (void)store_->Abort(version, token, "the trainer's push stream broke");
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, "push stream cancelled; version aborted");
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

grpc::Status TrainerService::LoadFiles(grpc::ServerContext* context,
                                       const v1::LoadFilesRequest* request,
                                       v1::VersionInfo* response) {
  std::string who;
  if (auto s = auth_->Check(*context, kRoleTrainer, "LoadFiles", &who); !s.ok()) return s;
  absl::Time deadline =
      std::min(absl::Now() + options_.load_timeout, absl::FromChrono(context->deadline()));
  std::vector<std::string> paths(request->paths().begin(), request->paths().end());
  // A local caller is the daemon's own uid or root (the socket is 0600): it may name any file. A
  // TCP caller may only name files under load_files_dirs, and learns nothing about other paths.
  std::vector<std::string> dirs;
  if (IsTcpCall(*context)) {
    if (options_.load_files_dirs.empty()) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "LoadFiles over TCP is off: the daemon's load_files_dirs is empty (use "
                          "the Unix socket, or push the tensors)");
    }
    dirs = options_.load_files_dirs;
  }
  auto info = LoadSafetensorsFiles(*store_, paths, request->version(), request->label(), who,
                                   options_.load_threads, deadline, dirs);
  if (!info.ok()) return ToGrpc(info.status());
  *response = std::move(*info);
  return grpc::Status::OK;
}

}  // namespace ckpt::daemon
