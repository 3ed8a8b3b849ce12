#include "daemon/server/daemon.h"

#include <cuda_runtime_api.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "common/version.h"
#include "daemon/cluster/cluster_token.h"
#include "daemon/cluster/members.h"
#include "daemon/cluster/peer_tls.h"
#include "daemon/server/backend.h"
#include "daemon/server/grpc_log.h"
#include "daemon/server/systemd_notify.h"
#include "gpu/cuda_status.h"
#include "gpu/scoped_device.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "grpcpp/server_builder.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// Chunks carry at most 16 MiB of data (docs/protocol.md); room for the other fields.
constexpr int kMaxMessageBytes = 32 << 20;
// A connection without any call for this long is closed (gRPC closes it within about twice this).
constexpr absl::Duration kMaxConnectionIdle = absl::Minutes(2);
// Calls open at once on one connection.
constexpr int kMaxStreamsPerConnection = 128;
// Threads the gRPC server may run calls on at once.
constexpr int kMaxServerThreads = 512;

// The NUMA nodes of the GPUs' PCI devices, for placing pinned memory; empty when unknown.
std::vector<int> GpuNumaNodes(const gpu::GpuProbe& probe) {
  std::set<int> nodes;
  for (const gpu::GpuInfo& g : probe.gpus) {
    std::ifstream in("/sys/bus/pci/devices/" + absl::AsciiStrToLower(g.pci_bus_id) + "/numa_node");
    int node = -1;
    if (in >> node && node >= 0) nodes.insert(node);
  }
  return std::vector<int>(nodes.begin(), nodes.end());
}

// bucket_bytes "auto": min(2 GiB, free memory of the fullest GPU / (4 x slots)) on cuda, rounded
// down to a MiB; 64 MiB on host.
absl::StatusOr<uint64_t> AutoBucketBytes(BackendKind backend, const gpu::GpuProbe& probe,
                                         int slots) {
  constexpr uint64_t kMiB = 1 << 20;
  if (backend != BackendKind::kCuda) return 64 * kMiB;
  uint64_t least_free = UINT64_MAX;
  for (const gpu::GpuInfo& g : probe.gpus) {
    ASSIGN_OR_RETURN(gpu::ScopedDevice device, gpu::ScopedDevice::Create(g.index));
    size_t free_bytes = 0, total = 0;
    CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total));
    least_free = std::min<uint64_t>(least_free, free_bytes);
  }
  const uint64_t bytes = std::min<uint64_t>(2048 * kMiB, least_free / (4 * slots)) / kMiB * kMiB;
  if (bytes < kMiB) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "bucket_bytes auto: only ", FormatBytes(least_free), " of GPU memory are free"));
  }
  return bytes;
}

// Warm-up of the version store: pieces of 256 MiB (the stop flag is checked between pieces: about
// 0.2-0.5 s each on a build machine). Testing knob CKPT_TEST_WARMUP_PACE="PIECE/PAUSE" (e.g.
// "2MiB/250ms"): pieces of PIECE with a pause of PAUSE after each, so that tests can watch a daemon
// that is still warming up (docs/development.md).
absl::StatusOr<VersionStore::WarmUpOptions> WarmUpPace() {
  VersionStore::WarmUpOptions options;
  const char* pace = std::getenv("CKPT_TEST_WARMUP_PACE");
  if (pace == nullptr || *pace == '\0') return options;
  const std::string text = pace;
  const size_t slash = text.find('/');
  auto piece = ParseByteSize(text.substr(0, slash));
  auto pause = slash == std::string::npos ? absl::StatusOr<absl::Duration>(absl::ZeroDuration())
                                          : ParseDuration(text.substr(slash + 1));
  if (slash == std::string::npos || !piece.ok() || *piece == 0 || !pause.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment CKPT_TEST_WARMUP_PACE='", text,
                     "': expected PIECE/PAUSE such as 2MiB/250ms (a testing knob; unset it)"));
  }
  options.piece_bytes = *piece;
  options.pause = *pause;
  spdlog::warn(
      "CKPT_TEST_WARMUP_PACE={}: the version store warms up in pieces of {} with {} "
      "pauses (a testing knob)",
      text, FormatBytes(*piece), HumanDuration(*pause));
  return options;
}

