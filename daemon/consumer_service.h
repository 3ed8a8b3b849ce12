// The Consumer gRPC service (proto/consumer.proto): inference workers attach here.
//
// One Attach stream per worker for its life. The handler checks the worker's identity through the
// descriptor socket (AttachSocket: SO_PEERCRED uid in {daemon's uid} + allowed_uids, pid equal to
// the one in AttachRequest), its GPU (UpdateEngine::GpuForUuid), shares the slots (host: memfds on
// the descriptor socket; cuda: IPC handles in SlotGrant), registers the worker with the engine and
// then relays: acks from the worker to the engine, the engine's messages to the worker (a queue
// written by this handler's thread, so the engine never blocks on a slow worker).
#ifndef CKPT_DAEMON_CONSUMER_SERVICE_H_
#define CKPT_DAEMON_CONSUMER_SERVICE_H_

#include <sys/types.h>

#include <vector>

#include "daemon/attach_socket.h"
#include "daemon/auth.h"
#include "daemon/update_engine.h"
#include "proto/consumer.grpc.pb.h"

namespace ckpt::daemon {

class ConsumerService final : public v1::Consumer::Service {
 public:
  // `allowed_uids`: uids besides the daemon's own that may attach.
  // Attach needs the worker role (`auth`).
  ConsumerService(UpdateEngine* engine, AttachSocket* attach_socket,
                  std::vector<uid_t> allowed_uids, const Authorizer* auth)
      : engine_(engine),
        attach_socket_(attach_socket),
        allowed_uids_(std::move(allowed_uids)),
        auth_(auth) {}

  grpc::Status Attach(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::DaemonMessage, v1::WorkerMessage>* stream) override;

 private:
  UpdateEngine* const engine_;
  AttachSocket* const attach_socket_;
  const std::vector<uid_t> allowed_uids_;
  const Authorizer* const auth_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CONSUMER_SERVICE_H_
