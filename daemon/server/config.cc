#include "daemon/server/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/scoped_fd.h"
#include "common/units.h"
#include "daemon/api/auth.h"
#include "daemon/cluster/members.h"

namespace ckpt::daemon {
namespace {

absl::Status BadValue(absl::string_view key, absl::string_view value, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("config key '", key, "': invalid value '", value, "': ", why));
}

absl::Status CheckHostPort(absl::string_view key, absl::string_view value) {
  if (value.empty()) return absl::OkStatus();
  size_t colon = value.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return BadValue(key, value, "expected HOST:PORT, e.g. 0.0.0.0:7070 or [::1]:0");
  }
  int port;
  if (!absl::SimpleAtoi(value.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return BadValue(key, value, "port must be a number from 0 to 65535");
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<ConfigKey>& ConfigKeys() {
  static const std::vector<ConfigKey> kKeys = {
      {"listen_unix",
       "Unix socket for local clients (ckptctl, workers); mode 0600, or 0666 when uid_roles or "
       "allowed_uids give other uids roles",
       "/run/ckpt-engine/ckpt-engined.sock"},
      {"listen_tcp", "also serve on TCP at HOST:PORT (port 0 picks one); empty: off", ""},
      {"backend", "data-plane backend: auto (cuda when a GPU is visible), cuda or host", "auto"},
      {"host_memory_budget",
       "pinned host memory for checkpoint versions, e.g. 64GiB; auto: half of physical memory",
       "auto"},
      {"store_ready_wait",
       "while start-up still makes host_memory_budget ready: how long a version that needs more "
       "than is ready waits for it (0s to 10m; then UNAVAILABLE, retry)",
       "30s"},
      {"log_level", "trace, debug, info, warn, error, critical or off", "info"},
      {"shutdown_grace", "how long in-flight RPCs may finish after SIGTERM before being cancelled",
       "5s"},
      {"max_versions", "committed versions kept at most; older ones are retired", "2"},
      {"staging_timeout", "a staging version idle this long is aborted and its memory returned",
       "5m"},
      {"load_threads",
       "threads that read safetensors files in LoadFiles and copy local pushes' windows (1 to 256)",
       "8"},
      {"max_tensors_per_version", "tensors one version may have at most (1 to 16777216)", "262144"},
      {"max_staging_versions",
       "versions being pushed (staging) at once, from all clients together (1 to 1024)", "16"},
      {"max_staging_per_client",
       "versions being pushed (staging) at once by one client: a uid, token or host (1 to 1024)",
       "4"},
      {"slots_per_gpu", "staging slots per GPU that updates fill in turn (1 to 16)", "2"},
      {"bucket_bytes",
       "size of one staging slot (largest bucket of an update; larger tensors go in pieces); auto: "
       "min(2 GiB, free GPU memory / (4 x slots_per_gpu)) on cuda, 64 MiB on host",
       "auto"},
      {"ack_timeout", "a worker that does not ack a bucket this long fails the update", "60s"},
      {"allowed_uids", "uids besides the daemon's own that may attach as workers, e.g. \"0,1000\"",
       ""},
      {"uid_roles",
       "roles of local uids on the Unix socket, \"UID=role role;USER=role\"; re-read on SIGHUP",
       ""},
      {"metrics_listen",
       "HTTP address of /metrics (Prometheus), /healthz and /readyz: PORT, HOST:PORT; read-only, "
       "no credentials; empty: off",
       ""},
      {"state_dir",
       "directory of the small file that keeps version ids unique across restarts; auto: "
       "$STATE_DIRECTORY (systemd StateDirectory=), else none (ids start again at 1)",
       "auto"},
      {"auto_update", "send every newly committed version to the attached workers", "false"},
      {"gpu_ipc_push",
       "cuda backend: copy local trainers' CUDA tensors straight from their GPU memory (CUDA IPC); "
       "false: the trainers copy them into shared-memory windows themselves",
       "true"},
      {"local_pull",
       "read local trainers' host tensors straight out of their memory (process_vm_readv, one "
       "copy); false: the trainers copy them into shared-memory windows",
       "true"},
      {"pull_bytes_per_second",
       "pulls (ckptctl pull: a version copied from other members): the bytes per second a pull "
       "reads from them all together, and this member serves to others' pulls, at most, so that "
       "a node serving traffic is not starved (e.g. 2GiB); 0: no limit",
       "0"},
      {"pull_on_join",
       "a member that joins or restarts holding no version pulls the newest one the others hold "
       "(once they end any update), then updates its workers",
       "true"},
      {"fp8_weights",
       "FP8 on the way: name patterns (shell-style, comma-separated) of the 2-D bfloat16 "
       "tensors an FP8 update delivers as float8_e4m3fn with 128 x 128 block scales "
       "(X_scale_inv); empty: none (docs/conversion.md)",
       ""},
      {"fp8_exclude", "name patterns fp8_weights leaves as they are, comma-separated", ""},
      {"fp8_by_default",
       "every update (auto_update, attach and requests that do not say) converts by fp8_weights",
       "false"},
      {"update_on_attach",
       "send the newest committed version to a worker when it attaches (auto: as auto_update)",
       "auto"},
      {"on_update_failure",
       "keep: leave workers of a failed update as they are; previous: resend the last version "
       "they fully loaded to workers left with mixed weights",
       "keep"},
      {"tls_cert", "TLS certificate chain (PEM) of the TCP listener; re-read when it changes", ""},
      {"tls_key", "private key (PEM) of tls_cert", ""},
      {"tls_client_ca",
       "CA (PEM) that must have signed TCP clients' certificates (mTLS); needs tls_cert", ""},
      {"san_roles",
       "roles of client certificates by subject alternative name, \"SAN=role role;SAN=role\"", ""},
      {"auth_tokens_file",
       "bearer tokens of TCP callers, one \"TOKEN ROLE...\" per line, mode 0600; re-read on SIGHUP",
       ""},
      {"insecure_tcp", "serve TCP without any authentication (trusted networks only)", "false"},
      {"load_files_dirs",
       "directories under which LoadFiles may open files for TCP callers, comma-separated", ""},
      {"node_name",
       "this daemon's name in the cluster (letters, digits, '.', '_', '-'); auto: the host name",
       "auto"},
      {"cluster_listen",
       "HOST:PORT of the Peer API that other members call (TCP); empty: no cluster", ""},
      {"cluster_members",
       "the cluster's members: HOST:PORT,HOST:PORT,... or dns:NAME:PORT (A/AAAA records)", ""},
      {"cluster_token_file",
       "shared secret of the cluster's members when peers use no TLS, one line, mode 0600", ""},
      {"cluster_ca",
       "CA (PEM) that signs the members' certificates: peers use TLS with tls_cert/tls_key, and "
       "each certificate names its member's node_name in its SANs",
       ""},
      {"cluster_timeout",
       "deadline of each exchange with a peer and of every collective of a cluster update", "30s"},
      {"insecure_peers", "accept peers that prove nothing (trusted networks only)", "false"},
      {"cluster_data_interface",
       "network interface the cluster's collectives use (e.g. eth1); empty: cluster_listen's "
       "address",
       ""},
  };
  return kKeys;
}

absl::Status SetConfigValue(Config& config, absl::string_view key, absl::string_view value) {
  if (key == "listen_unix") {
    if (value.empty()) return BadValue(key, value, "must not be empty");
    if (value[0] != '/') return BadValue(key, value, "must be an absolute path");
    // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
    if (value.size() > 107) {
      return BadValue(key, value,
                      absl::StrCat("path is ", value.size(),
                                   " bytes; a Unix socket path may have at most 107"));
    }
    config.listen_unix = std::string(value);
  } else if (key == "listen_tcp") {
    if (auto s = CheckHostPort(key, value); !s.ok()) return s;
    config.listen_tcp = std::string(value);
  } else if (key == "backend") {
    if (value == "auto") {
      config.backend = BackendKind::kAuto;
    } else if (value == "cuda") {
      config.backend = BackendKind::kCuda;
    } else if (value == "host") {
      config.backend = BackendKind::kHost;
    } else {
      return BadValue(key, value, "expected auto, cuda or host");
    }
  } else if (key == "host_memory_budget") {
    if (value == "auto") {
      config.host_memory_budget = 0;
    } else {
      auto bytes = ParseByteSize(value);
      if (!bytes.ok()) return BadValue(key, value, bytes.status().message());
      if (*bytes == 0) return BadValue(key, value, "must be more than 0 (or auto)");
      config.host_memory_budget = *bytes;
    }
  } else if (key == "store_ready_wait") {
    auto d = ParseDuration(value);
    if (!d.ok()) return BadValue(key, value, d.status().message());
    if (*d > absl::Minutes(10)) return BadValue(key, value, "must be at most 10m");
    config.store_ready_wait = *d;
  } else if (key == "log_level") {
    static constexpr const char* kLevels[] = {"trace", "debug",    "info", "warn",
                                              "error", "critical", "off"};
    bool ok = false;
    for (const char* l : kLevels) ok = ok || value == l;
    if (!ok)
      return BadValue(key, value, "expected trace, debug, info, warn, error, critical or off");
    config.log_level = std::string(value);
  } else if (key == "shutdown_grace") {
    auto d = ParseDuration(value);
    if (!d.ok()) return BadValue(key, value, d.status().message());
    config.shutdown_grace = *d;
  } else if (key == "max_versions" || key == "load_threads" || key == "slots_per_gpu") {
    int n;
    int max = key == "max_versions" ? 1000 : key == "load_threads" ? 256 : 16;
    if (!absl::SimpleAtoi(value, &n) || n < 1 || n > max) {
      return BadValue(key, value, absl::StrCat("expected a whole number from 1 to ", max));
    }
    (key == "max_versions"   ? config.max_versions
     : key == "load_threads" ? config.load_threads
                             : config.slots_per_gpu) = n;
  } else if (key == "max_tensors_per_version") {
    uint64_t n;
    if (!absl::SimpleAtoi(value, &n) || n < 1 || n > (uint64_t{1} << 24)) {
      return BadValue(key, value, "expected a whole number from 1 to 16777216");
    }
    config.max_tensors_per_version = n;
  } else if (key == "max_staging_versions" || key == "max_staging_per_client") {
    int n;
    if (!absl::SimpleAtoi(value, &n) || n < 1 || n > 1024) {
      return BadValue(key, value, "expected a whole number from 1 to 1024");
    }
    (key == "max_staging_versions" ? config.max_staging_versions : config.max_staging_per_client) =
        n;
  } else if (key == "pull_bytes_per_second") {
    auto bytes = ParseByteSize(value);
    if (!bytes.ok()) return BadValue(key, value, bytes.status().message());
    if (*bytes != 0 && *bytes < (uint64_t{1} << 20)) {
      return BadValue(key, value, "must be 0 (no limit) or at least 1 MiB per second");
    }
    config.pull_bytes_per_second = *bytes;
  } else if (key == "bucket_bytes") {
    if (value == "auto") {
      config.bucket_bytes = 0;
    } else {
      auto bytes = ParseByteSize(value);
      if (!bytes.ok()) return BadValue(key, value, bytes.status().message());
      if (*bytes < 4096) return BadValue(key, value, "must be at least 4 KiB (or auto)");
      config.bucket_bytes = (*bytes + 255) / 256 * 256;
    }
  } else if (key == "ack_timeout") {
    auto d = ParseDuration(value);
    if (!d.ok()) return BadValue(key, value, d.status().message());
    if (*d < absl::Milliseconds(100)) return BadValue(key, value, "must be at least 100ms");
    config.ack_timeout = *d;
  } else if (key == "allowed_uids") {
    std::vector<uint32_t> uids;
    for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      uint32_t uid;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &uid)) {
        return BadValue(key, value, "expected numeric uids separated by commas, e.g. 0,1000");
      }
      uids.push_back(uid);
    }
    config.allowed_uids = std::move(uids);
  } else if (key == "auto_update" || key == "insecure_tcp" || key == "insecure_peers" ||
             key == "gpu_ipc_push" || key == "local_pull" || key == "pull_on_join" ||
             key == "fp8_by_default") {
    bool& flag = key == "auto_update"      ? config.auto_update
                 : key == "fp8_by_default" ? config.fp8_by_default
                 : key == "insecure_tcp"   ? config.insecure_tcp
                 : key == "gpu_ipc_push"   ? config.gpu_ipc_push
                 : key == "local_pull"     ? config.local_pull
                 : key == "pull_on_join"   ? config.pull_on_join
                                           : config.insecure_peers;
    if (value == "true") {
      flag = true;
    } else if (value == "false") {
      flag = false;
    } else {
      return BadValue(key, value, "expected true or false");
    }
  } else if (key == "metrics_listen") {
    if (!value.empty()) {
      std::string host;
      int port = 0;
      absl::Status s = ParseMetricsListen(std::string(value), &host, &port);
      if (!s.ok()) return BadValue(key, value, "expected PORT, :PORT, HOST:PORT or [V6]:PORT");
    }
    config.metrics_listen = std::string(value);
  } else if (key == "state_dir") {
    if (value != "auto" && !value.empty() && value[0] != '/') {
      return BadValue(key, value, "must be auto, empty or an absolute path");
    }
    config.state_dir = std::string(value);
  } else if (key == "update_on_attach") {
    if (value == "auto") {
      config.update_on_attach.reset();
    } else if (value == "true" || value == "false") {
      config.update_on_attach = value == "true";
    } else {
      return BadValue(key, value, "expected auto, true or false");
    }
  } else if (key == "on_update_failure") {
    if (value != "keep" && value != "previous") {
      return BadValue(key, value, "expected keep or previous");
    }
    config.resend_previous_on_failure = value == "previous";
  } else if (key == "tls_cert" || key == "tls_key" || key == "tls_client_ca" ||
             key == "auth_tokens_file") {
    if (!value.empty() && value[0] != '/') return BadValue(key, value, "must be an absolute path");
    (key == "tls_cert"        ? config.tls_cert
     : key == "tls_key"       ? config.tls_key
     : key == "tls_client_ca" ? config.tls_client_ca
                              : config.auth_tokens_file) = std::string(value);
  } else if (key == "node_name") {
    if (value == "auto" || value.empty()) {
      config.node_name.clear();
    } else {
      if (absl::Status s = CheckNodeName(value); !s.ok()) return BadValue(key, value, s.message());
      config.node_name = std::string(value);
    }
  } else if (key == "cluster_listen") {
    if (!value.empty()) {
      auto a = ParseListenAddress(value);
      if (!a.ok()) return BadValue(key, value, a.status().message());
    }
    config.cluster_listen = std::string(value);
  } else if (key == "cluster_members") {
    auto m = ParseClusterMembers(value);
    if (!m.ok()) return BadValue(key, value, m.status().message());
    config.cluster_members = std::string(value);
  } else if (key == "cluster_token_file" || key == "cluster_ca") {
    if (!value.empty() && value[0] != '/') return BadValue(key, value, "must be an absolute path");
    (key == "cluster_ca" ? config.cluster_ca : config.cluster_token_file) = std::string(value);
  } else if (key == "cluster_data_interface") {
    // A Linux interface name: 1-15 characters, no '/', no white space.
    const bool ok = value.size() <= 15 && std::all_of(value.begin(), value.end(), [](char c) {
                      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                             c == '-' || c == ':' || c == '@';
                    });
    if (!ok) {
      return BadValue(key, value,
                      "must be a network interface name (up to 15 letters, digits, '.', '_', "
                      "'-', ':', '@')");
    }
    config.cluster_data_interface = std::string(value);
  } else if (key == "cluster_timeout") {
    auto d = ParseDuration(value);
    if (!d.ok()) return BadValue(key, value, d.status().message());
    if (*d < absl::Seconds(1) || *d > absl::Minutes(10)) {
      return BadValue(key, value, "must be from 1s to 10m");
    }
    config.cluster_timeout = *d;
  } else if (key == "uid_roles") {
    auto parsed = ParseUidRoles(std::string(value));
    if (!parsed.ok()) return BadValue(key, value, parsed.status().message());
    config.uid_roles = std::string(value);
  } else if (key == "san_roles") {
    auto parsed = ParseSanRoles(std::string(value));
    if (!parsed.ok()) return BadValue(key, value, parsed.status().message());
    config.san_roles = std::string(value);
  } else if (key == "fp8_weights" || key == "fp8_exclude") {
    std::vector<std::string> patterns;
    for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      std::string pattern(absl::StripAsciiWhitespace(part));
      if (pattern.empty() || pattern.size() > 1024) {
        return BadValue(key, value, "expected name patterns (1 to 1024 characters each)");
      }
      patterns.push_back(std::move(pattern));
    }
    if (patterns.size() > 256) return BadValue(key, value, "at most 256 patterns");
    (key == "fp8_weights" ? config.fp8_weights : config.fp8_exclude) = std::move(patterns);
  } else if (key == "load_files_dirs") {
    std::vector<std::string> dirs;
    for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      std::string dir(absl::StripAsciiWhitespace(part));
      if (dir.empty() || dir[0] != '/') {
        return BadValue(key, value, "expected absolute directories separated by commas");
      }
      while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
      dirs.push_back(std::move(dir));
    }
    config.load_files_dirs = std::move(dirs);
  } else if (key == "staging_timeout") {
    auto d = ParseDuration(value);
    if (!d.ok()) return BadValue(key, value, d.status().message());
    if (*d < absl::Seconds(1)) return BadValue(key, value, "must be at least 1s");
    config.staging_timeout = *d;
  } else {
    return absl::NotFoundError(absl::StrCat("unknown config key '", key, "'"));
  }
  return absl::OkStatus();
}