// The store's readiness in a few words, for systemd's STATUS= line.
std::string StoreNote(const VersionStore::Usage& u) {
  if (u.ready) return "store ready";
  if (!u.ready_error.empty()) {
    return absl::StrCat("store: only ", FormatBytes(u.ready_bytes), " of ",
                        FormatBytes(u.budget_bytes), " usable (see the log)");
  }
  return absl::StrCat("store getting memory ready: ", FormatBytes(u.ready_bytes), " of ",
                      FormatBytes(u.budget_bytes));
}

// The TCP listener's credentials: TLS from files that are re-read when they change (certificate
// rotation), with client certificates required and verified when tls_client_ca is set.
std::shared_ptr<grpc::ServerCredentials> TcpCredentials(const Config& config) {
  if (config.tls_cert.empty()) return grpc::InsecureServerCredentials();
  constexpr int kRefreshSeconds = 10;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
  if (config.tls_client_ca.empty()) {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        config.tls_key, config.tls_cert, kRefreshSeconds);
  } else {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        config.tls_key, config.tls_cert, config.tls_client_ca, kRefreshSeconds);
  }
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (config.tls_client_ca.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

// The roles of local uids: uid_roles, plus the worker role for allowed_uids.
absl::StatusOr<std::map<uid_t, RoleSet>> LocalUidRoles(const Config& config) {
  ASSIGN_OR_RETURN(auto roles, ParseUidRoles(config.uid_roles));
  for (uint32_t uid : config.allowed_uids) roles[uid] |= kRoleWorker | kRoleRead;
  return roles;
}

// The sockets are 0600 unless another uid has a role: then every uid may connect and each call
// is checked against its uid (SO_PEERCRED).
mode_t SocketMode(const Authorizer& auth) { return auth.OtherUidsHaveRoles() ? 0666 : 0600; }

}  // namespace

