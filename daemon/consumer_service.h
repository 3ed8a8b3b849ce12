// The Consumer gRPC service (proto/consumer.proto): inference workers attach here.
//
// One Attach stream per worker for its life. The handler checks the worker's identity through the
// descriptor socket (AttachSocket: SO_PEERCRED uid the same as the Attach call's and holding the
// worker role, pid equal to the one in AttachRequest), its GPU (UpdateEngine::GpuForUuid), shares the slots (host: memfds on
// the descriptor socket; cuda: IPC handles in SlotGrant), registers the worker with the engine and
// then relays: acks from the worker to the engine, the engine's messages to the worker (a queue
// written by this handler's thread, so the engine never blocks on a slow worker).
#ifndef CKPT_DAEMON_CONSUMER_SERVICE_H_
#define CKPT_DAEMON_CONSUMER_SERVICE_H_

#include "daemon/attach_socket.h"
#include "daemon/auth.h"
#include "daemon/update_engine.h"
#include "proto/consumer.grpc.pb.h"

namespace ckpt::daemon {

class ConsumerService final : public v1::Consumer::Service {
 public:
  // Attach needs the worker role (`auth`: uid_roles; allowed_uids are workers).
  ConsumerService(UpdateEngine* engine, AttachSocket* attach_socket, const Authorizer* auth)
      : engine_(engine), attach_socket_(attach_socket), auth_(auth) {}

  grpc::Status Attach(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::DaemonMessage, v1::WorkerMessage>* stream) override;

 private:
  UpdateEngine* const engine_;
  AttachSocket* const attach_socket_;
  const Authorizer* const auth_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CONSUMER_SERVICE_H_
