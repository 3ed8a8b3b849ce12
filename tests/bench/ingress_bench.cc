// Ingress benchmark: how fast a checkpoint gets into the daemon's version store.
//
// Starts the real ckpt-engined (from Bazel runfiles, or $CKPT_BIN_DIR on the GPU machine), then:
//   0. measures the floors of the same tensor list in this process: a multi-threaded memcpy into
//      touched memory (8 threads, the client's default, and every hardware thread), and XXH3-64 on
//      1 and 8 threads (the cost of hashing);
//   1. pushes a synthetic version of --gib GiB (tensors shaped like a dense LLM's layers) with the
//      C++ TrainerClient: through the local path (Trainer.PushLocal: shared-memory windows,
//      docs/local-push.md) and over gRPC with 1 stream and each count in --streams, on the Unix
//      socket and (with --tcp) over TCP loopback; the local figure is also given as a fraction of
//      the memcpy floor;
//   2. writes the same tensors as a safetensors file under --dir, reads it once so it is in the
//      page cache, and loads it with LoadFiles.
// Each run prints GB/s (bytes of the version / wall time from the call to the committed version)
// and its stages: checksums on the client (gRPC), transfer (to the last byte sent or copied),
// commit (the daemon verifying every byte). Each version is dropped before the next run.
//
//   3. pushes --many-tensors bf16 tensors of --many-tensor-kib KiB each (a Kimi-K2-sized tensor
//      count: 139,583) locally and over the largest --streams count, and prints microseconds per
//      tensor (the per-tensor cost of the C++ client and the daemon; 0 skips it).
//
//   4. with --cuda (a GPU, cuda backend): copies the same tensors to GPU 0 (one cudaMalloc each, as
//      PyTorch's caching allocator gives large tensors their own segments) and measures the floor
//      (device-to-host of every tensor into pinned memory, one stream), then pushes them as CUDA
//      tensors: locally through CUDA IPC (the daemon copies from GPU memory), locally from pool
//      memory that refuses IPC handles (cudaMallocAsync: the client copies into its windows), and
//      over gRPC (the client stages them in pinned memory); each as a fraction of the floor.
//
//   ingress_bench [--gib 1] [--streams 1,8] [--chunk-mib 4] [--tcp] [--dir /tmp] [--backend host]
//                 [--many-tensors 140000] [--many-tensor-kib 48] [--repeat 1] [--cuda]
#include <cuda_runtime_api.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "common/xxh3.h"
#include "nlohmann/json.hpp"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/subprocess.h"