absl::Status Daemon::CheckConfig(const Config& config) {
  AuthOptions auth;
  auth.auth_tokens_file = config.auth_tokens_file;
  if (!config.san_roles.empty()) {
    ASSIGN_OR_RETURN(auth.san_roles, ParseSanRoles(config.san_roles));
  }
  ASSIGN_OR_RETURN(auth.uid_roles, LocalUidRoles(config));
  RETURN_IF_ERROR(Authorizer::Create(std::move(auth)).status());  // reads auth_tokens_file
  if (config.cluster_listen.empty()) return absl::OkStatus();
  if (absl::Status s = CheckNodeName(config.node_name); !s.ok()) {
    return Annotate(s, "node_name (auto: the host name; set node_name explicitly)");
  }
  RETURN_IF_ERROR(ParseClusterMembers(config.cluster_members).status());
  if (!config.cluster_token_file.empty()) {
    RETURN_IF_ERROR(ReadClusterToken(config.cluster_token_file).status());
  }
  if (!config.cluster_ca.empty()) {
    RETURN_IF_ERROR(CheckPeerTls(PeerTls{config.tls_cert, config.tls_key, config.cluster_ca},
                                 config.node_name));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const Config& config) {
  // What can be checked without taking anything fails first: a bad token file or certificate
  // is not found only after the memory is reserved.
  RETURN_IF_ERROR(CheckConfig(config));
  std::unique_ptr<Daemon> d(new Daemon());
  d->gpus_ = gpu::ProbeGpus();
  ASSIGN_OR_RETURN(d->backend_, ResolveBackend(config.backend, d->gpus_));

  // Claim the socket before reserving memory: a second daemon on the same path fails fast.
  if (!config.listen_unix.empty()) {
    ASSIGN_OR_RETURN(d->socket_claim_, SocketPathClaim::Claim(config.listen_unix));
  }

  HostArena::Kind kind =
      d->backend_ == BackendKind::kCuda ? HostArena::Kind::kPinned : HostArena::Kind::kShared;
  absl::Time reserve_start = absl::Now();
  ASSIGN_OR_RETURN(VersionStore::WarmUpOptions warm_up, WarmUpPace());
  // Only mapped here (cheap); the pages are made ready in the background once the daemon serves.
  ASSIGN_OR_RETURN(std::unique_ptr<HostArena> arena,
                   HostArena::Create(kind, config.host_memory_budget, GpuNumaNodes(d->gpus_),
                                     config.load_threads, HostArena::Populate::kLater));
  d->arena_note_ = absl::StrCat(
      FormatBytes(arena->size()), " of ", kind == HostArena::Kind::kPinned ? "pinned" : "shared",
      " host memory mapped in ", HumanDuration(absl::Now() - reserve_start),
      "; it is made ready in the background (", FormatBytes(warm_up.piece_bytes),
      " at a time; `ckptctl status` shows the progress)");
  VersionStore::Options store_options;
  store_options.max_versions = config.max_versions;
  store_options.staging_timeout = config.staging_timeout;
  store_options.hash_threads = config.load_threads;
  store_options.max_tensors = config.max_tensors_per_version;
  store_options.max_staging = config.max_staging_versions;
  store_options.max_staging_per_client = config.max_staging_per_client;
  store_options.ready_wait = config.store_ready_wait;
  const std::string state_dir = config.ResolvedStateDir();
  if (!state_dir.empty()) {
    ASSIGN_OR_RETURN(d->ledger_, IdLedger::Open(state_dir));
    store_options.ledger = d->ledger_.get();
  }
  d->store_ = std::make_unique<VersionStore>(std::move(arena), store_options);

  UpdateEngine::Options engine_options;
  engine_options.slots_per_gpu = config.slots_per_gpu;
  engine_options.ack_timeout = config.ack_timeout;
  engine_options.bucket_bytes = config.bucket_bytes;
  engine_options.update_on_attach = config.UpdateOnAttach();
  engine_options.resend_previous_on_failure = config.resend_previous_on_failure;
  engine_options.pull_bytes_per_second = config.pull_bytes_per_second;
  engine_options.pull_on_join = config.pull_on_join;
  engine_options.fp8.include = config.fp8_weights;
  engine_options.fp8.exclude = config.fp8_exclude;
  engine_options.fp8_by_default = config.fp8_by_default;
  if (engine_options.bucket_bytes == 0) {
    ASSIGN_OR_RETURN(engine_options.bucket_bytes,
                     AutoBucketBytes(d->backend_, d->gpus_, config.slots_per_gpu));
  }
  ASSIGN_OR_RETURN(d->engine_, UpdateEngine::Create(d->backend_, d->gpus_.gpus, d->store_.get(),
                                                    engine_options));
  d->slots_note_ = absl::StrCat(config.slots_per_gpu, " x ",
                                FormatBytes(engine_options.bucket_bytes), " staging slots ",
                                d->backend_ == BackendKind::kCuda ? "per GPU" : "in shared memory");
  if (config.auto_update) {
    d->store_->SetCommitListener(
        [engine = d->engine_.get()](uint64_t version) { engine->RequestAutoUpdate(version); });
  }
  AuthOptions auth_options;
  auth_options.auth_tokens_file = config.auth_tokens_file;
  auth_options.client_certificates = !config.tls_client_ca.empty();
  auth_options.insecure_tcp = config.insecure_tcp;
  if (!config.san_roles.empty()) {
    ASSIGN_OR_RETURN(auth_options.san_roles, ParseSanRoles(config.san_roles));
  }
  ASSIGN_OR_RETURN(auth_options.uid_roles, LocalUidRoles(config));
  ASSIGN_OR_RETURN(d->auth_, Authorizer::Create(std::move(auth_options)));
  d->watchdog_ = std::make_unique<StreamWatchdog>();
  if (!config.listen_unix.empty()) {
    const mode_t mode = SocketMode(*d->auth_);
    ASSIGN_OR_RETURN(d->local_, LocalListener::Listen(config.listen_unix, mode));
    d->auth_->SetLocalPeers(
        [local = d->local_.get()](const std::string& peer) { return local->PeerOf(peer); });
    AttachSocket::Policy policy;
    const Authorizer* auth = d->auth_.get();
    policy.may_present = [auth](uid_t uid) {
      return (auth->LocalRoles(uid) & (kRoleWorker | kRoleTrainer)) != 0;
    };
    policy.may_pass_files = [auth](uid_t uid) {
      return (auth->LocalRoles(uid) & kRoleTrainer) != 0;
    };
    policy.trusted = [](uid_t uid) { return uid == 0 || uid == ::getuid(); };
    ASSIGN_OR_RETURN(
        d->attach_socket_,
        AttachSocket::Listen(DescriptorSocketPath(config.listen_unix), mode, std::move(policy)));
    d->consumer_ = std::make_unique<ConsumerService>(d->engine_.get(), d->attach_socket_.get(),
                                                     d->auth_.get(), d->watchdog_.get());
  }

  DaemonFacts facts;
  facts.backend = d->backend_;
  facts.gpus = d->gpus_;
  facts.started = absl::Now();
  d->admin_ = std::make_unique<AdminService>(std::move(facts), d->store_.get(), d->engine_.get(),
                                             d->auth_.get());
  TrainerService::Options trainer_options;
  trainer_options.load_threads = config.load_threads;
  trainer_options.local_copy_threads = config.load_threads;
  trainer_options.load_files_dirs = config.load_files_dirs;
  trainer_options.descriptors = d->attach_socket_.get();
  trainer_options.watchdog = d->watchdog_.get();
  trainer_options.push_idle_timeout = config.staging_timeout;
  trainer_options.engine = d->engine_.get();
  trainer_options.auto_update = config.auto_update;
  trainer_options.local_pull = config.local_pull;
  // As the GPU lanes: one lane reads and hashes at about one core's streaming rate, so the pull
  // takes up to 16 cores of a large host (at least load_threads).
  trainer_options.pull_lanes = std::max(
      config.load_threads, std::min(16, static_cast<int>(std::thread::hardware_concurrency())));
  if (d->backend_ == BackendKind::kCuda && config.gpu_ipc_push) {
    // Local trainers' CUDA tensors are copied straight from their GPU memory (PushLocal's ipc
    // step). Without it they copy them into windows themselves: slower, nothing else lost.
    GpuIngest::Options ingest;
    // Each lane hashes what lands at about one core's rate (~5-9 GB/s from memory): the copy
    // engines' ~55 GB/s per GPU needs about 16 of them.
    ingest.lanes = std::max(config.load_threads,
                            static_cast<int>(std::min(16u, std::thread::hardware_concurrency())));
    auto created = GpuIngest::Create(d->gpus_.gpus, ingest);
    if (created.ok()) {
      d->gpu_ingest_ = *std::move(created);
      trainer_options.gpu_ingest = d->gpu_ingest_.get();
    } else {
      spdlog::warn("local pushes of CUDA tensors will go through windows: {}",
                   std::string(created.status().message()));
    }
  }
  d->trainer_ = std::make_unique<TrainerService>(d->store_.get(), d->auth_.get(), trainer_options);

  // The Unix socket is accepted by LocalListener (which learns each connection's uid) and handed
  // to this server.
  grpc::ServerBuilder builder;
  int tcp_port = -1;
  if (!config.listen_tcp.empty()) {
    builder.AddListeningPort(config.listen_tcp, TcpCredentials(config), &tcp_port);
  }
  builder.RegisterService(d->admin_.get());
  builder.RegisterService(d->trainer_.get());
  if (d->consumer_ != nullptr) builder.RegisterService(d->consumer_.get());
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  // Dead peers and idle connections do not hold resources for ever: the server pings every
  // connection that has a call open (a worker's Attach stream is idle between updates by design:
  // the ping tells a dead worker from a quiet one), and closes connections with no call at all.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10 * 1000);
  // Streams per connection (a trainer's parallel uploads use a connection each).
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxStreamsPerConnection);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(kMaxConnectionIdle)));
  // Every call holds a thread of the sync server: bounded, so a flood of calls is refused
  // (RESOURCE_EXHAUSTED) instead of exhausting the process.
  grpc::ResourceQuota quota("ckpt-engined");
  quota.SetMaxThreads(kMaxServerThreads);
  builder.SetResourceQuota(quota);

  GrpcLogCapture grpc_log;
  d->server_ = builder.BuildAndStart();
  if (d->server_ == nullptr) {
    std::string why = grpc_log.ErrorSummary();
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot listen on ",
        config.listen_tcp.empty() ? std::string("gRPC") : absl::StrCat("tcp ", config.listen_tcp),
        ": ", why.empty() ? "address in use or not available" : why));
  }
  if (d->local_ != nullptr) {
    d->local_->Serve(d->server_.get(),
                     [auth = d->auth_.get()](uid_t uid) { return auth->LocalRoles(uid) != 0; });
    d->listen_addresses_.push_back("unix:" + config.listen_unix);
  }
  if (!config.listen_tcp.empty()) {
    std::string host = config.listen_tcp.substr(0, config.listen_tcp.rfind(':'));
    d->listen_addresses_.push_back(absl::StrCat(host, ":", tcp_port));
  }
  if (!config.metrics_listen.empty()) {
    MetricsSources sources;
    sources.store = d->store_.get();
    sources.engine = d->engine_.get();
    sources.backend = d->backend_;
    sources.gpus = d->gpus_.gpus;
    ASSIGN_OR_RETURN(d->metrics_, MetricsServer::Start(config.metrics_listen, std::move(sources)));
  }
  if (!config.cluster_listen.empty()) {
    ClusterOptions cluster;
    cluster.node_name = config.node_name;
    cluster.listen = config.cluster_listen;
    ASSIGN_OR_RETURN(cluster.members, ParseClusterMembers(config.cluster_members));
    cluster.insecure = config.insecure_peers;
    cluster.timeout = config.cluster_timeout;
    cluster.data_interface = config.cluster_data_interface;
    if (!config.cluster_token_file.empty()) {
      ASSIGN_OR_RETURN(cluster.token, ReadClusterToken(config.cluster_token_file));
    }
    if (!config.cluster_ca.empty()) {
      cluster.tls = PeerTls{config.tls_cert, config.tls_key, config.cluster_ca};
    }
    auto self = [store = d->store_.get(), engine = d->engine_.get(), backend = d->backend_,
                 gpus = d->gpus_.gpus]() {
      v1::HelloResponse r;
      r.set_release(kVersion);
      r.set_backend(std::string(BackendName(backend)));
      if (backend == BackendKind::kCuda) {
        for (const gpu::GpuInfo& g : gpus) r.add_gpu_uuids(g.uuid);
      }
      for (const v1::VersionInfo& v : store->List()) {
        if (v.state() != v1::VERSION_STATE_COMMITTED) continue;
        r.add_versions(v.version());
        v1::HeldVersion* held = r.add_held();
        held->set_version(v.version());
        held->set_part_count(v.part_count());
        *held->mutable_parts() = v.parts();
        held->set_tensor_count(v.tensor_count());
        held->set_total_bytes(v.total_bytes());
      }
      std::sort(r.mutable_versions()->begin(), r.mutable_versions()->end());
      r.set_workers(static_cast<uint32_t>(engine->Workers().size()));
      r.set_updating(engine->updating_version());
      if (auto pull = engine->LastPull(); pull.has_value() && pull->ended_unix_ms() == 0) {
        r.set_pulling(pull->version());
        r.set_pull_received_bytes(pull->received_bytes());
        r.set_pull_total_bytes(pull->total_bytes());
      }
      return r;
    };
    ASSIGN_OR_RETURN(d->cluster_,
                     Cluster::Start(std::move(cluster), std::move(self),
                                    [engine = d->engine_.get()](MemberUpdateStream& s) {
                                      return engine->ServeMemberUpdate(s);
                                    }));
    d->engine_->SetCluster(d->cluster_.get());
    d->cluster_->SetVersionManifestHandler(
        [engine = d->engine_.get()](const v1::VersionManifestRequest& r) {
          return engine->ServeVersionManifest(r);
        });
    d->cluster_->SetAfterRound([engine = d->engine_.get()] {
      engine->RefreshPartCatalog();
      engine->MaybePullOnJoin();
    });
    d->cluster_->SetReadTensorsHandler(
        [engine = d->engine_.get()](const v1::ReadTensorsRequest& r,
                                    const std::function<bool(const v1::TensorChunk&)>& write) {
          return engine->ServeReadTensors(r, write);
        });
    d->admin_->SetCluster(config.node_name, d->cluster_->address(),
                          [c = d->cluster_.get()] { return c->Members(); });
  }
  d->config_ = config;
  d->PublishListeners();
  if (d->InsecureTcp()) {
    spdlog::warn(
        "TCP {} is served WITHOUT authentication (insecure_tcp = true): anyone who can "
        "reach it may push, load files, update and drop versions",
        d->listen_addresses_.back());
  }
  d->reaper_ = std::thread([daemon = d.get()] { daemon->ReapStaleVersions(); });
  if (const absl::Duration interval = WatchdogInterval(); interval > absl::ZeroDuration()) {
    if (config.listen_unix.empty()) {
      spdlog::warn(
          "WatchdogSec is set but listen_unix is off: the watchdog cannot check that the "
          "daemon answers; it checks its loops and locks only");
    }
    spdlog::info("systemd watchdog: proving liveness every {}", HumanDuration(interval / 3));
    d->watchdog_thread_ =
        std::thread([daemon = d.get(), interval] { daemon->WatchdogLoop(interval); });
  }
  // Serving already: make the store's memory ready behind it, and tell systemd how far it got
  // (STATUS=, at most once a second).
  warm_up.on_progress = [serving = absl::StrJoin(d->listen_addresses_, " and "),
                         last = absl::InfinitePast()](const VersionStore::Usage& u) mutable {
    const bool ended = u.ready || !u.ready_error.empty();
    if (!ended && absl::Now() - last < absl::Seconds(1)) return;
    last = absl::Now();
    NotifyStatus(absl::StrCat("serving on ", serving, "; ", StoreNote(u)));
  };
  d->store_->StartWarmUp(std::move(warm_up));
  // Said once serving (a start-up that fails prints only its one line).
  if (d->ledger_ != nullptr) {
    spdlog::info("version ids: kept in {} (automatic ids continue above {})", d->ledger_->path(),
                 d->ledger_->floor());
  } else {
    spdlog::warn(
        "version ids: no state_dir, so automatic ids start again at 1 after a restart "
        "(the same id may then name another checkpoint); set state_dir to keep them");
  }
  return d;
}

