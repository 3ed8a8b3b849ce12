// The daemon's configuration: one typed struct, filled from defaults, then a TOML file, then flags.
//
// Every key is documented in kConfigKeys (config.cc) and in deploy/ckpt-engined.example.toml; a
// test checks that the two agree. A key present but invalid fails start-up with a message naming
// the key.
#ifndef CKPT_DAEMON_SERVER_CONFIG_H_
#define CKPT_DAEMON_SERVER_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/defaults.h"
#include "daemon/transfer/backend_kind.h"

namespace ckpt::daemon {

// metrics_listen: "9100", ":9100" (127.0.0.1), "HOST:PORT", "[V6]:PORT" -> host and port
// (0..65535). INVALID_ARGUMENT naming the value.
absl::Status ParseMetricsListen(const std::string& value, std::string* host, int* port);

struct Config {
  // Path of the Unix socket that local clients (ckptctl, workers) use. Mode 0600, or 0666 when
  // other uids have roles (uid_roles, allowed_uids); its directory is created if missing.
  std::string listen_unix = kDefaultSocketPath;
  // "HOST:PORT" to also serve on TCP (port 0 picks a free port); empty: off.
  std::string listen_tcp;
  // Data-plane backend. auto: cuda when a GPU is visible, else host.
  BackendKind backend = BackendKind::kAuto;
  // Pinned host memory for checkpoint versions, in bytes. 0 means "auto": half of physical memory.
  uint64_t host_memory_budget = 0;
  // While start-up is still making host_memory_budget ready (in the background), how long a
  // BeginVersion or LoadFiles that needs more than is ready waits for it before UNAVAILABLE.
  absl::Duration store_ready_wait = absl::Seconds(30);
  // trace, debug, info, warn, error, critical, off.
  std::string log_level = "info";
  // How long in-flight RPCs may run on after SIGTERM/SIGINT before they are cancelled.
  absl::Duration shutdown_grace = absl::Seconds(5);
  // Committed versions kept at most (>= 1); the oldest unused ones are retired.
  int max_versions = 2;
  // A STAGING version without activity for this long is aborted and its memory returned.
  absl::Duration staging_timeout = absl::Minutes(5);
  // Threads that read safetensors files in LoadFiles (1..256).
  int load_threads = 8;
  // Tensors one version may have at most (1..2^24).
  uint64_t max_tensors_per_version = uint64_t{1} << 18;
  // STAGING versions at once, in total and per client (1..1024 each).
  int max_staging_versions = 16;
  int max_staging_per_client = 4;
  // Staging slots per GPU (host backend: in shared memory) that updates fill in turn (1..16).
  int slots_per_gpu = 2;
  // Size of one staging slot = the largest bucket of an update. 0 means "auto": on cuda
  // min(2 GiB, free GPU memory / (4 x slots_per_gpu)), on host 64 MiB.
  uint64_t bucket_bytes = 0;
  // A worker that does not ack a bucket (or report a version loaded) this long is failed.
  absl::Duration ack_timeout = absl::Seconds(60);
  // Uids besides the daemon's own that may attach as workers (the worker role on the Unix socket).
  std::vector<uint32_t> allowed_uids;
  // "UID=role role;USER=role": roles of local uids on the Unix socket (SO_PEERCRED). The daemon's
  // own uid and root always have every role. Re-read on SIGHUP.
  std::string uid_roles;
  // Prometheus metrics and /healthz, /readyz over HTTP (daemon/server/metrics.h): "" off, "PORT",
  // ":PORT" (127.0.0.1), "HOST:PORT", "[V6]:PORT".
  std::string metrics_listen;
  // Where the daemon keeps the version ids it used (daemon/store/id_ledger.h). "auto":
  // $STATE_DIRECTORY (systemd's StateDirectory=), else none; "": none.
  std::string state_dir = "auto";
  // The directory in use: "" for none.
  std::string ResolvedStateDir() const;
  // Send every newly committed version to the attached workers.
  bool auto_update = false;
  // cuda backend: copy local trainers' CUDA tensors from their GPU memory (PushLocal's ipc step).
  bool gpu_ipc_push = true;
  // Read local trainers' host tensors out of their memory (PushLocal's pull steps).
  bool local_pull = true;
  // Pulls from other members (Admin.Pull): bytes per second at most; 0: no limit.
  uint64_t pull_bytes_per_second = 0;
  // A member that starts holding no version pulls the newest from the others (docs/cluster.md).
  bool pull_on_join = true;
  // FP8 on the way (docs/conversion.md): patterns of the tensors converted, those left alone, and
  // whether updates convert unless they say otherwise.
  std::vector<std::string> fp8_weights;
  std::vector<std::string> fp8_exclude;
  bool fp8_by_default = false;
  // Send the newest committed version to a worker when it attaches; unset ("auto"): as auto_update.
  std::optional<bool> update_on_attach;
  bool UpdateOnAttach() const { return update_on_attach.value_or(auto_update); }
  // on_update_failure = "previous": after a failed update, resend to each worker left with mixed
  // weights the last version it fully loaded ("keep": leave them, report them in status).
  bool resend_previous_on_failure = false;

