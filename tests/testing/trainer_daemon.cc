#include "tests/testing/trainer_daemon.h"

#include <fcntl.h>
#include <xxhash.h>

#include <algorithm>
#include <catch2/catch.hpp>

#include "client/descriptor_socket.h"
#include "common/fd_passing.h"
#include "common/scoped_fd.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace ckpt::testing {

using namespace std::chrono_literals;

namespace {

// The defaults, less the flags that `extra` gives itself (each flag may be given once), then extra.
std::vector<std::string> DaemonArgs(std::vector<std::string> extra) {
  const std::vector<std::pair<std::string, std::string>> defaults = {
      {"--backend", "host"},
      {"--host-memory-budget", "1MiB"},
      {"--staging-timeout", "1s"},
      {"--log-level", "warn"}};
  std::vector<std::string> args;
  for (const auto& [flag, value] : defaults) {
    if (std::find(extra.begin(), extra.end(), flag) != extra.end()) continue;
    args.push_back(flag);
    args.push_back(value);
  }
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

}  // namespace

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::chrono::system_clock::time_point In(std::chrono::seconds s) {
  return std::chrono::system_clock::now() + s;
}

TrainerDaemon::TrainerDaemon(std::vector<std::string> extra, const SpawnOptions& options)
    : DaemonProcess(DaemonArgs(std::move(extra)), options) {
  INFO("daemon stderr: " << proc->Stderr());
  REQUIRE(ready());
  channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
  trainer = v1::Trainer::NewStub(channel);
  admin = v1::Admin::NewStub(channel);
}

v1::StatusResponse TrainerDaemon::Status() {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10s));
  v1::StatusResponse r;
  grpc::Status s = admin->Status(&ctx, v1::StatusRequest(), &r);
  INFO("Status: " << s.error_message() << "; daemon stderr: " << proc->Stderr());
  REQUIRE(s.ok());
  return r;
}

void TrainerDaemon::RequireClean() {
  v1::StatusResponse s = Status();
  CHECK(s.staging_versions() == 0);
  CHECK(s.host_memory_used_bytes() == 0);
}

grpc::Status TrainerDaemon::Begin(const v1::Manifest& m, v1::BeginVersionResponse* out, uint64_t id,
                                  const std::string& label) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10s));
  v1::BeginVersionRequest req;
  *req.mutable_manifest() = m;
  req.set_version(id);
  req.set_label(label);
  return trainer->BeginVersion(&ctx, req, out);
}

grpc::Status TrainerDaemon::Push(const std::vector<v1::Chunk>& chunks) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10s));
  v1::PushChunksResponse r;
  auto w = trainer->PushChunks(&ctx, &r);
  for (const auto& c : chunks) {
    if (!w->Write(c)) break;
  }
  w->WritesDone();
  return w->Finish();
}

grpc::Status TrainerDaemon::Commit(const v1::BeginVersionResponse& b, v1::VersionInfo* info) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10s));
  v1::CommitRequest req;
  req.set_version(b.version());
  req.set_upload_token(b.upload_token());
  return trainer->Commit(&ctx, req, info);
}

grpc::Status TrainerDaemon::Abort(const v1::BeginVersionResponse& b) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10s));
  v1::AbortRequest req;
  req.set_version(b.version());
  req.set_upload_token(b.upload_token());
  v1::AbortResponse r;
  return trainer->Abort(&ctx, req, &r);
}

grpc::Status TrainerDaemon::LoadFiles(const std::vector<std::string>& paths,
                                      v1::VersionInfo* info) {
  std::vector<ScopedFd> open;
  std::vector<int> fds;
  for (const std::string& p : paths) {
    ScopedFd fd(::open(p.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (!fd.valid()) continue;
    fds.push_back(fd.get());
    open.push_back(std::move(fd));
  }
  return LoadFilesWithFds(paths, fds, info);
}

grpc::Status TrainerDaemon::LoadFilesWithFds(const std::vector<std::string>& paths,
                                             const std::vector<int>& fds, v1::VersionInfo* info) {
  v1::LoadFilesRequest req;
  for (const auto& p : paths) req.add_paths(p);
  std::vector<client::Presentation> presented;
  for (size_t first = 0; first < fds.size(); first += kMaxFdsPerMessage) {
    std::vector<int> batch(fds.begin() + first,
                           fds.begin() + std::min(fds.size(), first + kMaxFdsPerMessage));
    auto p = client::PresentOnDescriptorSocket(socket, batch, absl::Now() + absl::Seconds(5));
    REQUIRE(p.ok());
    req.add_fd_nonces(p->nonce);
    presented.push_back(*std::move(p));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(In(20s));
  return trainer->LoadFiles(&ctx, req, info);
}

grpc::Status TrainerDaemon::LoadFilesByPath(const std::vector<std::string>& paths,
                                            v1::VersionInfo* info) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(20s));
  v1::LoadFilesRequest req;
  for (const auto& p : paths) req.add_paths(p);
  return trainer->LoadFiles(&ctx, req, info);
}

grpc::Status TrainerDaemon::Drop(uint64_t version) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10s));
  v1::DropRequest req;
  req.set_version(version);
  v1::DropResponse r;
  return admin->Drop(&ctx, req, &r);
}