void Daemon::ReapStaleVersions() {
  absl::MutexLock lock(&reaper_mu_);
  while (!stopping_) {
    reaper_mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(1));
    if (stopping_) break;
    reaper_mu_.Unlock();
    store_->AbortStale(absl::Now());
    reaper_mu_.Lock();
    ++reaper_beats_;
  }
}

absl::Status Daemon::ProveAlive(uint64_t* last_beats) {
  {
    absl::MutexLock lock(&reaper_mu_);
    if (reaper_beats_ == *last_beats) {
      return absl::DeadlineExceededError(
          "the staging reaper loop has not run since the last check");
    }
    *last_beats = reaper_beats_;
  }
  (void)store_->GetUsage();           // the store's locks
  (void)engine_->updating_version();  // the engine's lock
  if (config_.listen_unix.empty()) return absl::OkStatus();
  // The whole serving path: the local listener, the gRPC server and its threads.
  auto channel =
      grpc::CreateChannel("unix:" + config_.listen_unix, grpc::InsecureChannelCredentials());
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::StatusRequest request;
  v1::StatusResponse response;
  grpc::Status s = stub->Status(&context, request, &response);
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("Admin.Status on ", config_.listen_unix,
                                               " did not answer: ", s.error_message()));
  }
  return absl::OkStatus();
}

