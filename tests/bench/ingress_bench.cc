// Ingress benchmark: how fast a checkpoint gets into the daemon's version store.
//
// Starts the real ckpt-engined (from Bazel runfiles, or $CKPT_BIN_DIR on the GPU machine), then:
//   1. pushes a synthetic version of --gib GiB (tensors shaped like a dense LLM's layers) with the
//      C++ TrainerClient over 1 stream and over each count in --streams, on the Unix socket and
//      (with
//      --tcp) over TCP loopback;
//   2. writes the same tensors as a safetensors file under --dir, reads it once so it is in the
//   page
//      cache, and loads it with LoadFiles.
// Each run prints GB/s (bytes of the version / wall time from the call to the committed version)
// and its stages: checksums on the client, transfer (BeginVersion to the last chunk sent), commit
// (the daemon verifying every byte). Each version is dropped before the next run.
//
//   3. pushes --many-tensors bf16 tensors of --many-tensor-kib KiB each (a Kimi-K2-sized tensor
//      count: 139,583) over the largest --streams count, and prints microseconds per tensor (the
//      per-tensor cost of the C++ client and the daemon; 0 skips it).
//
//   ingress_bench [--gib 1] [--streams 1,8] [--chunk-mib 4] [--tcp] [--dir /tmp] [--backend host]
//                 [--many-tensors 140000] [--many-tensor-kib 48]
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"
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

int Fail(const std::string& what) {
  std::fprintf(stderr, "ingress_bench: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ckpt-engine ingress benchmark");
  double gib = 1;
  std::string streams_text = "1,8", dir = "/tmp", backend = "host";
  int chunk_mib = 4;
  bool tcp = false;
  uint64_t many_tensors = 140000, many_tensor_kib = 48;
  app.add_option("--gib", gib, "version size in GiB");
  app.add_option("--many-tensors", many_tensors, "tensors of the many-tensor push (0: skip it)");
  app.add_option("--many-tensor-kib", many_tensor_kib, "size of each of them in KiB");
  app.add_option("--streams", streams_text, "comma-separated stream counts");
  app.add_option("--chunk-mib", chunk_mib, "chunk size in MiB");
  app.add_flag("--tcp", tcp, "also push over TCP loopback");
  app.add_option("--dir", dir, "where to write the safetensors file");
  app.add_option("--backend", backend, "daemon backend: host, cuda or auto");
  CLI11_PARSE(app, argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  const uint64_t bytes = static_cast<uint64_t>(gib * (1ull << 30));
  std::printf(
      "== ingress_bench: %.2f GiB version, chunks of %d MiB, backend %s, %u hardware threads\n",
      gib, chunk_mib, backend.c_str(), std::thread::hardware_concurrency());
  Synthetic tensors = MakeTensors(bytes);
  std::printf("== %zu tensors, %.3f GB\n", tensors.names.size(), tensors.total / 1e9);

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
  for (const auto& [transport, ep] : endpoints) {
    auto client = ckpt::client::TrainerClient::Connect(ep);
    if (!client.ok()) return Fail(std::string(client.status().message()));
    for (int k : stream_counts) {
      ckpt::client::PushOptions o;
      o.streams = k;
      o.chunk_bytes = static_cast<size_t>(chunk_mib) << 20;
      auto t0 = Clock::now();
      Clock::time_point sent = t0, first = t0;
      bool first_seen = false;
      o.progress = [&](uint64_t done, uint64_t total) {
        if (!first_seen) {
          first = Clock::now();  // the first chunks are out: checksums and Begin are done
          first_seen = true;
        }
        if (done == total) sent = Clock::now();
      };
      auto info = (*client)->PushTensors(views, o);
      auto t1 = Clock::now();
      if (!info.ok()) return Fail(std::string(info.status().message()));
      double total_s = Seconds(t1 - t0);
      std::printf(
          "push %-4s streams=%-2d %7.3f GB in %6.3f s = %6.2f GB/s  (checksums+begin %.3f s, "
          "transfer %.3f s = %.2f GB/s, commit %.3f s)\n",
          transport.c_str(), k, tensors.total / 1e9, total_s, tensors.total / 1e9 / total_s,
          Seconds(first - t0), Seconds(sent - first), tensors.total / 1e9 / Seconds(sent - first),
          Seconds(t1 - sent));
      std::fflush(stdout);
      if (auto s = (*admin)->Drop(info->version(), absl::Seconds(30)); !s.ok()) {
        return Fail(std::string(s.message()));
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
    auto client = ckpt::client::TrainerClient::Connect(*unix_ep);
    if (!client.ok()) return Fail(std::string(client.status().message()));
    for (int r = 0; r < 2; ++r) {
      ckpt::client::PushOptions o;
      o.streams = stream_counts.back();
      o.chunk_bytes = static_cast<size_t>(chunk_mib) << 20;
      o.timeout = absl::Seconds(600);
      auto t0 = Clock::now();
      Clock::time_point first = t0, sent = t0;
      bool first_seen = false;
      o.progress = [&](uint64_t done, uint64_t total) {
        if (!first_seen) {
          first = Clock::now();
          first_seen = true;
        }
        if (done == total) sent = Clock::now();
      };
      auto info = (*client)->PushTensors(small, o);
      auto t1 = Clock::now();
      if (!info.ok()) return Fail(std::string(info.status().message()));
      const double n = static_cast<double>(many_tensors);
      std::printf(
          "push many unix streams=%-2d %lu tensors of %lu KiB (%.3f GB) in %.3f s = %.2f us/tensor "
          "(checksums+begin %.2f us, transfer %.2f us, commit %.2f us per tensor; %.2f GB/s)\n",
          o.streams, static_cast<unsigned long>(many_tensors),
          static_cast<unsigned long>(many_tensor_kib), many_bytes / 1e9, Seconds(t1 - t0),
          Seconds(t1 - t0) / n * 1e6, Seconds(first - t0) / n * 1e6,
          Seconds(sent - first) / n * 1e6, Seconds(t1 - sent) / n * 1e6,
          many_bytes / 1e9 / Seconds(t1 - t0));
      if (auto s = (*admin)->Drop(info->version(), absl::Seconds(30)); !s.ok()) {
        return Fail(std::string(s.message()));
      }
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
