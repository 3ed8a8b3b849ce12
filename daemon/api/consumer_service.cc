#include "daemon/api/consumer_service.h"

#include <unistd.h>

#include <algorithm>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/fd_passing.h"
#include "daemon/api/grpc_status.h"
#include "daemon/transfer/transfer_backend.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// How long a worker has to connect the descriptor socket and present its nonce.
constexpr absl::Duration kIdentityTimeout = absl::Seconds(5);

// The engine's end of one stream: a queue that the handler thread writes to the stream.
class StreamChannel final : public WorkerChannel {
 public:
  explicit StreamChannel(grpc::ServerContext* context) : context_(context) {}

  bool Send(v1::DaemonMessage message) override {
    absl::MutexLock lock(&mu_);
    if (closing_ || ended_) return false;
    queue_.push_back(std::move(message));
    return true;
  }

  void Close(const std::string& reason) override {
    absl::MutexLock lock(&mu_);
    if (closing_ || ended_) return;
    closing_ = true;
    v1::DaemonMessage m;
    m.mutable_detached()->set_reason(reason);
    queue_.push_back(std::move(m));
    close_reason_ = reason;
  }

  // The reader saw the end of the worker's side.
  void ReaderEnded(std::string why) {
    absl::MutexLock lock(&mu_);
    ended_ = true;
    if (end_reason_.empty()) end_reason_ = std::move(why);
  }

  // Waits up to `timeout` for the reader to see the end of the worker's side.
  bool WaitReaderEnded(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&ended_), timeout);
  }

  // Writes queued messages until the stream ends or, after Close, the queue is drained. Returns
  // why the stream ended.
  std::string WriteLoop(grpc::ServerReaderWriter<v1::DaemonMessage, v1::WorkerMessage>* stream) {
    for (;;) {
      v1::DaemonMessage next;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ended_ || !queue_.empty(); };
        // Wakes up at least every second to notice a cancelled call.
        mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1));
        if (ended_) return end_reason_;
        if (queue_.empty()) {
          if (context_->IsCancelled()) return "the call was cancelled";
          continue;
        }
        next = std::move(queue_.front());
        queue_.pop_front();
      }
      const bool last = next.has_detached();
      if (!stream->Write(next)) return "the worker's stream broke";
      if (last) return absl::StrCat("closed by the daemon: ", close_reason_);
    }
  }

 private:
  grpc::ServerContext* const context_;
  absl::Mutex mu_;
  std::deque<v1::DaemonMessage> queue_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::string close_reason_ ABSL_GUARDED_BY(mu_);
  std::string end_reason_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::Status ConsumerService::Attach(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::DaemonMessage, v1::WorkerMessage>* stream) {
  Principal caller;
  if (auto s = auth_->Check(*context, kRoleWorker, "Attach", &caller); !s.ok()) return s;
  v1::WorkerMessage first;
  {
    StreamWatchdog::Guard watch;
    if (watchdog_ != nullptr) {
      watch = watchdog_->Watch(
          context, kFirstMessageTimeout,
          absl::StrCat("Attach stream of ", caller.name, " before its AttachRequest"));
    }
    if (!stream->Read(&first)) {
      return grpc::Status(
          grpc::StatusCode::CANCELLED,
          watch.cancelled()
              ? absl::StrCat("no AttachRequest within ", absl::FormatDuration(kFirstMessageTimeout))
              : std::string("stream ended before AttachRequest"));
    }
  }
  if (!first.has_attach()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first message of Attach must be an AttachRequest");
  }
  const v1::AttachRequest& request = first.attach();
  if (!AttachSocket::ValidNonce(request.nonce())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "AttachRequest.nonce must be 16 to 128 printable characters, also sent on "
                        "the descriptor socket (use the ckpt-engine client library)");
  }
  auto presented = attach_socket_->Claim(request.nonce(), absl::Now() + kIdentityTimeout);
  if (!presented.ok()) {
    return grpc::Status(
        grpc::StatusCode::PERMISSION_DENIED,
        absl::StrCat("cannot confirm the worker's identity: ", presented.status().message(),
                     " within ", absl::FormatDuration(kIdentityTimeout)));
  }
  const int conn = presented->connection.get();
  auto refuse = [&](grpc::StatusCode code, const std::string& message) {
    (void)SendWithFds(conn, absl::StrCat("refused: ", message), {}, absl::Now() + absl::Seconds(1));
    spdlog::warn("attach of pid {} refused: {}", presented->peer.pid, message);
    return grpc::Status(code, message);
  };
  const uid_t uid = presented->peer.uid;
  if ((auth_->LocalRoles(uid) & kRoleWorker) == 0) {
    return refuse(grpc::StatusCode::PERMISSION_DENIED,
                  absl::StrCat("uid ", uid,
                               " may not attach: it has no worker role (config keys "
                               "uid_roles and allowed_uids)"));
  }
  if (caller.local && caller.uid != uid) {
    return refuse(grpc::StatusCode::PERMISSION_DENIED,
                  absl::StrCat("the descriptor socket's process (uid ", uid,
                               ") is not of the Attach call's uid ", caller.uid));
  }
  if (request.pid() != presented->peer.pid) {
    return refuse(grpc::StatusCode::PERMISSION_DENIED,
                  absl::StrCat("AttachRequest.pid ", request.pid(),
                               " is not the pid of the process on the descriptor socket (",
                               presented->peer.pid, ")"));
  }
  const TransferBackend& transfer = engine_->transfer();
  auto gpu = transfer.SlotSetForGpu(request.gpu_uuid());
  if (!gpu.ok())
    return refuse(ToGrpc(gpu.status()).error_code(), std::string(gpu.status().message()));
  absl::Status sent =
      SendWithFds(conn, "ok", transfer.GrantFds(*gpu), absl::Now() + kIdentityTimeout);
  if (!sent.ok()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("sending the slots: ", sent.message()));
  }
  presented->connection = ScopedFd();

  v1::DaemonMessage grant;
  transfer.DescribeGrant(*gpu, grant.mutable_slots());
  WorkerIdentity identity;
  identity.pid = request.pid();
  identity.uid = uid;
  identity.engine = request.engine();
  identity.gpu_uuid = request.gpu_uuid();
  identity.gpu = *gpu;
  identity.tensor_names.assign(request.tensor_names().begin(), request.tensor_names().end());
  identity.pausable = request.pausable();
  auto channel = std::make_shared<StreamChannel>(context);
  // Registered before the grant is written: a worker that has its grant is attached, so an update
  // asked for right after its attach returns includes it. Nothing reaches the worker before the
  // grant: the engine's messages wait in `channel` until this thread's WriteLoop below.
  const uint64_t id = engine_->AddWorker(std::move(identity), channel);
  if (!stream->Write(grant)) {
    engine_->RemoveWorker(id, "the worker left during attach");
    return grpc::Status(grpc::StatusCode::CANCELLED, "the worker left during attach");
  }

  std::thread reader([&] {
    v1::WorkerMessage message;
    while (stream->Read(&message)) engine_->OnWorkerMessage(id, message);
    channel->ReaderEnded(context->IsCancelled() ? "the call was cancelled"
                                                : "the worker closed its stream");
  });
  const std::string why = channel->WriteLoop(stream);
  // A worker that got Detached half-closes its side; one that does not, or a broken stream, is
  // cancelled, which ends the reader's Read.
  if (!channel->WaitReaderEnded(absl::Seconds(2))) context->TryCancel();
  reader.join();
  engine_->RemoveWorker(id, why);
  return grpc::Status::OK;
}

}  // namespace ckpt::daemon