grpc::Status TrainerDaemon::Get(uint64_t version, v1::GetVersionResponse* out) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10s));
  v1::GetVersionRequest req;
  req.set_version(version);
  return admin->GetVersion(&ctx, req, out);
}

v1::TensorSpec Spec(const std::string& name, const std::string& bytes) {
  v1::TensorSpec s;
  s.set_name(name);
  s.set_dtype(v1::DTYPE_FLOAT32);
  s.add_shape(bytes.size() / 4);
  s.set_byte_size(bytes.size());
  s.set_xxh3(XXH3_64bits(bytes.data(), bytes.size()));
  return s;
}

v1::Chunk MakeChunk(const v1::BeginVersionResponse& b, const std::string& tensor, uint64_t offset,
                    const std::string& data) {
  v1::Chunk c;
  c.set_version(b.version());
  c.set_upload_token(b.upload_token());
  c.set_tensor(tensor);
  c.set_offset(offset);
  c.set_data(data);
  return c;
}

void RequireError(const grpc::Status& s, grpc::StatusCode code, const std::string& needle) {
  INFO("status " << s.error_code() << ": " << s.error_message());
  CHECK(s.error_code() == code);
  CHECK(Contains(s.error_message(), needle));
}

int TrainerDaemon::DropCommitted(const std::string& transport) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10s));
  v1::ListVersionsResponse list;
  REQUIRE(admin->ListVersions(&ctx, v1::ListVersionsRequest(), &list).ok());
  for (const v1::VersionInfo& v : list.versions()) {
    CHECK(v.state() == v1::VERSION_STATE_COMMITTED);
    if (!transport.empty()) CHECK(v.transport() == transport);
    REQUIRE(Drop(v.version()).ok());
  }
  return list.versions_size();
}

LocalStream::LocalStream(TrainerDaemon& d) : daemon(d) {
  ctx.set_deadline(In(20s));
  stream = d.trainer->PushLocal(&ctx);
}

uint64_t LocalStream::Begin(const v1::Manifest& m, const std::vector<std::string>& ipc_gpus,
                            v1::LocalPushBegun* begun) {
  v1::LocalPushRequest r;
  *r.mutable_begin()->mutable_manifest() = m;
  for (const std::string& g : ipc_gpus) r.mutable_begin()->add_ipc_gpus(g);
  r.mutable_begin()->set_update(update);
  r.mutable_begin()->set_pull(pull);
  v1::LocalPushReply reply;
  if (!stream->Write(r) || !stream->Read(&reply)) return 0;
  if (begun != nullptr) *begun = reply.begun();
  return reply.begun().version();
}

bool LocalStream::Window(const std::vector<int>& fds,
                         std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> parts,
                         const std::string& nonce_override,
                         const std::vector<std::pair<uint32_t, uint64_t>>& ended) {
  v1::LocalPushRequest r;
  if (nonce_override.empty()) {
    auto p = client::PresentOnDescriptorSocket(daemon.socket, fds, absl::Now() + absl::Seconds(5));
    REQUIRE(p.ok());
    r.mutable_window()->set_fd_nonce(p->nonce);
    presentations.push_back(std::move(*p));
  } else {
    r.mutable_window()->set_fd_nonce(nonce_override);
  }
  for (auto [t, offset, bytes] : parts) {
    r.mutable_window()->add_part_tensor(t);
    r.mutable_window()->add_part_offset(offset);
    r.mutable_window()->add_part_bytes(bytes);
  }
  for (auto [t, xxh3] : ended) {
    r.mutable_window()->add_ended_tensor(t);
    r.mutable_window()->add_ended_xxh3(xxh3);
  }
  v1::LocalPushReply reply;
  return stream->Write(r) && stream->Read(&reply) && reply.has_windows_done();
}

bool LocalStream::Ipc(const v1::LocalPushIpc& ipc) {
  v1::LocalPushRequest r;
  *r.mutable_ipc() = ipc;
  v1::LocalPushReply reply;
  return stream->Write(r) && stream->Read(&reply) &&
         reply.step_case() == v1::LocalPushReply::kIpcDone;
}

std::optional<v1::LocalPushPulled> LocalStream::Pull(const v1::LocalPushPull& pull) {
  v1::LocalPushRequest r;
  *r.mutable_pull() = pull;
  v1::LocalPushReply reply;
  if (!stream->Write(r) || !stream->Read(&reply) || !reply.has_pulled()) return std::nullopt;
  return reply.pulled();
}

std::optional<v1::VersionInfo> LocalStream::Commit(const std::vector<uint64_t>& xxh3) {
  v1::LocalPushRequest r;
  r.mutable_commit();
  for (uint64_t h : xxh3) r.mutable_commit()->add_xxh3(h);
  v1::LocalPushReply reply;
  if (!stream->Write(r) || !stream->Read(&reply) || !reply.has_committed()) return std::nullopt;
  return reply.committed();
}

grpc::Status LocalStream::Finish() {
  stream->WritesDone();
  return stream->Finish();
}

}  // namespace ckpt::testing
