// Update benchmark (issue 4): how fast a committed version gets from the daemon's pinned host
// memory into every GPU's worker.
//
// Starts the real ckpt-engined on the cuda backend (every visible GPU), pushes a synthetic version
// whose tensor list is a 32B-class dense model's (Qwen2.5-32B shapes: hidden 5120, MLP 27648, 8 KV
// heads, vocab 152064, bf16, random bytes), starts one worker_client per GPU that copies every
// tensor into its own preallocated GPU buffer before acking (what an engine's load_weights does),
// and then times Admin.Update from the call to the last VersionLoaded, --repeat times. Prints the
// effective GB/s (version bytes / time), the daemon's per-stage times, and the fraction of the
// floor B / (aggregate pinned host-to-device bandwidth of all GPUs, measured in this run with every
// GPU copying at once). Then does the same for a --small-gib version (latency), and for a version
// of --many-tensors bf16 tensors of --many-tensor-kib KiB (a Kimi-K2-sized tensor count: 139,583),
// printing microseconds per tensor (the per-tensor cost of the plan, the daemon's messages and the
// C++ worker; its own copy of each tensor included).
//
// Last, --rl-steps colocated RL steps: the big version's tensors in GPU 0's memory (a trainer on
// the inference node), pushed locally (the daemon copies them through CUDA IPC) and then updated
// into the workers, and in turn pushed with the update overlapped (push and update: the buckets
// go out while the push arrives); each step's push + update beside the update alone (the best big
// run).
//
//   update_bench [--layers 64] [--repeat 3] [--bucket-mib 0 (auto)] [--slots 2] [--small-gib 1]
//                [--many-tensors 140000] [--many-tensor-kib 48] [--rl-steps 2]
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "gpu/fp8_kernel.h"
#include "gpu/gpu_info.h"
#include "tests/testing/subprocess.h"