namespace {

using ckpt::DType;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Synthetic {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::string> bytes;
  uint64_t total = 0;
};

// Layers of a dense model with hidden size 5120 and MLP 27648 (a 32B-class shape list) in bf16,
// repeated until `target` bytes.
Synthetic MakeTensors(uint64_t target) {
  const int64_t h = 5120, mlp = 27648, kv = 1024;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> layer = {
      {"self_attn.q_proj.weight", {h, h}},     {"self_attn.k_proj.weight", {kv, h}},
      {"self_attn.v_proj.weight", {kv, h}},    {"self_attn.o_proj.weight", {h, h}},
      {"mlp.gate_proj.weight", {mlp, h}},      {"mlp.up_proj.weight", {mlp, h}},
      {"mlp.down_proj.weight", {h, mlp}},      {"input_layernorm.weight", {h}},
      {"post_attention_layernorm.weight", {h}}};
  Synthetic s;
  uint64_t seed = 1;
  bool full = false;
  for (int l = 0; !full; ++l) {
    for (const auto& [name, shape] : layer) {
      uint64_t n = 2;
      for (int64_t d : shape) n *= d;
      // Stop before the tensor that would pass the target (but take at least one).
      if (s.total + n > target && s.total > 0) {
        full = true;
        break;
      }
      s.names.push_back(absl::StrCat("model.layers.", l, ".", name));
      s.shapes.push_back(shape);
      s.bytes.push_back(ckpt::testing::RandomBytes(n, seed++));
      s.total += n;
    }
  }
  return s;
}

std::vector<ckpt::client::TensorView> Views(const Synthetic& s) {
  std::vector<ckpt::client::TensorView> v;
  for (size_t i = 0; i < s.names.size(); ++i) {
    v.push_back({s.names[i], DType::kBfloat16, s.shapes[i], s.bytes[i].data(), s.bytes[i].size()});
  }
  return v;
}

// The tensors of `s` on GPU 0: one allocation each (`pool`: from cudaMallocAsync's pool, whose
// memory refuses CUDA IPC handles). Freed on destruction.
struct OnGpu {
  OnGpu(const Synthetic& s, bool pool) : pool(pool) {
    for (const std::string& b : s.bytes) {
      void* p = nullptr;
      cudaError_t e = pool ? cudaMallocAsync(&p, b.size(), nullptr) : cudaMalloc(&p, b.size());
      if (e == cudaSuccess) e = cudaMemcpy(p, b.data(), b.size(), cudaMemcpyHostToDevice);
      if (e != cudaSuccess) {
        error = cudaGetErrorString(e);
        return;
      }
      ptrs.push_back(p);
    }
  }
  ~OnGpu() {
    for (void* p : ptrs) pool ? (void)cudaFreeAsync(p, nullptr) : (void)cudaFree(p);
    (void)cudaDeviceSynchronize();
  }
  bool pool;
  std::vector<void*> ptrs;
  std::string error;
};

std::vector<ckpt::client::TensorView> GpuViews(const Synthetic& s, const OnGpu& g) {
  std::vector<ckpt::client::TensorView> v;
  for (size_t i = 0; i < s.names.size(); ++i) {
    v.push_back({s.names[i], DType::kBfloat16, s.shapes[i], g.ptrs[i], s.bytes[i].size(), 0});
  }
  return v;
}

// GB/s of copying every tensor device-to-host into pinned memory on one stream: the floor of a
// push of CUDA tensors. Best of 3; 0 on a CUDA error.
double DeviceToHostGbps(const Synthetic& s, const OnGpu& g) {
  void* host = nullptr;
  if (cudaMallocHost(&host, s.total) != cudaSuccess) return 0;
  std::memset(host, 1, s.total);
  cudaStream_t stream = nullptr;
  (void)cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    auto t0 = Clock::now();
    uint64_t at = 0;
    for (size_t i = 0; i < g.ptrs.size(); ++i) {
      (void)cudaMemcpyAsync(static_cast<char*>(host) + at, g.ptrs[i], s.bytes[i].size(),
                            cudaMemcpyDeviceToHost, stream);
      at += s.bytes[i].size();
    }
    if (cudaStreamSynchronize(stream) != cudaSuccess) break;
    best = std::max(best, s.total / 1e9 / Seconds(Clock::now() - t0));
  }
  (void)cudaStreamDestroy(stream);
  (void)cudaFreeHost(host);
  return best;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "ingress_bench: %s\n", what.c_str());
  return 1;
}

// GB/s of copying every tensor into `dst` (touched beforehand) on `threads` threads, each taking
// the next 8 MiB piece: the memcpy floor of a local push. Best of 2.
double MemcpyGbps(const Synthetic& s, std::vector<char>& dst, int threads) {
  struct Piece {
    const char* src;
    size_t bytes;
    size_t at;
  };
  std::vector<Piece> pieces;
  size_t at = 0;
  for (const std::string& b : s.bytes) {
    for (size_t off = 0; off < b.size(); off += 8 << 20) {
      const size_t n = std::min<size_t>(8 << 20, b.size() - off);
      pieces.push_back({b.data() + off, n, at});
      at += n;
    }
  }
  double best = 0;
  for (int r = 0; r < 2; ++r) {
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t k = next++; k < pieces.size(); k = next++) {
        std::memcpy(dst.data() + pieces[k].at, pieces[k].src, pieces[k].bytes);
      }
    };
    auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    best = std::max(best, s.total / 1e9 / Seconds(Clock::now() - t0));
  }
  return best;
}

