// ckpt-engined's top-level object: claims the socket path, probes GPUs, picks the backend and
// serves the gRPC APIs on the Unix socket (and optionally TCP) until Shutdown.
#ifndef CKPT_DAEMON_SERVER_DAEMON_H_
#define CKPT_DAEMON_SERVER_DAEMON_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/api/admin_service.h"
#include "daemon/api/attach_socket.h"
#include "daemon/api/auth.h"
#include "daemon/api/consumer_service.h"
#include "daemon/api/stream_watchdog.h"
#include "daemon/api/trainer_service.h"
#include "daemon/cluster/cluster.h"
#include "daemon/server/config.h"
#include "daemon/server/local_listener.h"
#include "daemon/server/metrics.h"
#include "daemon/server/socket_path.h"
#include "daemon/store/id_ledger.h"
#include "daemon/store/version_store.h"
#include "daemon/update/update_engine.h"
#include "grpcpp/server.h"

namespace ckpt::daemon {

class Daemon {
 public:
  // Starts serving. Errors are start-up failures, each naming what failed (socket path in use,
  // directory not writable, TCP address unavailable, cuda backend without a GPU, ...); nothing is
  // left behind. `config` must be resolved (ResolveConfig). Returns as soon as it serves: the
  // version store's memory is mapped but made ready afterwards, in the background
  // (VersionStore::StartWarmUp; Status shows the progress).
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const Config& config);

  // The checks of Start that take no resource (no socket, memory, GPU or port), which Start makes
  // first: uid_roles and san_roles, auth_tokens_file, and with cluster_listen the node_name,
  // cluster_token_file and, with cluster_ca, this member's certificate (CheckPeerTls). `config`
  // must be resolved and have passed ValidateConfig. `--check-config` runs this and exits.
  static absl::Status CheckConfig(const Config& config);

  // Shuts down with no grace if Shutdown was not called.
  ~Daemon();

  // Addresses actually served, e.g. "unix:/run/ckpt-engine/ckpt-engined.sock", "127.0.0.1:41234".
  const std::vector<std::string>& listen_addresses() const { return listen_addresses_; }
  BackendKind backend() const { return backend_; }
  const gpu::GpuProbe& gpus() const { return gpus_; }
  // "64.0 GiB of pinned host memory mapped in 1ms; it is made ready in the background ...": for
  // the start-up log.
  const std::string& arena_note() const { return arena_note_; }
  // "store getting memory ready: 12.0 GiB of 64.0 GiB", "store ready": for systemd's STATUS=.
  std::string store_note() const;
  // "2 x 1.0 GiB staging slots per GPU": for the start-up log.
  const std::string& slots_note() const { return slots_note_; }

  // SIGHUP: applies what can change without a restart from `fresh` (the configuration read again:
  // uid_roles, allowed_uids) and re-reads the tokens file, then logs what changed; other changed
  // keys are named in a warning. Errors are logged; the previous credentials stay in force.
  // Not thread-safe against itself (the signal thread calls it).
  void Reload(const Config& fresh);

  // Stops accepting RPCs; in-flight RPCs may finish until now + `grace`, then they are cancelled.
  // Returns when the server has stopped. Idempotent. Not thread-safe against itself.
  void Shutdown(absl::Duration grace);

 private:
  Daemon() = default;

  // Aborts idle STAGING versions every second until Shutdown.
  void ReapStaleVersions();
  // systemd WatchdogSec: every interval / 3, proves the daemon alive (the reaper loop ran since
  // the last check, the store's and the engine's locks can be taken, and Admin.Status answers on
  // the Unix socket within 5 s) and only then sends WATCHDOG=1; a hung daemon is restarted.
  void WatchdogLoop(absl::Duration interval);
  absl::Status ProveAlive(uint64_t* last_beats);
  // Status.listeners from the current credentials.
  void PublishListeners();
  // TCP served with no authentication at all.
  bool InsecureTcp() const;

  BackendKind backend_ = BackendKind::kHost;
  gpu::GpuProbe gpus_;
  std::vector<std::string> listen_addresses_;
  Config config_;  // as started, with the keys Reload changed
  std::string arena_note_;
  std::string slots_note_;
  // Members are destroyed bottom-up: the server first, then the services it calls, then the store
  // they use; the socket is removed only after the server has stopped.
  SocketPathClaim socket_claim_;
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<LocalListener> local_;
  std::unique_ptr<StreamWatchdog> watchdog_;
  std::unique_ptr<IdLedger> ledger_;  // outlives the store, which uses it
  // The engine uses it (cluster updates): it outlives the engine. Its Peer server and rounds,
  // which read the store and the engine, are stopped in Shutdown.
  std::unique_ptr<Cluster> cluster_;
  std::unique_ptr<VersionStore> store_;
  std::unique_ptr<UpdateEngine> engine_;
  std::unique_ptr<AttachSocket> attach_socket_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<GpuIngest> gpu_ingest_;  // outlives the trainer service, which uses it
  std::unique_ptr<TrainerService> trainer_;
  std::unique_ptr<ConsumerService> consumer_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsServer> metrics_;  // reads the store and the engine: stopped in Shutdown

  absl::Mutex reaper_mu_;
  bool stopping_ ABSL_GUARDED_BY(reaper_mu_) = false;
  uint64_t reaper_beats_ ABSL_GUARDED_BY(reaper_mu_) = 0;
  std::thread reaper_;
  std::thread watchdog_thread_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_DAEMON_H_