absl::Status ApplyConfigFile(Config& config, const std::string& path) {
  // Opened non-blocking and checked before reading: a FIFO, a device (/dev/zero) or a file
  // growing without end must neither hang nor fill memory (SIGHUP reads it again while serving).
  constexpr off_t kMaxConfigBytes = 1 << 20;
  auto fail = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read config file ", path, ": ", why));
  };
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd.valid()) return fail(std::strerror(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return fail(std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return fail("it is a directory");
  if (!S_ISREG(st.st_mode)) return fail("not a regular file");
  if (st.st_size > kMaxConfigBytes) {
    return fail(absl::StrCat("it has ", st.st_size, " bytes; at most ", kMaxConfigBytes));
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::pread(fd.get(), text.data() + got, text.size() - got, got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(std::strerror(errno));
    if (n == 0) break;  // shrank meanwhile
    got += static_cast<size_t>(n);
  }
  text.resize(got);
  toml::table table;
  try {
    // toml++ reports parse errors as exceptions; they stop here, at the module boundary.
    table = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, ":", where.line, ":",
                                                   where.column, ": ",
                                                   std::string(e.description())));
  }
  for (const auto& [toml_key, node] : table) {
    std::string key(toml_key.str());
    std::string value;
    if (const auto* s = node.as_string()) {
      value = s->get();
    } else if (const auto* i = node.as_integer()) {
      value = absl::StrCat(i->get());
    } else if (const auto* f = node.as_floating_point()) {
      value = absl::StrCat(f->get());
    } else if (const auto* b = node.as_boolean()) {
      value = b->get() ? "true" : "false";
    } else if (const auto* a = node.as_array(); a != nullptr && a->is_homogeneous<int64_t>()) {
      std::vector<std::string> items;
      for (const auto& item : *a) items.push_back(absl::StrCat(item.as_integer()->get()));
      value = absl::StrJoin(items, ",");
    } else {
      std::ostringstream type;
      type << node.type();
      return absl::InvalidArgumentError(absl::StrCat("config file ", path, ": key '", key,
                                                     "': expected a string or number, not ",
                                                     type.str()));
    }
    absl::Status s = SetConfigValue(config, key, value);
    if (!s.ok()) {
      return absl::Status(
          s.code() == absl::StatusCode::kNotFound ? absl::StatusCode::kInvalidArgument : s.code(),
          absl::StrCat("config file ", path, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateConfig(const Config& config) {
  if (config.listen_unix.empty() && config.listen_tcp.empty()) {
    return absl::InvalidArgumentError("config: listen_unix and listen_tcp are both empty");
  }
  if (config.tls_cert.empty() != config.tls_key.empty()) {
    return absl::InvalidArgumentError("config: tls_cert and tls_key go together; set both or none");
  }
  if (!config.tls_client_ca.empty() && config.tls_cert.empty()) {
    return absl::InvalidArgumentError("config: tls_client_ca needs tls_cert and tls_key");
  }
  if (!config.san_roles.empty() && config.tls_client_ca.empty()) {
    return absl::InvalidArgumentError(
        "config: san_roles needs tls_client_ca (without client certificates there are no SANs)");
  }
  const bool authenticated = !config.tls_client_ca.empty() || !config.auth_tokens_file.empty();
  if (!config.listen_tcp.empty() && !authenticated && !config.insecure_tcp) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config: listen_tcp ", config.listen_tcp,
        " would serve anyone: configure tls_client_ca (mTLS) or auth_tokens_file, or set "
        "insecure_tcp = true to serve TCP without authentication (trusted networks only)"));
  }
  if (!config.cluster_data_interface.empty() && config.cluster_listen.empty()) {
    return absl::InvalidArgumentError(
        "config: cluster_data_interface needs cluster_listen (it is the cluster's interface)");
  }
  if (!config.cluster_members.empty() && config.cluster_listen.empty()) {
    return absl::InvalidArgumentError(
        "config: cluster_members needs cluster_listen (the address of this member's Peer API, "
        "which the others call)");
  }
  if (config.cluster_listen.empty()) {
    const char* set = config.insecure_peers                ? "insecure_peers"
                      : !config.cluster_token_file.empty() ? "cluster_token_file"
                      : !config.cluster_ca.empty()         ? "cluster_ca"
                                                           : nullptr;
    if (set != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config: ", set, " is set but cluster_listen is not: this daemon is in no cluster"));
    }
    return absl::OkStatus();
  }
  if (config.insecure_peers && (!config.cluster_token_file.empty() || !config.cluster_ca.empty())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config: insecure_peers and ",
        config.cluster_ca.empty() ? "cluster_token_file" : "cluster_ca",
        " contradict each other: peers either prove who they are or prove nothing; remove one"));
  }
  if (!config.cluster_ca.empty() && config.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "config: cluster_ca needs tls_cert and tls_key (this member's own certificate, which "
        "must name its node_name in its subject alternative names)");
  }
  if (config.cluster_ca.empty() && config.cluster_token_file.empty() && !config.insecure_peers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config: cluster_listen ", config.cluster_listen,
        " would accept any peer: configure cluster_token_file (a shared secret) or cluster_ca "
        "(TLS: members' certificates, with tls_cert and tls_key), or set insecure_peers = true "
        "(trusted networks only)"));
  }
  return absl::OkStatus();
}