// GB/s of XXH3-64 over every tensor on `threads` threads (tensors handed out in order).
double HashGbps(const Synthetic& s, int threads) {
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> sink{0};
  auto work = [&] {
    for (size_t k = next++; k < s.bytes.size(); k = next++) {
      sink += XXH3_64bits(s.bytes[k].data(), s.bytes[k].size());
    }
  };
  auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return s.total / 1e9 / Seconds(Clock::now() - t0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ckpt-engine ingress benchmark");
  double gib = 1;
  std::string streams_text = "1,8", dir = "/tmp", backend = "host";
  int chunk_mib = 4;
  bool tcp = false;
  uint64_t many_tensors = 140000, many_tensor_kib = 48;
  int repeat = 1;
  uint64_t window_mib = 0;
  bool cuda = false;
  app.add_option("--gib", gib, "version size in GiB");
  app.add_flag("--cuda", cuda, "also push the tensors from GPU 0 (CUDA IPC, windows, gRPC)");
  app.add_option("--many-tensors", many_tensors, "tensors of the many-tensor push (0: skip it)");
  app.add_option("--many-tensor-kib", many_tensor_kib, "size of each of them in KiB");
  app.add_option("--streams", streams_text, "comma-separated stream counts");
  app.add_option("--chunk-mib", chunk_mib, "chunk size in MiB");
  app.add_flag("--tcp", tcp, "also push over TCP loopback");
  app.add_option("--dir", dir, "where to write the safetensors file");
  app.add_option("--backend", backend, "daemon backend: host, cuda or auto");
  app.add_option("--window-mib", window_mib, "the local path's window (0: the client's default)");
  app.add_option("--repeat", repeat, "runs of each push (the best is the figure to quote)");
  CLI11_PARSE(app, argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  const uint64_t bytes = static_cast<uint64_t>(gib * (1ull << 30));
  std::printf(
      "== ingress_bench: %.2f GiB version, chunks of %d MiB, backend %s, %u hardware threads\n",
      gib, chunk_mib, backend.c_str(), std::thread::hardware_concurrency());
  Synthetic tensors = MakeTensors(bytes);
  std::printf("== %zu tensors, %.3f GB\n", tensors.names.size(), tensors.total / 1e9);
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  double memcpy_floor = 0;
  {
    std::vector<char> dst(tensors.total, 1);  // touched: no page faults in the timed copies
    const double at8 = MemcpyGbps(tensors, dst, std::min(8, hw));
    const double at_hw = MemcpyGbps(tensors, dst, hw);
    memcpy_floor = std::max(at8, at_hw);
    std::printf("floor memcpy threads=%d %.2f GB/s; threads=%d %.2f GB/s\n", std::min(8, hw), at8,
                hw, at_hw);
    std::printf("floor xxh3 threads=1 %.2f GB/s; threads=%d %.2f GB/s\n", HashGbps(tensors, 1),
                std::min(8, hw), HashGbps(tensors, std::min(8, hw)));
  }

  // Room for two versions (the store keeps the newest committed one while the next is pushed).
  const uint64_t many_bytes = many_tensors * (many_tensor_kib << 10);
  std::string budget = absl::StrCat(std::max(2 * tensors.total, many_bytes) + (256 << 20));
  auto start_wait = Clock::now();
  ckpt::testing::DaemonProcess daemon(
      {"--backend", backend, "--listen-tcp", "127.0.0.1:0", "--insecure-tcp", "true",
       "--host-memory-budget", budget, "--load-threads", "16", "--log-level", "warn"},
      {}, std::chrono::seconds(300));
  if (!daemon.ready()) return Fail("daemon did not start: " + daemon.proc->Stderr());
  std::printf("== daemon serving in %.2f s (store of %s bytes)\n",
              Seconds(Clock::now() - start_wait), budget.c_str());
  const std::string& sock = daemon.socket;

  auto unix_ep = ckpt::client::ResolveEndpoint(sock, "");
  auto admin = ckpt::client::DaemonClient::Connect(*unix_ep);
  if (!admin.ok()) return Fail(std::string(admin.status().message()));
  auto status = (*admin)->Status(absl::Seconds(10));
  if (!status.ok()) return Fail(std::string(status.status().message()));
  // The daemon serves before its store's memory is ready: measure pushes into ready memory only.
  for (auto until = Clock::now() + std::chrono::seconds(300);
       status.ok() && !status->store_ready() && Clock::now() < until;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    status = (*admin)->Status(absl::Seconds(10));
  }
  if (!status.ok() || !status->store_ready()) return Fail("the daemon's store did not get ready");
  std::printf("== store ready in %.2f s (warm-up %.2f s)\n", Seconds(Clock::now() - start_wait),
              status->store_warmup_seconds());
  std::printf("== daemon backend %s\n", status->backend().c_str());
  std::vector<std::pair<std::string, ckpt::client::Endpoint>> endpoints = {{"unix", *unix_ep}};
  if (tcp)
    endpoints.push_back({"tcp", *ckpt::client::ResolveEndpoint("", status->listen_addresses(1))});

  std::vector<int> stream_counts;
  for (absl::string_view s : absl::StrSplit(streams_text, ',')) {
    int k;
    if (!absl::SimpleAtoi(s, &k) || k < 1) return Fail("bad --streams");
    stream_counts.push_back(k);
  }
  auto views = Views(tensors);
  std::map<std::string, std::unique_ptr<ckpt::client::TrainerClient>> clients;
  // One push of `views` to `ep`; prints its line and drops the version. False on failure.
  auto push_once = [&](const char* what, const ckpt::client::Endpoint& ep,
                       ckpt::client::PushOptions o, const std::vector<ckpt::client::TensorView>& v,
                       uint64_t bytes, double* gbps) -> bool {
    // One client per endpoint for every push, as a trainer keeps one (the local path reuses its
    // windows from the second push on).
    auto& client = clients[ep.unix_path + ep.target];
    if (client == nullptr) {
      auto c = ckpt::client::TrainerClient::Connect(ep);
      if (!c.ok()) {
        Fail(std::string(c.status().message()));
        return false;
      }
      client = std::move(*c);
    }
    auto t0 = Clock::now();
    Clock::time_point sent = t0, first = t0;
    bool first_seen = false;
    o.progress = [&](uint64_t done, uint64_t total) {
      if (!first_seen) {
        first = Clock::now();  // the first bytes are out: checksums (gRPC) and the begin are done
        first_seen = true;
      }
      if (done == total) sent = Clock::now();
    };
    auto info = client->PushTensors(v, o);
    auto t1 = Clock::now();
    if (!info.ok()) {
      Fail(std::string(info.status().message()));
      return false;
    }
    const double total_s = Seconds(t1 - t0);
    *gbps = bytes / 1e9 / total_s;
    std::printf(
        "push %-18s %7.3f GB in %6.3f s = %6.2f GB/s  (checksums+begin %.3f s, transfer %.3f s, "
        "commit %.3f s; transport %s, %.3f GB from GPU memory by the daemon)\n",
        what, bytes / 1e9, total_s, *gbps, Seconds(first - t0), Seconds(sent - first),
        Seconds(t1 - sent), info->transport().c_str(), info->ipc_bytes() / 1e9);
    if (auto s = (*admin)->Drop(info->version(), absl::Seconds(30)); !s.ok()) {
      Fail(std::string(s.message()));
      return false;
    }
    return true;
  };
  {
    double best = 0;
    for (int r = 0; r < repeat; ++r) {
      ckpt::client::PushOptions o;
      o.transport = ckpt::client::Transport::kLocal;
      if (window_mib > 0) o.window_bytes = window_mib << 20;
      double gbps = 0;
      if (!push_once("local unix", *unix_ep, o, views, tensors.total, &gbps)) return 1;
      best = std::max(best, gbps);
    }
    std::printf("local push: best %.2f GB/s = %.2f of the memcpy floor (%.2f GB/s)\n", best,
                best / memcpy_floor, memcpy_floor);
  }
  for (const auto& [where, ep] : endpoints) {
    for (int k : stream_counts) {
      for (int r = 0; r < repeat; ++r) {
        ckpt::client::PushOptions o;
        o.transport = ckpt::client::Transport::kGrpc;
        o.streams = k;
        o.chunk_bytes = static_cast<size_t>(chunk_mib) << 20;
        double gbps = 0;
        if (!push_once(absl::StrCat("grpc ", where, " streams=", k).c_str(), ep, o, views,
                       tensors.total, &gbps)) {
          return 1;
        }
      }
    }
  }

  // CUDA tensors: the daemon copies them (IPC), the client copies them (pool memory), gRPC.
  if (cuda) {
    double floor = 0;
    for (bool pool : {false, true}) {
      OnGpu on_gpu(tensors, pool);
      if (!on_gpu.error.empty()) return Fail("copying the tensors to GPU 0: " + on_gpu.error);
      if (!pool) {
        floor = DeviceToHostGbps(tensors, on_gpu);
        std::printf("floor cuda device-to-host into pinned memory %.2f GB/s\n", floor);
      }
      const auto gpu_views = GpuViews(tensors, on_gpu);
      std::vector<std::pair<std::string, ckpt::client::PushOptions>> runs;
      ckpt::client::PushOptions local;
      local.transport = ckpt::client::Transport::kLocal;
      if (window_mib > 0) local.window_bytes = window_mib << 20;
      runs.push_back({pool ? "cuda local windows" : "cuda local ipc", local});
      if (!pool) {
        ckpt::client::PushOptions grpc;
        grpc.transport = ckpt::client::Transport::kGrpc;
        grpc.streams = stream_counts.back();
        grpc.chunk_bytes = static_cast<size_t>(chunk_mib) << 20;
        runs.push_back({absl::StrCat("cuda grpc streams=", grpc.streams), grpc});
      }
      for (const auto& [what, o] : runs) {
        double best = 0;
        for (int r = 0; r < repeat; ++r) {
          double gbps = 0;
          if (!push_once(what.c_str(), *unix_ep, o, gpu_views, tensors.total, &gbps)) return 1;
          best = std::max(best, gbps);
        }
        std::printf("%s: best %.2f GB/s = %.2f of the device-to-host floor (%.2f GB/s)\n",
                    what.c_str(), best, floor > 0 ? best / floor : 0.0, floor);
      }
    }
  }

  // Many small tensors: the per-tensor cost (one random buffer; every tensor reads it).
  if (many_tensors > 0 && many_tensor_kib > 0) {
    const uint64_t each = many_tensor_kib << 10;
    const std::string data = ckpt::testing::RandomBytes(each, 7);
    std::vector<ckpt::client::TensorView> small;
    small.reserve(many_tensors);
    for (uint64_t i = 0; i < many_tensors; ++i) {
      small.push_back({absl::StrCat("model.layers.", i / 512, ".mlp.experts.", i % 512, ".w"),
                       DType::kBfloat16,
                       {static_cast<int64_t>(each / 2)},
                       data.data(),
                       each});
    }
    for (ckpt::client::Transport transport :
         {ckpt::client::Transport::kLocal, ckpt::client::Transport::kGrpc}) {
      ckpt::client::PushOptions o;
      o.transport = transport;
      o.streams = stream_counts.back();
      o.chunk_bytes = static_cast<size_t>(chunk_mib) << 20;
      o.timeout = absl::Seconds(600);
      const std::string what = transport == ckpt::client::Transport::kLocal
                                   ? std::string("many local")
                                   : absl::StrCat("many grpc streams=", o.streams);
      auto t0 = Clock::now();
      double gbps = 0;
      if (!push_once(what.c_str(), *unix_ep, o, small, many_bytes, &gbps)) return 1;
      std::printf("push %s: %lu tensors of %lu KiB: %.2f us/tensor\n", what.c_str(),
                  static_cast<unsigned long>(many_tensors),
                  static_cast<unsigned long>(many_tensor_kib),
                  Seconds(Clock::now() - t0) / static_cast<double>(many_tensors) * 1e6);
    }
  }

  // LoadFiles from a page-cached file.
  std::string path = absl::StrCat(dir, "/ingress_bench_", ::getpid(), ".safetensors");
  std::vector<ckpt::testing::TensorToWrite> to_write;
  for (size_t i = 0; i < tensors.names.size(); ++i) {
    to_write.push_back({tensors.names[i], DType::kBfloat16, tensors.shapes[i], tensors.bytes[i]});
  }
  tensors = Synthetic();  // free the in-memory copy before the file is read
  views.clear();
  if (auto s = ckpt::testing::WriteSafetensors(path, to_write); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  to_write.clear();
  {
    // Read once so the file is in the page cache.
    std::ifstream in(path, std::ios::binary);
    std::vector<char> buf(16 << 20);
    while (in.read(buf.data(), buf.size()) || in.gcount() > 0) {
    }
  }
  auto loader = ckpt::client::TrainerClient::Connect(*unix_ep);
  auto t0 = Clock::now();
  auto info = (*loader)->LoadFiles({path}, 0, "bench", absl::Minutes(10));
  auto t1 = Clock::now();
  ::unlink(path.c_str());
  if (!info.ok()) return Fail(std::string(info.status().message()));
  std::printf(
      "loadfiles page-cached %7.3f GB in %6.3f s = %6.2f GB/s (read + checksums + commit)\n",
      info->total_bytes() / 1e9, Seconds(t1 - t0), info->total_bytes() / 1e9 / Seconds(t1 - t0));
  daemon.proc->Signal(SIGTERM);
  daemon.proc->Wait(std::chrono::seconds(60));
  return 0;
}