namespace {

using ckpt::DType;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

int Fail(const std::string& what) {
  std::fprintf(stderr, "update_bench: %s\n", what.c_str());
  return 1;
}

struct Model {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<uint64_t> bytes;
  uint64_t total = 0;
  uint64_t largest = 0;
  void Add(std::string name, std::vector<int64_t> shape) {
    uint64_t n = 2;  // bf16
    for (int64_t d : shape) n *= d;
    names.push_back(std::move(name));
    shapes.push_back(std::move(shape));
    bytes.push_back(n);
    total += n;
    largest = std::max(largest, n);
  }
};

// Qwen2.5-32B's tensor list (bf16), with `layers` decoder layers; stops adding layers once
// `max_bytes` would be passed (0: no limit). `embeddings`: with the embedding, final norm and
// lm_head (1.56 GB each for the two big ones).
Model Qwen32B(int layers, uint64_t max_bytes, bool embeddings = true) {
  const int64_t h = 5120, mlp = 27648, kv = 1024, vocab = 152064;
  Model m;
  if (embeddings) m.Add("model.embed_tokens.weight", {vocab, h});
  for (int l = 0; l < layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    Model layer;
    layer.Add(p + "self_attn.q_proj.weight", {h, h});
    layer.Add(p + "self_attn.q_proj.bias", {h});
    layer.Add(p + "self_attn.k_proj.weight", {kv, h});
    layer.Add(p + "self_attn.k_proj.bias", {kv});
    layer.Add(p + "self_attn.v_proj.weight", {kv, h});
    layer.Add(p + "self_attn.v_proj.bias", {kv});
    layer.Add(p + "self_attn.o_proj.weight", {h, h});
    layer.Add(p + "mlp.gate_proj.weight", {mlp, h});
    layer.Add(p + "mlp.up_proj.weight", {mlp, h});
    layer.Add(p + "mlp.down_proj.weight", {h, mlp});
    layer.Add(p + "input_layernorm.weight", {h});
    layer.Add(p + "post_attention_layernorm.weight", {h});
    if (max_bytes > 0 && m.total + layer.total > max_bytes && l > 0) break;
    for (size_t i = 0; i < layer.names.size(); ++i) m.Add(layer.names[i], layer.shapes[i]);
  }
  if (embeddings) {
    m.Add("model.norm.weight", {h});
    m.Add("lm_head.weight", {vocab, h});
  }
  return m;
}

// Aggregate pinned host->device bandwidth: every GPU copies `bytes` from its own pinned buffer at
// once, `rounds` times after a warm-up. Returns {aggregate GB/s, slowest single GPU's GB/s}.
std::pair<double, double> PinnedH2D(int gpus, size_t bytes, int rounds) {
  std::vector<double> seconds(gpus, 0);
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  auto arrive_and_wait = [&] {
    std::unique_lock<std::mutex> lock(mu);
    if (++arrived == gpus) cv.notify_all();
    cv.wait(lock, [&] { return arrived == gpus; });
  };
  std::vector<std::thread> threads;
  std::atomic<bool> ok{true};
  for (int g = 0; g < gpus; ++g) {
    threads.emplace_back([&, g] {
      void* host = nullptr;
      void* dev = nullptr;
      cudaStream_t stream = nullptr;
      bool good = cudaSetDevice(g) == cudaSuccess && cudaMallocHost(&host, bytes) == cudaSuccess &&
                  cudaMalloc(&dev, bytes) == cudaSuccess &&
                  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess;
      if (good) {
        std::memset(host, 1, bytes);
        good = cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream) == cudaSuccess &&
               cudaStreamSynchronize(stream) == cudaSuccess;
      }
      arrive_and_wait();
      const auto t0 = Clock::now();
      for (int r = 0; good && r < rounds; ++r) {
        good = cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream) == cudaSuccess;
      }
      good = good && cudaStreamSynchronize(stream) == cudaSuccess;
      seconds[g] = Seconds(Clock::now() - t0);
      if (!good) ok = false;
      if (stream != nullptr) cudaStreamDestroy(stream);
      if (dev != nullptr) cudaFree(dev);
      if (host != nullptr) cudaFreeHost(host);
    });
  }
  for (auto& t : threads) t.join();
  if (!ok) return {0, 0};
  const double total = static_cast<double>(bytes) * rounds * gpus;
  const double slowest = *std::max_element(seconds.begin(), seconds.end());
  return {total / slowest / 1e9, static_cast<double>(bytes) * rounds / slowest / 1e9};
}

struct Views {
  std::string data;  // one random buffer: every tensor reads its prefix
  std::vector<ckpt::client::TensorView> views;
};

