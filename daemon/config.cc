#include "daemon/config.h"

#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/units.h"

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

absl::string_view BackendName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto:
      return "auto";
    case BackendKind::kCuda:
      return "cuda";
    case BackendKind::kHost:
      return "host";
  }
  return "?";
}

const std::vector<ConfigKey>& ConfigKeys() {
  static const std::vector<ConfigKey> kKeys = {
      {"listen_unix", "Unix socket for local clients (ckptctl, workers); created with mode 0600",
       "/run/ckpt-engine/ckpt-engined.sock"},
      {"listen_tcp", "also serve on TCP at HOST:PORT (port 0 picks one); empty: off", ""},
      {"backend", "data-plane backend: auto (cuda when a GPU is visible), cuda or host", "auto"},
      {"host_memory_budget",
       "pinned host memory for checkpoint versions, e.g. 64GiB; auto: half of physical memory",
       "auto"},
      {"log_level", "trace, debug, info, warn, error, critical or off", "info"},
      {"shutdown_grace", "how long in-flight RPCs may finish after SIGTERM before being cancelled",
       "5s"},
      {"max_versions", "committed versions kept at most; older ones are retired", "2"},
      {"staging_timeout", "a staging version idle this long is aborted and its memory returned",
       "5m"},
      {"load_threads", "threads that read safetensors files in LoadFiles (1 to 256)", "8"},
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
  } else if (key == "max_versions" || key == "load_threads") {
    int n;
    int max = key == "max_versions" ? 1000 : 256;
    if (!absl::SimpleAtoi(value, &n) || n < 1 || n > max) {
      return BadValue(key, value, absl::StrCat("expected a whole number from 1 to ", max));
    }
    (key == "max_versions" ? config.max_versions : config.load_threads) = n;
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
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read config file ", path, ": it is a directory"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read config file ", path, ": ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read config file ", path, ": ", std::strerror(errno)));
  }
  toml::table table;
  try {
    // toml++ reports parse errors as exceptions; they stop here, at the module boundary.
    table = toml::parse(text.str(), path);
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
  return absl::OkStatus();
}

Config ResolveConfig(Config config) {
  if (config.host_memory_budget == 0) {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page_size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0) {
      config.host_memory_budget = static_cast<uint64_t>(pages) * page_size / 2;
    }
  }
  return config;
}

std::string DescribeConfig(const Config& config) {
  return absl::StrCat(
      "listen_unix=", config.listen_unix,
      " listen_tcp=", config.listen_tcp.empty() ? "off" : config.listen_tcp,
      " backend=", BackendName(config.backend), " host_memory_budget=",
      config.host_memory_budget == 0 ? "auto" : FormatBytes(config.host_memory_budget),
      " log_level=", config.log_level, " shutdown_grace=", HumanDuration(config.shutdown_grace),
      " max_versions=", config.max_versions,
      " staging_timeout=", HumanDuration(config.staging_timeout),
      " load_threads=", config.load_threads);
}

}  // namespace ckpt::daemon