void Daemon::WatchdogLoop(absl::Duration interval) {
  const absl::Duration period = std::max(absl::Milliseconds(100), interval / 3);
  uint64_t beats = 0;
  for (;;) {
    {
      absl::MutexLock lock(&reaper_mu_);
      reaper_mu_.AwaitWithTimeout(absl::Condition(&stopping_), period);
      if (stopping_) return;
    }
    absl::Status alive = ProveAlive(&beats);
    if (alive.ok()) {
      NotifyWatchdog();
    } else {
      spdlog::error("watchdog: not telling systemd the daemon is alive: {}",
                    std::string(alive.message()));
    }
  }
}

bool Daemon::InsecureTcp() const {
  return !config_.listen_tcp.empty() && config_.insecure_tcp && config_.tls_client_ca.empty() &&
         config_.auth_tokens_file.empty();
}

void Daemon::PublishListeners() {
  std::vector<v1::ListenerStatus> listeners;
  for (const std::string& address : listen_addresses_) {
    v1::ListenerStatus l;
    l.set_address(address);
    if (address.rfind("unix:", 0) == 0) {
      l.set_auth(absl::StrCat("uid (SO_PEERCRED): ", auth_->LocalAuthText(),
                              "; other uids: none; mode ",
                              SocketMode(*auth_) == 0666 ? "0666" : "0600"));
    } else {
      l.set_auth(auth_->TcpAuthText(!config_.tls_cert.empty()));
    }
    listeners.push_back(std::move(l));
  }
  if (metrics_ != nullptr) {
    v1::ListenerStatus l;
    l.set_address(metrics_->url());
    l.set_auth("none: read-only metrics and probes (metrics_listen)");
    listeners.push_back(std::move(l));
  }
  admin_->SetListeners(std::move(listeners), InsecureTcp());
}

