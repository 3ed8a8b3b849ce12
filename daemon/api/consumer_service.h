// The Consumer gRPC service (proto/consumer.proto): inference workers attach here.
//
// One Attach stream per worker for its life. The handler checks the worker's identity through the
// descriptor socket (AttachSocket: SO_PEERCRED uid the same as the Attach call's and holding the
// worker role, pid equal to the one in AttachRequest), its GPU (UpdateEngine::GpuForUuid), shares
// the slots (host: memfds on the descriptor socket; cuda: IPC handles in SlotGrant), registers the
// worker with the engine and then relays: acks from the worker to the engine, the engine's messages
// to the worker (a queue written by this handler's thread, so the engine never blocks on a slow
// worker).
#ifndef CKPT_DAEMON_API_CONSUMER_SERVICE_H_
#define CKPT_DAEMON_API_CONSUMER_SERVICE_H_

#include "daemon/api/attach_socket.h"
#include "daemon/api/auth.h"
#include "daemon/api/stream_watchdog.h"
#include "daemon/update/update_engine.h"
#include "proto/consumer.grpc.pb.h"

namespace ckpt::daemon {

class ConsumerService final : public v1::Consumer::Service {
 public:
  // Attach needs the worker role (`auth`: uid_roles; allowed_uids are workers).
  // An Attach stream whose AttachRequest does not come within kFirstMessageTimeout is cancelled
  // (`watchdog`, if not null); after it the stream is idle between updates by design.
  ConsumerService(UpdateEngine* engine, AttachSocket* attach_socket, const Authorizer* auth,
                  StreamWatchdog* watchdog)
      : engine_(engine), attach_socket_(attach_socket), auth_(auth), watchdog_(watchdog) {}

  static constexpr absl::Duration kFirstMessageTimeout = absl::Seconds(5);

  grpc::Status Attach(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::DaemonMessage, v1::WorkerMessage>* stream) override;

 private:
  UpdateEngine* const engine_;
  AttachSocket* const attach_socket_;
  const Authorizer* const auth_;
  StreamWatchdog* const watchdog_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_API_CONSUMER_SERVICE_H_
