#include "daemon/server/metrics.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// A Prometheus label value: backslash, double quote and newline escaped.
std::string Label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return absl::StrFormat("%.17g", v);
}

class Page {
 public:
  void Family(const std::string& name, const std::string& type, const std::string& help) {
    absl::StrAppend(&text_, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  }
  void Sample(const std::string& name, const std::string& labels, double value) {
    absl::StrAppend(&text_, name, labels.empty() ? "" : absl::StrCat("{", labels, "}"), " ",
                    Number(value), "\n");
  }
  void One(const std::string& name, const std::string& type, const std::string& help,
           double value) {
    Family(name, type, help);
    Sample(name, "", value);
  }
  std::string Take() { return std::move(text_); }

 private:
  std::string text_;
};

}  // namespace

std::string NotReadyReason(const MetricsSources& s) {
  const VersionStore::Usage u = s.store->GetUsage();
  if (!u.ready_error.empty()) return absl::StrCat("store: ", u.ready_error);
  if (!u.ready) return "store: memory still being made ready (ckptctl status shows the progress)";
  if (s.backend == BackendKind::kCuda && s.gpus.empty()) return "no usable GPU";
  return "";
}

std::string RenderMetrics(const MetricsSources& s) {
  Page p;
  const VersionStore::Usage u = s.store->GetUsage();
  const VersionStore::Counters sc = s.store->GetCounters();
  uint64_t staging_bytes = 0, committed_bytes = 0;
  for (const v1::VersionInfo& v : s.store->List()) {
    (v.state() == v1::VERSION_STATE_COMMITTED ? committed_bytes : staging_bytes) += v.total_bytes();
  }
  p.Family("ckpt_versions", "gauge", "Versions in the store, by state.");
  p.Sample("ckpt_versions", "state=\"staging\"", u.staging);
  p.Sample("ckpt_versions", "state=\"committed\"", u.committed);
  p.Family("ckpt_version_bytes", "gauge", "Tensor bytes of the versions in the store, by state.");
  p.Sample("ckpt_version_bytes", "state=\"staging\"", staging_bytes);
  p.Sample("ckpt_version_bytes", "state=\"committed\"", committed_bytes);
  p.One("ckpt_latest_committed_version", "gauge", "Id of the newest committed version (0: none).",
        u.latest_committed);

  p.Family("ckpt_pushes_total", "counter",
           "Versions committed, by path (chunks: PushChunks; local: PushLocal; files: LoadFiles).");
  p.Sample("ckpt_pushes_total", "path=\"chunks\"", sc.commits_chunks);
  p.Sample("ckpt_pushes_total", "path=\"files\"", sc.commits_files);
  p.Sample("ckpt_pushes_total", "path=\"local\"", sc.commits_local);
  p.Family("ckpt_push_bytes_total", "counter", "Bytes of the committed versions, by path.");
  p.Sample("ckpt_push_bytes_total", "path=\"chunks\"", sc.bytes_chunks);
  p.Sample("ckpt_push_bytes_total", "path=\"files\"", sc.bytes_files);
  p.Sample("ckpt_push_bytes_total", "path=\"local\"", sc.bytes_local);
  p.Family("ckpt_push_seconds_total", "counter",
           "Seconds from BeginVersion to commit of the committed versions, by path.");
  p.Sample("ckpt_push_seconds_total", "path=\"chunks\"", sc.seconds_chunks);
  p.Sample("ckpt_push_seconds_total", "path=\"files\"", sc.seconds_files);
  p.Sample("ckpt_push_seconds_total", "path=\"local\"", sc.seconds_local);
  p.One("ckpt_pushes_aborted_total", "counter",
        "Staging versions aborted (by the trainer, a broken stream or staging_timeout).",
        sc.aborted);

  const UpdateEngine::Counters ec = s.engine->GetCounters();
  p.Family("ckpt_updates_total", "counter", "Updates that ended, by outcome.");
  p.Sample("ckpt_updates_total", "outcome=\"succeeded\"", ec.succeeded);
  p.Sample("ckpt_updates_total", "outcome=\"failed\"", ec.failed);
  p.Family("ckpt_update_seconds", "histogram", "Wall seconds of each update that ended.");
  const std::vector<double>& bounds = UpdateEngine::UpdateSecondsBounds();
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds.size(); ++i) {
    cumulative += ec.seconds_buckets[i];
    p.Sample("ckpt_update_seconds_bucket",
             absl::StrCat("le=\"", i < bounds.size() ? Number(bounds[i]) : "+Inf", "\""),
             cumulative);
  }
  p.Sample("ckpt_update_seconds_sum", "", ec.seconds_sum);
  p.Sample("ckpt_update_seconds_count", "", cumulative);
  p.One("ckpt_update_bytes_total", "counter", "Tensor bytes of the updates that ended.", ec.bytes);
  p.Family("ckpt_update_stage_seconds_total", "counter",
           "Seconds per update stage, summed over buckets (stages overlap: not wall time).");
  p.Sample("ckpt_update_stage_seconds_total", "stage=\"wait_slot\"", ec.wait_slot_seconds);
  p.Sample("ckpt_update_stage_seconds_total", "stage=\"fill\"", ec.fill_seconds);
  p.Sample("ckpt_update_stage_seconds_total", "stage=\"load\"", ec.load_seconds);
  p.Sample("ckpt_update_stage_seconds_total", "stage=\"finish\"", ec.finish_seconds);
  p.One("ckpt_updating_version", "gauge", "Version an update is sending now (0: none).",
        s.engine->updating_version());

  const std::vector<v1::WorkerStatus> workers = s.engine->Workers();
  p.One("ckpt_workers_attached", "gauge", "Workers attached.", workers.size());
  std::map<uint64_t, uint64_t> by_version;
  uint64_t mixed = 0;
  for (const v1::WorkerStatus& w : workers) {
    ++by_version[w.loaded_version()];
    mixed += w.mixed_version() != 0;
  }
  p.Family("ckpt_workers_by_loaded_version", "gauge",
           "Attached workers by the last version they fully loaded (0: none yet).");
  for (const auto& [version, n] : by_version) {
    p.Sample("ckpt_workers_by_loaded_version", absl::StrCat("version=\"", version, "\""), n);
  }
  p.One("ckpt_workers_mixed", "gauge",
        "Attached workers left with mixed weights by a failed update.", mixed);
  p.Family("ckpt_worker_failures_total", "counter", "Workers an update failed for, by reason.");
  for (const char* reason :
       {"ack_timeout", "detached", "load_error", "missing_tensors", "stream_closed", "other"}) {
    auto it = ec.worker_failures.find(reason);
    p.Sample("ckpt_worker_failures_total", absl::StrCat("reason=\"", reason, "\""),
             it == ec.worker_failures.end() ? 0 : it->second);
  }

  p.One("ckpt_host_memory_budget_bytes", "gauge", "host_memory_budget.", u.budget_bytes);
  p.One("ckpt_host_memory_used_bytes", "gauge", "Bytes of the budget held by versions.",
        u.used_bytes);
  p.One("ckpt_host_memory_ready_bytes", "gauge",
        "Bytes of the budget made ready so far (start-up warm-up).", u.ready_bytes);
  p.One("ckpt_store_ready", "gauge", "1 when the store's whole budget is ready.", u.ready ? 1 : 0);
  if (!s.gpus.empty()) {
    const uint64_t slots =
        static_cast<uint64_t>(s.engine->options().slots_per_gpu) * s.engine->options().bucket_bytes;
    p.Family("ckpt_gpu_slot_bytes", "gauge", "Device memory the daemon holds per GPU (slots).");
    for (const gpu::GpuInfo& g : s.gpus) {
      p.Sample("ckpt_gpu_slot_bytes",
               absl::StrCat("gpu=\"", g.index, "\",uuid=\"", Label(g.uuid), "\""), slots);
    }
    p.Family("ckpt_gpu_total_memory_bytes", "gauge", "Total device memory per GPU.");
    for (const gpu::GpuInfo& g : s.gpus) {
      p.Sample("ckpt_gpu_total_memory_bytes",
               absl::StrCat("gpu=\"", g.index, "\",uuid=\"", Label(g.uuid), "\""),
               g.total_memory_bytes);
    }
  }
  return p.Take();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                    MetricsSources sources) {
  std::string host;
  int port = 0;
  if (absl::Status s = ParseMetricsListen(listen, &host, &port); !s.ok()) return s;
  std::unique_ptr<MetricsServer> m(new MetricsServer);
  m->sources_ = std::move(sources);
  m->server_ = std::make_unique<httplib::Server>();
  httplib::Server& svr = *m->server_;
  svr.set_read_timeout(5, 0);
  svr.set_write_timeout(5, 0);
  svr.set_keep_alive_max_count(10);
  svr.set_payload_max_length(0);  // GET only: no request body is read
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second daemon bind
  // the same port silently and take half the scrapes.
  svr.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  const MetricsSources* src = &m->sources_;
  svr.Get("/metrics", [src](const httplib::Request&, httplib::Response& res) {
    res.set_content(RenderMetrics(*src), "text/plain; version=0.0.4; charset=utf-8");
  });
  svr.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("serving\n", "text/plain");
  });
  svr.Get("/readyz", [src](const httplib::Request&, httplib::Response& res) {
    const std::string why = NotReadyReason(*src);
    res.status = why.empty() ? 200 : 503;
    res.set_content(why.empty() ? "ready\n" : absl::StrCat("not ready: ", why, "\n"), "text/plain");
  });
  int bound = port;
  if (port == 0) {
    bound = svr.bind_to_any_port(host);
    if (bound < 0) bound = 0;
  } else if (!svr.bind_to_port(host, port)) {
    bound = 0;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("metrics_listen ", listen, ": cannot listen on ",
                                               host, ":", port, " (in use, or no such address)"));
  }
  const bool v6 = host.find(':') != std::string::npos;
  m->url_ = absl::StrCat("http://", v6 ? "[" : "", host, v6 ? "]" : "", ":", bound, "/metrics");
  m->thread_ = std::thread([raw = m->server_.get()] { raw->listen_after_bind(); });
  // stop() only stops a server that runs: wait (briefly) until it does.
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (!svr.is_running() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(1));
  if (!svr.is_running()) {
    return absl::InternalError(absl::StrCat("metrics on ", m->url_, " did not start within 5 s"));
  }
  spdlog::info("metrics on {} (also /healthz, /readyz; read-only, no credentials)", m->url_);
  return m;
}

MetricsServer::~MetricsServer() {
  if (server_ != nullptr) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace ckpt::daemon
