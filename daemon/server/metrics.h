// Metrics and probes over HTTP (config key metrics_listen; off by default).
//
//   GET /metrics  Prometheus text format (version 0.0.4): versions, pushes, updates, workers,
//                 host memory, GPU slots; every value read when scraped (RenderMetrics).
//   GET /healthz  200 "serving" while the daemon serves.
//   GET /readyz   200 "ready" when the version store's memory is ready (cuda: pinned) and the GPUs
//                 the daemon drives are usable; 503 with the reason otherwise.
//
// Read-only and without credentials, like a node exporter: bind it to 127.0.0.1 (the default
// when no host is given) or a management network. The server is Debian's cpp-httplib: a fixed
// thread pool, 5 s read and write timeouts, request bodies refused, a few keep-alive requests per
// connection. It was picked over civetweb for its C++ API and because it needs no callbacks
// through C structs; both are in Debian 12.
//
// Thread-safety: RenderMetrics may be called from any thread; MetricsServer is started and
// stopped by its owner.
#ifndef CKPT_DAEMON_SERVER_METRICS_H_
#define CKPT_DAEMON_SERVER_METRICS_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/server/config.h"
#include "daemon/store/version_store.h"
#include "daemon/update/update_engine.h"
#include "gpu/gpu_info.h"

namespace httplib {
class Server;
}

namespace ckpt::daemon {

struct MetricsSources {
  const VersionStore* store = nullptr;
  const UpdateEngine* engine = nullptr;
  BackendKind backend = BackendKind::kHost;
  std::vector<gpu::GpuInfo> gpus;
};

// The /metrics page.
std::string RenderMetrics(const MetricsSources& sources);

// "" when the daemon is ready (/readyz), else why not.
std::string NotReadyReason(const MetricsSources& sources);

class MetricsServer {
 public:
  // Binds `listen` (ParseMetricsListen; port 0 picks a free one) and serves on a thread.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                              MetricsSources sources);
  ~MetricsServer();  // stops serving and joins
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // "http://127.0.0.1:9100/metrics".
  const std::string& url() const { return url_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::string url_;
  MetricsSources sources_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_SERVER_METRICS_H_