Config ResolveConfig(Config config) {
  if (config.node_name.empty()) {
    char host[256] = {};
    if (::gethostname(host, sizeof(host) - 1) == 0) config.node_name = host;
  }
  if (config.host_memory_budget == 0) {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page_size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0) {
      config.host_memory_budget = static_cast<uint64_t>(pages) * page_size / 2;
    }
  }
  return config;
}

absl::Status ParseMetricsListen(const std::string& value, std::string* host, int* port) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_listen \"", value, "\": ", why, " (PORT, :PORT or HOST:PORT)"));
  };
  std::string h = "127.0.0.1";
  std::string p = value;
  if (!value.empty() && value[0] == '[') {
    const size_t close = value.find(']');
    if (close == std::string::npos || close + 1 >= value.size() || value[close + 1] != ':') {
      return bad("an IPv6 address goes in brackets, then :PORT");
    }
    h = value.substr(1, close - 1);
    p = value.substr(close + 2);
  } else if (const size_t colon = value.rfind(':'); colon != std::string::npos) {
    if (colon > 0) h = value.substr(0, colon);
    p = value.substr(colon + 1);
  }
  int n = 0;
  if (p.empty() || !absl::SimpleAtoi(p, &n) || n < 0 || n > 65535) {
    return bad("the port must be 0..65535");
  }
  *host = h;
  *port = n;
  return absl::OkStatus();
}

