#include "daemon/trainer_service.h"

#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/file_loader.h"
#include "daemon/grpc_status.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

std::string ClientOf(const grpc::ServerContext& context) {
  // "ipv4:10.0.0.5:41234" -> "ipv4:10.0.0.5", "ipv6:[::1]:5555" -> "ipv6:[::1]": one client per
  // host, whatever port each of its connections uses. Unix peers are one local client.
  std::string peer = context.peer();
  if (absl::StartsWith(peer, "ipv4:") || absl::StartsWith(peer, "ipv6:")) {
    peer = peer.substr(0, peer.rfind(':'));
  }
  return peer;
}

grpc::Status TrainerService::BeginVersion(grpc::ServerContext* context,
                                          const v1::BeginVersionRequest* request,
                                          v1::BeginVersionResponse* response) {
  auto begun = store_->Begin(request->manifest(), request->version(), request->label(),
                             ClientOf(*context));
  if (!begun.ok()) return ToGrpc(begun.status());
  response->set_version(begun->version);
  response->set_upload_token(begun->upload_token);
  return grpc::Status::OK;
}

grpc::Status TrainerService::PushChunks(grpc::ServerContext* context,
                                        grpc::ServerReader<v1::Chunk>* reader,
                                        v1::PushChunksResponse* response) {
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
  auto info = store_->Commit(request->version(), request->upload_token());
  if (!info.ok()) return ToGrpc(info.status());
  *response = std::move(*info);
  return grpc::Status::OK;
}

grpc::Status TrainerService::Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                                   v1::AbortResponse* response) {
  if (request->upload_token().empty()) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "Abort needs the upload token");
  }
  return ToGrpc(store_->Abort(request->version(), request->upload_token(), "the trainer asked"));
}

grpc::Status TrainerService::LoadFiles(grpc::ServerContext* context,
                                       const v1::LoadFilesRequest* request,
                                       v1::VersionInfo* response) {
  absl::Time deadline =
      std::min(absl::Now() + options_.load_timeout, absl::FromChrono(context->deadline()));
  std::vector<std::string> paths(request->paths().begin(), request->paths().end());
  auto info = LoadSafetensorsFiles(*store_, paths, request->version(), request->label(),
                                   ClientOf(*context), options_.load_threads, deadline);
  if (!info.ok()) return ToGrpc(info.status());
  *response = std::move(*info);
  return grpc::Status::OK;
}

}  // namespace ckpt::daemon