Views MakeViews(const Model& m) {
  Views v;
  v.data.resize(m.largest);
  std::mt19937_64 rng(42);
  for (size_t i = 0; i + 8 <= v.data.size(); i += 8) {
    // Bit 14 of each bfloat16 cleared: finite values below 2 (FP8 conversion refuses NaN/Inf).
    const uint64_t x = rng() & ~uint64_t{0x4000400040004000};
    std::memcpy(&v.data[i], &x, 8);
  }
  for (size_t i = 0; i < m.names.size(); ++i) {
    v.views.push_back({m.names[i], DType::kBfloat16, m.shapes[i], v.data.data(), m.bytes[i]});
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ckpt-engine update benchmark");
  int layers = 64, repeat = 3, slots = 2;
  uint64_t bucket_mib = 0;
  double small_gib = 1;
  uint64_t many_tensors = 140000, many_tensor_kib = 48;
  app.add_option("--layers", layers,
                 "decoder layers of the 32B-class tensor list (64: the full model)");
  app.add_option("--repeat", repeat, "updates timed per version");
  app.add_option("--bucket-mib", bucket_mib, "bucket_bytes in MiB (0: the daemon's auto)");
  app.add_option("--slots", slots, "slots_per_gpu");
  app.add_option("--small-gib", small_gib, "size of the latency version in GiB (0: skip)");
  app.add_option("--many-tensors", many_tensors, "tensors of the many-tensor version (0: skip it)");
  app.add_option("--many-tensor-kib", many_tensor_kib, "size of each of them in KiB");
  int rl_steps = 2;
  app.add_option("--rl-steps", rl_steps, "colocated RL steps: push from GPU memory + update");
  bool fp8 = false;
  app.add_flag("--fp8", fp8,
               "also update the big version delivered as FP8 (model.layers.*.weight as e4m3 "
               "with 128 x 128 block scales), and time the conversion kernel alone");
  CLI11_PARSE(app, argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  const ckpt::gpu::GpuProbe probe = ckpt::gpu::ProbeGpus();
  if (probe.gpus.empty()) return Fail("no GPU: " + probe.no_gpu_reason);
  const int gpus = static_cast<int>(probe.gpus.size());
  const Model big = Qwen32B(layers, 0);
  // The latency version: whole decoder layers up to --small-gib (one layer is 0.98 GB).
  const Model small = Qwen32B(64, static_cast<uint64_t>(small_gib * (1ull << 30)), false);
  std::printf("== update_bench: %d x %s, %u host threads\n", gpus, probe.gpus[0].name.c_str(),
              std::thread::hardware_concurrency());
  std::printf("== version: %zu tensors, %.3f GB (%.2f GiB), largest tensor %.3f GB\n",
              big.names.size(), big.total / 1e9, big.total / double(1ull << 30), big.largest / 1e9);

  // Floor: aggregate pinned H2D of all GPUs at once, measured before anything else holds memory.
  // It is measured again after the updates; the floor uses the better of the two (a single
  // measurement varies by up to 25% on shared machines).
  auto [h2d_aggregate, h2d_single] = PinnedH2D(gpus, 1ull << 30, 16);
  if (h2d_aggregate <= 0) return Fail("pinned H2D measurement failed");
  std::printf("== pinned H2D, all %d GPUs at once: %.1f GB/s aggregate (%.1f GB/s per GPU)\n", gpus,
              h2d_aggregate, h2d_single);

  Model many;
  for (uint64_t i = 0; i < many_tensors && many_tensor_kib > 0; ++i) {
    many.Add(absl::StrCat("model.layers.", i / 512, ".mlp.experts.", i % 512, ".w"),
             {static_cast<int64_t>(many_tensor_kib << 9)});
  }
  // The RL steps push a new big version while the last one is still the newest committed.
  const uint64_t budget = big.total + (small_gib > 0 ? small.total : 0) + many.total +
                          (1ull << 30) + (rl_steps > 0 ? big.total : 0);
  std::vector<std::string> args = {"--backend",
                                   "cuda",
                                   "--host-memory-budget",
                                   std::to_string(budget),
                                   "--max-versions",
                                   "2",
                                   "--load-threads",
                                   "16",
                                   "--slots-per-gpu",
                                   std::to_string(slots),
                                   "--ack-timeout",
                                   "120s",
                                   "--log-level",
                                   "warn"};
  if (bucket_mib > 0) {
    args.insert(args.end(), {"--bucket-bytes", std::to_string(bucket_mib << 20)});
  }
  auto t0 = Clock::now();
  ckpt::testing::DaemonProcess daemon(args, {}, std::chrono::seconds(400));
  if (!daemon.ready()) return Fail("daemon did not start: " + daemon.proc->Stderr());
  std::printf("== daemon serving in %.1f s (%.1f GiB store)\n", Seconds(Clock::now() - t0),
              budget / double(1ull << 30));
  auto endpoint = ckpt::client::ResolveEndpoint(daemon.socket, "");
  auto admin = ckpt::client::DaemonClient::Connect(*endpoint);
  auto trainer = ckpt::client::TrainerClient::Connect(*endpoint);
  if (!admin.ok() || !trainer.ok()) return Fail("cannot connect to the daemon");
  auto status = (*admin)->Status(absl::Seconds(10));
  if (!status.ok()) return Fail(status.status().ToString());
  // The daemon serves before its store is populated and pinned (until then updates copy from
  // pageable memory): measure from a ready store only.
  for (auto until = Clock::now() + std::chrono::seconds(400);
       status.ok() && !status->store_ready() && Clock::now() < until;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    status = (*admin)->Status(absl::Seconds(10));
  }
  if (!status.ok() || !status->store_ready()) return Fail("the daemon's store did not get ready");
  std::printf("== store ready (populated and pinned) in %.1f s after start (warm-up %.1f s)\n",
              Seconds(Clock::now() - t0), status->store_warmup_seconds());
  std::printf("== slots: %u x %.0f MiB per GPU = %.2f GiB of GPU memory added per GPU\n",
              status->slots_per_gpu(), status->bucket_bytes() / double(1 << 20),
              status->gpu_memory_per_gpu_bytes() / double(1ull << 30));

  auto push = [&](const Model& m) -> uint64_t {
    Views v = MakeViews(m);
    ckpt::client::PushOptions options;
    options.streams = 8;
    options.timeout = absl::Seconds(600);
    const auto start = Clock::now();
    auto info = (*trainer)->PushTensors(v.views, options);
    if (!info.ok()) {
      Fail(info.status().ToString());
      return 0;
    }
    const double push_s = Seconds(Clock::now() - start);
    std::printf("== pushed version %lu: %.3f GB in %.3f s = %.2f GB/s (transport %s)\n",
                info->version(), m.total / 1e9, push_s, m.total / 1e9 / push_s,
                info->transport().c_str());
    return info->version();
  };
  const uint64_t big_version = push(big);
  if (big_version == 0) return 1;

  // One worker per GPU, each with its own buffer for every tensor of the big version.
  uint64_t own_bytes = 0;
  for (uint64_t b : big.bytes) own_bytes += (b + 255) / 256 * 256;
  std::vector<std::unique_ptr<ckpt::testing::Subprocess>> workers;
  for (int g = 0; g < gpus; ++g) {
    workers.push_back(std::make_unique<ckpt::testing::Subprocess>(std::vector<std::string>{
        ckpt::testing::Runfile("tests/integration/worker_client"), "--socket", daemon.socket,
        "--cuda-device", std::to_string(g), "--engine", "bench", "--versions", "1000",
        "--copy-into-bytes", std::to_string(own_bytes)}));
  }
  const auto attach_deadline = Clock::now() + std::chrono::seconds(120);
  for (;;) {
    auto s = (*admin)->Status(absl::Seconds(10));
    if (s.ok() && s->workers_size() == gpus) break;
    for (auto& w : workers) {
      if (!w->running()) return Fail("a worker exited: " + w->Stderr());
    }
    if (Clock::now() > attach_deadline) return Fail("workers did not attach in 120 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::printf("== %d workers attached, each copying into %.2f GiB of its own GPU memory\n", gpus,
              own_bytes / double(1ull << 30));

  struct Run {
    std::string label;
    double seconds;
    uint64_t bytes;
    std::string line;
  };
  std::vector<Run> runs;
  auto run = [&](const char* label, uint64_t version, const Model& m) -> bool {
    for (int r = 0; r < repeat; ++r) {
      ckpt::v1::UpdateRequest request;
      request.set_version(version);
      request.set_force(true);
      const auto start = Clock::now();
      auto result = (*admin)->Update(request, absl::Seconds(600));
      const double secs = Seconds(Clock::now() - start);
      if (!result.ok()) {
        Fail(result.status().ToString());
        return false;
      }
      char line[512];
      std::snprintf(line, sizeof(line),
                    "%u buckets; stages (summed over buckets): wait-slot %.3f s, fill %.3f s, "
                    "worker-load %.3f s, finish %.3f s; daemon-side %.3f s",
                    result->buckets(), result->wait_slot_seconds(), result->fill_seconds(),
                    result->load_seconds(), result->finish_seconds(), result->seconds());
      std::printf("%s run %d: %.3f GB in %.3f s = %.1f GB/s; %s\n", label, r + 1, m.total / 1e9,
                  secs, m.total / 1e9 / secs, line);
      runs.push_back({label, secs, m.total, line});
    }
    return true;
  };
  if (!run("big", big_version, big)) return 1;
  if (fp8) {
    // The same version delivered as FP8, the same run: what the workers got, and how long.
    for (int r = 0; r < repeat; ++r) {
      ckpt::v1::UpdateRequest request;
      request.set_version(big_version);
      request.set_force(true);
      request.set_convert(ckpt::v1::CONVERSION_FP8);
      request.add_fp8_weights("model.layers.*.weight");
      const auto start = Clock::now();
      auto result = (*admin)->Update(request, absl::Seconds(600));
      const double secs = Seconds(Clock::now() - start);
      if (!result.ok()) return Fail(result.status().ToString());
      std::printf(
          "big-fp8 run %d: %.3f GB version delivered as %.3f GB (%u weights: %.3f GB of bfloat16 "
          "as %.3f GB of e4m3 + scales) in %.3f s = %.1f GB/s of the version; %u buckets, fill "
          "%.3f s, worker-load %.3f s\n",
          r + 1, big.total / 1e9, result->bytes() / 1e9, result->fp8_tensors(),
          result->fp8_source_bytes() / 1e9, result->fp8_bytes() / 1e9, secs, big.total / 1e9 / secs,
          result->buckets(), result->fill_seconds(), result->load_seconds());
      runs.push_back({"fp8", secs, big.total, ""});
    }
    // The conversion kernel alone on GPU 0: 1 GiB of bfloat16 (8192 x 65536) in device memory.
    const uint64_t rows = 8192, cols = 65536;
    void *src = nullptr, *dst = nullptr, *scales = nullptr, *flag = nullptr;
    cudaEvent_t a = nullptr, b = nullptr;
    if (cudaSetDevice(0) != cudaSuccess || cudaMalloc(&src, rows * cols * 2) != cudaSuccess ||
        cudaMalloc(&dst, rows * cols) != cudaSuccess ||
        cudaMalloc(&scales, (rows / 128) * (cols / 128) * 4) != cudaSuccess ||
        cudaMalloc(&flag, 4) != cudaSuccess ||
        cudaMemset(src, 0x3c, rows * cols * 2) != cudaSuccess ||
        cudaMemset(flag, 0, 4) != cudaSuccess || cudaEventCreate(&a) != cudaSuccess ||
        cudaEventCreate(&b) != cudaSuccess) {
      return Fail("allocating the conversion kernel's buffers");
    }
    float best_ms = 0;
    for (int r = 0; r < 5; ++r) {
      cudaEventRecord(a, nullptr);
      if (ckpt::gpu::LaunchFp8BlockQuantize(static_cast<uint16_t*>(src), rows, cols,
                                            static_cast<uint8_t*>(dst), static_cast<float*>(scales),
                                            static_cast<int*>(flag), 1, nullptr) != cudaSuccess) {
        return Fail("the conversion kernel did not launch");
      }
      cudaEventRecord(b, nullptr);
      cudaEventSynchronize(b);
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (r > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;
    }
    std::printf(
        "fp8 kernel alone (GPU 0): 1 GiB of bfloat16 (8192 x 65536) to e4m3 in %.3f ms = %.0f GB/s "
        "of bfloat16 read\n",
        best_ms, rows * cols * 2 / 1e9 / (best_ms / 1e3));
    cudaFree(src);
    cudaFree(dst);
    cudaFree(scales);
    cudaFree(flag);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  if (small_gib > 0) {
    const uint64_t small_version = push(small);
    if (small_version == 0 || !run("small", small_version, small)) return 1;
  }
  if (!many.names.empty()) {
    const uint64_t many_version = push(many);
    if (many_version == 0 || !run("many", many_version, many)) return 1;
    for (const Run& r : runs) {
      if (r.label != "many") continue;
      std::printf("many  %zu tensors of %lu KiB: %.3f s = %.2f us/tensor\n", many.names.size(),
                  static_cast<unsigned long>(many_tensor_kib), r.seconds,
                  r.seconds / static_cast<double>(many.names.size()) * 1e6);
    }
  }
  if (rl_steps > 0) {
    // The trainer's weights in GPU 0's memory, one allocation per tensor.
    Views host = MakeViews(big);
    std::vector<void*> on_gpu;
    std::vector<ckpt::client::TensorView> gpu_views;
    struct FreeAll {
      std::vector<void*>& p;
      ~FreeAll() {
        for (void* x : p) (void)cudaFree(x);
      }
    } free_all{on_gpu};
    for (size_t i = 0; i < big.names.size(); ++i) {
      void* p = nullptr;
      if (cudaSetDevice(0) != cudaSuccess || cudaMalloc(&p, big.bytes[i]) != cudaSuccess ||
          cudaMemcpy(p, host.data.data(), big.bytes[i], cudaMemcpyHostToDevice) != cudaSuccess) {
        return Fail("placing the trainer's tensors on GPU 0");
      }
      on_gpu.push_back(p);
      gpu_views.push_back({big.names[i], DType::kBfloat16, big.shapes[i], p, big.bytes[i], 0});
    }
    double update_alone = 0;
    for (const Run& r : runs) {
      if (r.label == "big" && (update_alone == 0 || r.seconds < update_alone)) {
        update_alone = r.seconds;
      }
    }
    // Sequential (push, then Admin.Update) and overlapped (push and update: PushOptions::update,
    // the buckets going out while the push arrives; then Admin.WaitLoaded), in turn.
    for (int step = 1; step <= 2 * rl_steps; ++step) {
      const bool overlapped = step % 2 == 0;
      ckpt::client::PushOptions options;
      options.timeout = absl::Seconds(600);
      options.update = overlapped;
      const auto start = Clock::now();
      auto info = (*trainer)->PushTensors(gpu_views, options);
      if (!info.ok()) return Fail(info.status().ToString());
      const double push_s = Seconds(Clock::now() - start);
      if (overlapped) {
        auto loaded = (*admin)->WaitLoaded(info->version(), absl::Seconds(600));
        if (!loaded.ok()) return Fail(loaded.status().ToString());
        if (!loaded->loaded()) return Fail(loaded->summary());
      } else {
        ckpt::v1::UpdateRequest request;
        request.set_version(info->version());
        auto result = (*admin)->Update(request, absl::Seconds(600));
        if (!result.ok()) return Fail(result.status().ToString());
      }
      const double step_s = Seconds(Clock::now() - start);
      std::printf(
          "rl step %d (%s): push %.3f s (%.1f GB/s, transport %s, %.3f GB copied by the daemon "
          "from GPU memory) %s %.3f s = %.3f s = %.2f x the update alone (%.3f s)\n",
          (step + 1) / 2, overlapped ? "push and update, overlapped" : "push, then update", push_s,
          big.total / 1e9 / push_s, info->transport().c_str(), info->ipc_bytes() / 1e9,
          overlapped ? "+ the update's end" : "+ update", step_s - push_s, step_s,
          update_alone > 0 ? step_s / update_alone : 0.0, update_alone);
    }
  }
  // The floor, with the GPU memory the workers hold in place.
  auto [after_aggregate, after_single] = PinnedH2D(gpus, 1ull << 30, 16);
  std::printf("== pinned H2D after the updates: %.1f GB/s aggregate (%.1f GB/s per GPU)\n",
              after_aggregate, after_single);
  const double floor_rate = std::max(h2d_aggregate, after_aggregate);
  std::printf("== summary (floor = B / %.1f GB/s, the better pinned H2D of this run):\n",
              floor_rate);
  for (const Run& r : runs) {
    const double floor_s = r.bytes / 1e9 / floor_rate;
    std::printf("%-5s %.3f GB  %.3f s  %.1f GB/s  floor %.3f s  %.0f%% of floor\n", r.label.c_str(),
                r.bytes / 1e9, r.seconds, r.bytes / 1e9 / r.seconds, floor_s,
                100 * floor_s / r.seconds);
  }
  for (auto& w : workers) w->Signal(SIGTERM);
  return 0;
}