std::string Config::ResolvedStateDir() const {
  if (state_dir != "auto") return state_dir;
  // systemd: one or more absolute paths separated by ':'; the first is ours.
  const char* env = std::getenv("STATE_DIRECTORY");
  if (env == nullptr || env[0] != '/') return "";
  const std::string dirs(env);
  return dirs.substr(0, dirs.find(':'));
}

std::string DescribeConfig(const Config& config) {
  return absl::StrCat(
      "listen_unix=", config.listen_unix,
      " listen_tcp=", config.listen_tcp.empty() ? "off" : config.listen_tcp,
      " backend=", BackendName(config.backend), " host_memory_budget=",
      config.host_memory_budget == 0 ? "auto" : FormatBytes(config.host_memory_budget),
      " store_ready_wait=", HumanDuration(config.store_ready_wait), " log_level=", config.log_level,
      " shutdown_grace=", HumanDuration(config.shutdown_grace),
      " max_versions=", config.max_versions,
      " staging_timeout=", HumanDuration(config.staging_timeout),
      " load_threads=", config.load_threads,
      " max_tensors_per_version=", config.max_tensors_per_version,
      " max_staging_versions=", config.max_staging_versions,
      " max_staging_per_client=", config.max_staging_per_client,
      " slots_per_gpu=", config.slots_per_gpu,
      " bucket_bytes=", config.bucket_bytes == 0 ? "auto" : FormatBytes(config.bucket_bytes),
      " ack_timeout=", HumanDuration(config.ack_timeout), " allowed_uids=",
      config.allowed_uids.empty() ? "none" : absl::StrJoin(config.allowed_uids, ","),
      " uid_roles=", config.uid_roles.empty() ? "none" : config.uid_roles,
      " metrics_listen=", config.metrics_listen.empty() ? "off" : config.metrics_listen,
      " state_dir=", config.ResolvedStateDir().empty() ? "none" : config.ResolvedStateDir(),
      " auto_update=", config.auto_update ? "true" : "false",
      " gpu_ipc_push=", config.gpu_ipc_push ? "true" : "false",
      " local_pull=", config.local_pull ? "true" : "false",
      " pull_on_join=", config.pull_on_join ? "true" : "false", " pull_bytes_per_second=",
      config.pull_bytes_per_second == 0 ? "unlimited" : FormatBytes(config.pull_bytes_per_second),
      " fp8_weights=", config.fp8_weights.empty() ? "none" : absl::StrJoin(config.fp8_weights, ","),
      " fp8_exclude=", config.fp8_exclude.empty() ? "none" : absl::StrJoin(config.fp8_exclude, ","),
      " fp8_by_default=", config.fp8_by_default ? "true" : "false",
      " update_on_attach=", config.UpdateOnAttach() ? "true" : "false",
      " on_update_failure=", config.resend_previous_on_failure ? "previous" : "keep",
      " tls_cert=", config.tls_cert.empty() ? "none" : config.tls_cert,
      " tls_client_ca=", config.tls_client_ca.empty() ? "none" : config.tls_client_ca,
      " auth_tokens_file=", config.auth_tokens_file.empty() ? "none" : config.auth_tokens_file,
      " insecure_tcp=", config.insecure_tcp ? "true" : "false", " load_files_dirs=",
      config.load_files_dirs.empty() ? "none" : absl::StrJoin(config.load_files_dirs, ","),
      " node_name=", config.node_name.empty() ? "auto" : config.node_name,
      " cluster_listen=", config.cluster_listen.empty() ? "off" : config.cluster_listen,
      " cluster_members=", config.cluster_members.empty() ? "none" : config.cluster_members,
      " cluster_token_file=",
      config.cluster_token_file.empty() ? "none" : config.cluster_token_file,
      " cluster_timeout=", HumanDuration(config.cluster_timeout),
      " cluster_ca=", config.cluster_ca.empty() ? "none" : config.cluster_ca,
      " insecure_peers=", config.insecure_peers ? "true" : "false", " cluster_data_interface=",
      config.cluster_data_interface.empty() ? "none" : config.cluster_data_interface);
}

}  // namespace ckpt::daemon