void Daemon::Reload(const Config& fresh) {
  // What SIGHUP changes: the tokens file is re-read, uid_roles and allowed_uids are taken from the
  // fresh configuration. Anything else needs a restart: say so instead of ignoring it silently.
  const std::string before = DescribeConfig(config_);
  Config kept = fresh;
  kept.uid_roles = config_.uid_roles;
  kept.allowed_uids = config_.allowed_uids;
  if (DescribeConfig(kept) != before) {
    spdlog::warn(
        "SIGHUP: the configuration also changed keys that take effect only after a "
        "restart (only uid_roles, allowed_uids and the contents of auth_tokens_file are "
        "re-read)");
  }
  auto uid_roles = LocalUidRoles(fresh);
  if (!uid_roles.ok()) {
    spdlog::error("SIGHUP: keeping the previous credentials: uid_roles: {}",
                  std::string(uid_roles.status().message()));
    return;
  }
  auto summary = auth_->Reload(*std::move(uid_roles));
  if (!summary.ok()) {
    spdlog::error("SIGHUP: keeping the previous credentials: {}",
                  std::string(summary.status().message()));
    return;
  }
  config_.uid_roles = fresh.uid_roles;
  config_.allowed_uids = fresh.allowed_uids;
  if (local_ != nullptr) {
    const mode_t mode = SocketMode(*auth_);
    for (absl::Status s : {local_->SetMode(mode), attach_socket_->SetMode(mode)}) {
      if (!s.ok()) spdlog::error("SIGHUP: {}", std::string(s.message()));
    }
  }
  PublishListeners();
  spdlog::info("SIGHUP: credentials re-read: {}", *summary);
}