  // TLS for the TCP listener: the server's certificate chain and key (PEM files; re-read when they
  // change). tls_client_ca set: clients must present a certificate signed by it (mTLS); its
  // subject alternative names map to roles through san_roles.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // "SAN=role role;SAN=role": roles of client certificates by subject alternative name.
  std::string san_roles;
  // Bearer tokens for TCP callers: one "TOKEN ROLE..." per line; mode 0600 or stricter. Re-read on
  // SIGHUP.
  std::string auth_tokens_file;
  // Serve TCP with no authentication at all (trusted networks only). Without it, a TCP listener
  // with neither tls_client_ca nor auth_tokens_file refuses to start.
  bool insecure_tcp = false;
  // Directories under which LoadFiles may open files for TCP callers (comma-separated absolute
  // paths); empty: LoadFiles over TCP is refused.
  std::vector<std::string> load_files_dirs;

  // The cluster (docs/cluster.md). This daemon's name among the members; "" (auto): the host name.
  std::string node_name;
  // "HOST:PORT" of the Peer API (TCP); empty: this daemon is in no cluster.
  std::string cluster_listen;
  // The other members: "HOST:PORT,..." or "dns:NAME:PORT" (daemon/cluster/members.h), as written.
  std::string cluster_members;
  // A shared secret proving membership when peers use no TLS (daemon/cluster/cluster_token.h).
  std::string cluster_token_file;
  // The CA of the members' certificates: set, peers use TLS (this member's tls_cert/tls_key),
  // and each member's certificate must name its node_name in its subject alternative names.
  std::string cluster_ca;
  // Deadline of each exchange with a peer and of every collective of a cluster update.
  absl::Duration cluster_timeout = absl::Seconds(30);
  // Accept peers that prove nothing (trusted networks only; warned at start-up).
  bool insecure_peers = false;
  // The network interface the collectives (Gloo) listen and connect on; empty: cluster_listen's
  // address.
  std::string cluster_data_interface;
};

// One configuration key: its TOML name, flag name ("--" + name with '_' -> '-'), help and default.
struct ConfigKey {
  const char* name;
  const char* help;
  const char* default_text;
};

// Every key the daemon accepts, in documentation order.
const std::vector<ConfigKey>& ConfigKeys();

// Sets `key` from its text form (as written after a flag). INVALID_ARGUMENT naming the key for a
// bad value or NOT_FOUND for an unknown key; `config` is unchanged on error.
absl::Status SetConfigValue(Config& config, absl::string_view key, absl::string_view value);

// Applies the keys of a TOML file on top of `config`. Errors name the file and the key (unknown
// key, value of the wrong type, invalid value) or say why the file cannot be read or parsed. On
// error `config` may hold some of the file's keys: callers discard it.
absl::Status ApplyConfigFile(Config& config, const std::string& path);

// Checks relations between keys (each key's own value is checked when set).
absl::Status ValidateConfig(const Config& config);

// Resolves "auto" values against this machine: host_memory_budget 0 becomes half of physical
// memory; an empty node_name becomes the host name.
Config ResolveConfig(Config config);

// One line, "key=value ...", for the start-up log.
std::string DescribeConfig(const Config& config);

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_CONFIG_H_
