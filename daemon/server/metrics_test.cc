#include "daemon/server/metrics.h"

#include <httplib.h>
#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

namespace ckpt::daemon {
namespace {

bool Has(const std::string& page, const std::string& line) {
  return page.find("\n" + line + "\n") != std::string::npos;
}

struct Node {
  Node() {
    auto arena = HostArena::Create(HostArena::Kind::kShared, 1 << 20);
    REQUIRE(arena.ok());
    store = std::make_unique<VersionStore>(std::move(*arena), VersionStore::Options{});
    UpdateEngine::Options o;
    o.bucket_bytes = 64 << 10;
    auto e = UpdateEngine::Create(BackendKind::kHost, {}, store.get(), o);
    REQUIRE(e.ok());
    engine = std::move(*e);
    sources.store = store.get();
    sources.engine = engine.get();
  }
  uint64_t Push(const std::string& bytes) {
    v1::Manifest m;
    v1::TensorSpec* t = m.add_tensors();
    t->set_name("w");
    t->set_dtype(v1::DTYPE_UINT8);
    t->add_shape(static_cast<int64_t>(bytes.size()));
    t->set_byte_size(bytes.size());
    t->set_xxh3(XXH3_64bits(bytes.data(), bytes.size()));
    auto b = store->Begin(m, 0, "");
    REQUIRE(b.ok());
    REQUIRE(
        store->WriteChunk(b->version, b->upload_token, "w", 0, bytes.data(), bytes.size()).ok());
    REQUIRE(store->Commit(b->version, b->upload_token).ok());
    return b->version;
  }
  std::unique_ptr<VersionStore> store;
  std::unique_ptr<UpdateEngine> engine;
  MetricsSources sources;
};

TEST_CASE("the metrics page carries the store's and the engine's values") {
  Node n;
  std::string page = RenderMetrics(n.sources);
  CHECK(Has(page, "ckpt_versions{state=\"committed\"} 0"));
  CHECK(Has(page, "ckpt_latest_committed_version 0"));
  CHECK(Has(page, "ckpt_host_memory_budget_bytes 1048576"));
  CHECK(Has(page, "ckpt_updates_total{outcome=\"succeeded\"} 0"));
  CHECK(Has(page, "ckpt_update_seconds_bucket{le=\"+Inf\"} 0"));
  CHECK(Has(page, "# TYPE ckpt_update_seconds histogram"));
  n.Push(std::string(1000, 'a'));
  const uint64_t v2 = n.Push(std::string(3000, 'b'));
  page = RenderMetrics(n.sources);
  CHECK(Has(page, "ckpt_versions{state=\"committed\"} 2"));
  CHECK(Has(page, "ckpt_version_bytes{state=\"committed\"} 4000"));
  CHECK(Has(page, "ckpt_latest_committed_version " + std::to_string(v2)));
  CHECK(Has(page, "ckpt_pushes_total{path=\"chunks\"} 2"));
  CHECK(Has(page, "ckpt_push_bytes_total{path=\"chunks\"} 4000"));
  CHECK(Has(page, "ckpt_pushes_total{path=\"local\"} 0"));
  // A local push's version (checksums at commit) counts as path "local".
  {
    const std::string bytes(500, 'c');
    v1::Manifest m;
    v1::TensorSpec* t = m.add_tensors();
    t->set_name("w");
    t->set_dtype(v1::DTYPE_UINT8);
    t->add_shape(500);
    t->set_byte_size(500);
    auto b = n.store->Begin(m, 0, "", "test", /*verify_checksums=*/false, absl::InfiniteFuture(),
                            /*may_retire=*/true, "local");
    REQUIRE(b.ok());
    // Written as PushLocal writes it (its upload token writes nothing).
    auto lease = n.store->OpenWriter(b->version, b->upload_token);
    REQUIRE(lease.ok());
    std::memcpy((*lease)->data(0), bytes.data(), 500);
    REQUIRE((*lease)->MarkReceived(0, 0, 500).ok());
    lease->reset();
    const std::vector<uint64_t> sums = {XXH3_64bits(bytes.data(), 500)};
    REQUIRE(n.store->Commit(b->version, b->upload_token, true, &sums).ok());
  }
  page = RenderMetrics(n.sources);
  CHECK(Has(page, "ckpt_pushes_total{path=\"local\"} 1"));
  CHECK(Has(page, "ckpt_push_bytes_total{path=\"local\"} 500"));
  CHECK(Has(page, "ckpt_pushes_total{path=\"chunks\"} 2"));
  CHECK(Has(page, "ckpt_workers_attached 0"));
  // No worker: an update is refused before it starts, so nothing is counted.
  v1::UpdateRequest r;
  CHECK_FALSE(n.engine->Update(r).ok());
  CHECK(Has(RenderMetrics(n.sources), "ckpt_updates_total{outcome=\"failed\"} 0"));
  CHECK(NotReadyReason(n.sources) == "");
}

TEST_CASE("metrics_listen values") {
  std::string host;
  int port = -1;
  REQUIRE(ParseMetricsListen("9100", &host, &port).ok());
  CHECK(host == "127.0.0.1");
  CHECK(port == 9100);
  REQUIRE(ParseMetricsListen(":0", &host, &port).ok());
  CHECK((host == "127.0.0.1" && port == 0));
  REQUIRE(ParseMetricsListen("0.0.0.0:9100", &host, &port).ok());
  CHECK(host == "0.0.0.0");
  REQUIRE(ParseMetricsListen("[::1]:9100", &host, &port).ok());
  CHECK(host == "::1");
  for (const char* bad : {"", "x", "1:2:99999", "[::1]", "[::1]9100", "host:-1", "host:"}) {
    INFO(bad);
    CHECK(ParseMetricsListen(bad, &host, &port).code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("the HTTP server answers /metrics, /healthz and /readyz, and nothing else") {
  Node n;
  n.Push(std::string(10, 'c'));
  auto server = MetricsServer::Start("127.0.0.1:0", n.sources);
  REQUIRE(server.ok());
  const std::string url = (*server)->url();
  const std::string base = url.substr(0, url.size() - std::string("/metrics").size());
  httplib::Client client(base);
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(5, 0);
  auto metrics = client.Get("/metrics");
  REQUIRE(metrics);
  CHECK(metrics->status == 200);
  CHECK(Has(metrics->body, "ckpt_versions{state=\"committed\"} 1"));
  CHECK(metrics->get_header_value("Content-Type").find("version=0.0.4") != std::string::npos);
  auto health = client.Get("/healthz");
  REQUIRE(health);
  CHECK(health->status == 200);
  auto ready = client.Get("/readyz");
  REQUIRE(ready);
  CHECK(ready->status == 200);
  auto other = client.Get("/admin");
  REQUIRE(other);
  CHECK(other->status == 404);
  auto post = client.Post("/metrics", "x", "text/plain");
  REQUIRE(post);
  CHECK(post->status != 200);
  // A second server on the same port is refused with a clear error.
  const std::string port = base.substr(base.rfind(':') + 1);
  auto clash = MetricsServer::Start("127.0.0.1:" + port, n.sources);
  REQUIRE_FALSE(clash.ok());
  CHECK(std::string(clash.status().message()).find("cannot listen") != std::string::npos);
}

}  // namespace
}  // namespace ckpt::daemon