Daemon::~Daemon() { Shutdown(absl::ZeroDuration()); }

std::string Daemon::store_note() const { return StoreNote(store_->GetUsage()); }

void Daemon::Shutdown(absl::Duration grace) {
  // Cancel a running update (a cluster update's part here too) and end the workers' streams
  // (Detached) before the servers wait for in-flight calls: those would otherwise last until the
  // grace period ends.
  if (engine_ != nullptr) engine_->Stop("ckpt-engined is shutting down");
  // Then the cluster: the other members hear that this one leaves (within a second).
  if (cluster_ != nullptr) cluster_->Stop(absl::Now() + std::min(grace, absl::Seconds(1)));
  // Warm-up stops between two pieces (a cudaHostRegister already begun runs to its end).
  if (store_ != nullptr) store_->StopWarmUp();
  // No new local connections (the server must not be given any while it shuts down).
  if (local_ != nullptr) local_->Stop();
  if (server_ != nullptr) {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    server_->Wait();
    server_.reset();
  }
  {
    absl::MutexLock lock(&reaper_mu_);
    stopping_ = true;
  }
  if (reaper_.joinable()) reaper_.join();
  if (watchdog_thread_.joinable()) watchdog_thread_.join();
  // Last: its handlers only read the store and the engine (alive until the Daemon goes), and its
  // stop waits for connections in progress (a slow client can hold it up to the forced exit).
  metrics_.reset();
}

}  // namespace ckpt::daemon
