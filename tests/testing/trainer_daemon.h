// A real ckpt-engined (host backend) with raw Trainer and Admin stubs, for tests that send the
// daemon exactly the bytes they want (bad inputs, hostile values) and check what comes back.
#ifndef CKPT_TESTS_TESTING_TRAINER_DAEMON_H_
#define CKPT_TESTS_TESTING_TRAINER_DAEMON_H_

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "client/descriptor_socket.h"
#include "grpcpp/channel.h"
#include "proto/admin.grpc.pb.h"
#include "proto/trainer.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace ckpt::testing {

// Started as `ckpt-engined --backend host --host-memory-budget 1MiB --staging-timeout 1s
// --log-level warn EXTRA...` (a flag given in `extra` replaces its default), with `options` (its
// environment). Every call has a deadline of 10 s (LoadFiles 20 s).
struct TrainerDaemon : DaemonProcess {
  explicit TrainerDaemon(std::vector<std::string> extra = {}, const SpawnOptions& options = {});

  // Admin.Status; fails the test if the call fails.
  v1::StatusResponse Status();
  // Nothing left behind: no staging version, no memory in use (Catch CHECKs).
  void RequireClean();

  grpc::Status Begin(const v1::Manifest& m, v1::BeginVersionResponse* out, uint64_t id = 0,
                     const std::string& label = "");
  grpc::Status Push(const std::vector<v1::Chunk>& chunks);
  grpc::Status Commit(const v1::BeginVersionResponse& b, v1::VersionInfo* info);
  grpc::Status Abort(const v1::BeginVersionResponse& b);
  // LoadFiles as the client library makes it on the Unix socket: opens each path here (read-only,
  // non-blocking, any file type, so that tests can pass FIFOs and devices) and passes the
  // descriptors on the descriptor socket; a path that cannot be opened gets no descriptor.
  grpc::Status LoadFiles(const std::vector<std::string>& paths, v1::VersionInfo* info);
  // Passes exactly `fds` (in batches of 64) with `paths`.
  grpc::Status LoadFilesWithFds(const std::vector<std::string>& paths, const std::vector<int>& fds,
                                v1::VersionInfo* info);
  // Paths only, no descriptors, as a raw caller may send them.
  grpc::Status LoadFilesByPath(const std::vector<std::string>& paths, v1::VersionInfo* info);
  grpc::Status Drop(uint64_t version);
  // Drops every version the daemon holds (after pushes killed at random points), CHECKing that
  // each is COMMITTED and, when `transport` is not empty, came that way. Returns how many.
  int DropCommitted(const std::string& transport = "");
  grpc::Status Get(uint64_t version, v1::GetVersionResponse* out);

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Trainer::Stub> trainer;
  std::unique_ptr<v1::Admin::Stub> admin;
};

// A raw Trainer.PushLocal stream: begin, windows whose memfds the test presents itself, ipc
// steps, commit. Deadline 20 s.
struct LocalStream {
  explicit LocalStream(TrainerDaemon& d);

  // Sends begin; the version id, or 0 when the stream ended (then Finish() has the status).
  uint64_t Begin(const v1::Manifest& m) { return Begin(m, {}, nullptr); }
  // Begin offering `ipc_gpus` (and asking for the update when `update` is set); `*begun` (not
  // null) gets the daemon's answer.
  uint64_t Begin(const v1::Manifest& m, const std::vector<std::string>& ipc_gpus,
                 v1::LocalPushBegun* begun);
  bool update = false;
  bool pull = false;  // begin offers the trainer's host tensors to be read from its memory

  // Presents `fds` and sends a window naming them with `parts` (tensor, offset, bytes) and the
  // tensors it ends (`ended`: tensor, xxh3); true when the daemon answered windows_done.
  bool Window(const std::vector<int>& fds,
              std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> parts,
              const std::string& nonce_override = "",
              const std::vector<std::pair<uint32_t, uint64_t>>& ended = {});

  // Sends an ipc step; true when the daemon answered ipc_done.
  bool Ipc(const v1::LocalPushIpc& ipc);
  // Sends a pull step; the daemon's answer, or nullopt when the stream ended.
  std::optional<v1::LocalPushPulled> Pull(const v1::LocalPushPull& pull);

  // Sends commit with `xxh3`; the committed info, or nullopt when the stream ended.
  std::optional<v1::VersionInfo> Commit(const std::vector<uint64_t>& xxh3);

  grpc::Status Finish();

  TrainerDaemon& daemon;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::LocalPushRequest, v1::LocalPushReply>> stream;
  std::vector<client::Presentation> presentations;
};

// A float32 tensor spec for `bytes` (a multiple of 4), with its XXH3.
v1::TensorSpec Spec(const std::string& name, const std::string& bytes);

v1::Chunk MakeChunk(const v1::BeginVersionResponse& b, const std::string& tensor, uint64_t offset,
                    const std::string& data);

// CHECKs that `s` has `code` and a message containing `needle`.
void RequireError(const grpc::Status& s, grpc::StatusCode code, const std::string& needle);

bool Contains(const std::string& haystack, const std::string& needle);

// now + s, for gRPC deadlines.
std::chrono::system_clock::time_point In(std::chrono::seconds s);

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_TRAINER_DAEMON_H_
