// GPU: local pushes of CUDA tensors into a real cuda-backend daemon. This process is the trainer:
// it allocates device memory, and the daemon copies from it through CUDA IPC (PushLocal's ipc
// step), or the client copies it into windows when the memory cannot be shared. Raw streams check
// that the daemon holds every handle and range to the allocation it names.
#include <cuda_runtime_api.h>
#include <signal.h>
#include <xxhash.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "client/trainer_client.h"
#include "gpu/gpu_info.h"
#include "gpu/ipc_handle.h"
#include "tests/testing/trainer_daemon.h"

namespace ckpt::testing {
namespace {

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

uint64_t Xxh3(const std::string& s) { return XXH3_64bits(s.data(), s.size()); }

// Device memory of this process holding `bytes`, freed on destruction.
struct DeviceBytes {
  explicit DeviceBytes(const std::string& bytes, bool from_pool = false) : size(bytes.size()) {
    REQUIRE(cudaSetDevice(0) == cudaSuccess);
    if (from_pool) {
      // Stream-ordered pool memory: cuIpcGetMemHandle refuses it (as it refuses PyTorch's
      // expandable segments), so the client must copy it into windows itself.
      REQUIRE(cudaMallocAsync(&ptr, size, nullptr) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(nullptr) == cudaSuccess);
      pooled = true;
    } else {
      REQUIRE(cudaMalloc(&ptr, size) == cudaSuccess);
    }
    REQUIRE(cudaMemcpy(ptr, bytes.data(), size, cudaMemcpyHostToDevice) == cudaSuccess);
  }
  ~DeviceBytes() {
    if (pooled) {
      (void)cudaFreeAsync(ptr, nullptr);
      (void)cudaStreamSynchronize(nullptr);
    } else {
      (void)cudaFree(ptr);
    }
  }
  uint8_t* data() const { return static_cast<uint8_t*>(ptr); }
  void* ptr = nullptr;
  size_t size = 0;
  bool pooled = false;
};

v1::TensorSpec Bytes(const std::string& name, uint64_t n) {
  v1::TensorSpec t;
  t.set_name(name);
  t.set_dtype(v1::DTYPE_UINT8);
  t.add_shape(static_cast<int64_t>(n));
  t.set_byte_size(n);
  return t;
}

std::vector<std::string> CudaDaemon(const std::string& budget = "256MiB") {
  return {"--backend", "cuda", "--host-memory-budget", budget, "--staging-timeout", "10s"};
}

TEST_CASE("PushLocal ipc: the daemon copies from the named allocation only, bit-exact") {
  TrainerDaemon d(CudaDaemon());
  auto uuid = gpu::GpuUuid(0);
  REQUIRE(uuid.ok());
  const std::string bytes = Pattern(1 << 20, 1);
  DeviceBytes mem(bytes);
  auto handle = gpu::IpcHandle::Export(0, mem.ptr);
  REQUIRE(handle.ok());
  v1::Manifest m;
  *m.add_tensors() = Bytes("a", 4096);
  *m.add_tensors() = Bytes("b", 100);
  auto ipc = [&](uint32_t tensor, uint64_t offset, const std::string& h) {
    v1::LocalPushIpc step;
    v1::IpcTensor* t = step.add_tensors();
    t->set_tensor(tensor);
    t->set_gpu(*uuid);
    t->set_handle(h);
    t->set_offset(offset);
    return step;
  };

  SECTION("a GPU the daemon drives is taken, one it does not is not") {
    LocalStream ls(d);
    v1::LocalPushBegun begun;
    REQUIRE(ls.Begin(m, {"GPU-00000000-0000-0000-0000-000000000000", *uuid}, &begun) > 0);
    REQUIRE(begun.ipc_gpus_size() == 1);
    CHECK(begun.ipc_gpus(0) == *uuid);
    // Two tensors of one allocation, at offsets inside it, in two steps.
    REQUIRE(ls.Ipc(ipc(0, 4096, handle->ToBytes())));
    REQUIRE(ls.Ipc(ipc(1, (1 << 20) - 100, handle->ToBytes())));
    auto info = ls.Commit({0, 0});  // the trainer has no checksums of GPU tensors
    REQUIRE(info.has_value());
    CHECK(info->ipc_bytes() == 4196);
    CHECK(ls.Finish().ok());
    v1::GetVersionResponse got;
    REQUIRE(d.Get(info->version(), &got).ok());
    CHECK(got.manifest().tensors(0).xxh3() == Xxh3(bytes.substr(4096, 4096)));
    CHECK(got.manifest().tensors(1).xxh3() == Xxh3(bytes.substr((1 << 20) - 100)));
    CHECK(got.info().ipc_bytes() == 4196);
  }
  SECTION("a range past the allocation's end is refused before any copy") {
    LocalStream ls(d);
    v1::LocalPushBegun begun;
    REQUIRE(ls.Begin(m, {*uuid}, &begun) > 0);
    CHECK_FALSE(ls.Ipc(ipc(0, (1 << 20) - 4095, handle->ToBytes())));
    RequireError(ls.Finish(), grpc::StatusCode::OUT_OF_RANGE,
                 "do not lie inside its allocation of 1048576 bytes");
    d.RequireClean();
  }
  SECTION("an offset near 2^64 is refused") {
    LocalStream ls(d);
    v1::LocalPushBegun begun;
    REQUIRE(ls.Begin(m, {*uuid}, &begun) > 0);
    CHECK_FALSE(ls.Ipc(ipc(0, ~uint64_t{0} - 10, handle->ToBytes())));
    RequireError(ls.Finish(), grpc::StatusCode::INVALID_ARGUMENT, "passes 2^64");
    d.RequireClean();
  }
  SECTION("a handle that names nothing is refused") {
    LocalStream ls(d);
    v1::LocalPushBegun begun;
    REQUIRE(ls.Begin(m, {*uuid}, &begun) > 0);
    CHECK_FALSE(ls.Ipc(ipc(0, 0, std::string(64, '\x5a'))));
    RequireError(ls.Finish(), grpc::StatusCode::INVALID_ARGUMENT,
                 "its CUDA IPC handle cannot be opened");
    d.RequireClean();
  }
  SECTION("a tensor sent by ipc may not come again") {
    LocalStream ls(d);
    v1::LocalPushBegun begun;
    REQUIRE(ls.Begin(m, {*uuid}, &begun) > 0);
    REQUIRE(ls.Ipc(ipc(0, 0, handle->ToBytes())));
    CHECK_FALSE(ls.Ipc(ipc(0, 0, handle->ToBytes())));
    RequireError(ls.Finish(), grpc::StatusCode::INVALID_ARGUMENT, "'a' is already sent");
    d.RequireClean();
  }
}

TEST_CASE("TrainerClient: CUDA tensors over ipc, windows (memory IPC refuses) and gRPC") {
  TrainerDaemon d(CudaDaemon());
  auto endpoint = client::ResolveEndpoint(d.socket, "");
  REQUIRE(endpoint.ok());
  auto client = client::TrainerClient::Connect(*endpoint);
  REQUIRE(client.ok());
  // Two tensors in one allocation, one in pool memory (no IPC handle), one on the host, one empty.
  const std::string shared = Pattern(3 << 20, 2), pooled = Pattern((5 << 20) + 7, 3),
                    host = Pattern(1000, 4);
  DeviceBytes mem(shared);
  DeviceBytes pool(pooled, /*from_pool=*/true);
  std::vector<client::TensorView> tensors = {
      {"shared.a", DType::kUint8, {1 << 20}, mem.data(), 1 << 20, 0},
      {"shared.b", DType::kUint8, {2 << 20}, mem.data() + (1 << 20), 2 << 20, 0},
      {"pooled", DType::kUint8, {(5 << 20) + 7}, pool.data(), (5 << 20) + 7, 0},
      {"host", DType::kUint8, {1000}, host.data(), 1000, -1},
      {"empty", DType::kUint8, {0}, nullptr, 0, 0},
  };
  const std::vector<uint64_t> want = {Xxh3(shared.substr(0, 1 << 20)), Xxh3(shared.substr(1 << 20)),
                                      Xxh3(pooled), Xxh3(host), XXH3_64bits("", 0)};
  const auto transport = GENERATE(client::Transport::kLocal, client::Transport::kGrpc);
  client::PushOptions options;
  options.transport = transport;
  options.window_bytes = 2 << 20;            // the pooled tensor spans several windows
  for (int round = 0; round < 2; ++round) {  // the second reuses the windows / staging kept
    auto info = (*client)->PushTensors(tensors, options);
    INFO(info.status().ToString());
    REQUIRE(info.ok());
    v1::GetVersionResponse got;
    REQUIRE(d.Get(info->version(), &got).ok());
    for (size_t i = 0; i < tensors.size(); ++i) {
      INFO(tensors[i].name);
      CHECK(got.manifest().tensors(static_cast<int>(i)).xxh3() == want[i]);
    }
    if (transport == client::Transport::kLocal) {
      CHECK(info->transport() == "local");
      CHECK(info->ipc_bytes() == 3 << 20);  // the shared allocation; the pool went in windows
    } else {
      CHECK(info->transport() == "grpc");
      CHECK(info->ipc_bytes() == 0);
    }
    REQUIRE(d.Drop(info->version()).ok());
  }
  (*client)->ReleaseStaging();
  d.RequireClean();
}

TEST_CASE("two pushes of one allocation at once; gpu_ipc_push = false; a tensor on the wrong GPU") {
  const std::string bytes = Pattern(4 << 20, 5);
  DeviceBytes mem(bytes);
  std::vector<client::TensorView> tensors = {
      {"a", DType::kUint8, {1 << 20}, mem.data(), 1 << 20, 0},
      {"b", DType::kUint8, {3 << 20}, mem.data() + (1 << 20), 3 << 20, 0},
  };
  const uint64_t want_a = Xxh3(bytes.substr(0, 1 << 20)), want_b = Xxh3(bytes.substr(1 << 20));
  client::PushOptions options;
  options.transport = client::Transport::kLocal;
  auto check = [&](TrainerDaemon& d, const absl::StatusOr<v1::VersionInfo>& info,
                   uint64_t ipc_bytes) {
    INFO(info.status().ToString());
    REQUIRE(info.ok());
    CHECK(info->ipc_bytes() == ipc_bytes);
    v1::GetVersionResponse got;
    REQUIRE(d.Get(info->version(), &got).ok());
    CHECK(got.manifest().tensors(0).xxh3() == want_a);
    CHECK(got.manifest().tensors(1).xxh3() == want_b);
  };
  SECTION("two clients push the same allocation at once: the daemon maps it twice") {
    TrainerDaemon d(CudaDaemon());
    auto endpoint = client::ResolveEndpoint(d.socket, "");
    REQUIRE(endpoint.ok());
    auto c1 = client::TrainerClient::Connect(*endpoint);
    auto c2 = client::TrainerClient::Connect(*endpoint);
    REQUIRE((c1.ok() && c2.ok()));
    for (int round = 0; round < 4; ++round) {
      absl::StatusOr<v1::VersionInfo> r1, r2;
      std::thread t([&] { r1 = (*c1)->PushTensors(tensors, options); });
      r2 = (*c2)->PushTensors(tensors, options);
      t.join();
      check(d, r1, 4 << 20);
      check(d, r2, 4 << 20);
      REQUIRE(d.Drop(r1->version()).ok());
      REQUIRE(d.Drop(r2->version()).ok());
    }
    d.RequireClean();
  }
  SECTION("gpu_ipc_push = false: the daemon takes no GPU, the client copies into windows") {
    std::vector<std::string> args = CudaDaemon();
    args.insert(args.end(), {"--gpu-ipc-push", "false"});
    TrainerDaemon d(args);
    auto endpoint = client::ResolveEndpoint(d.socket, "");
    REQUIRE(endpoint.ok());
    auto c = client::TrainerClient::Connect(*endpoint);
    REQUIRE(c.ok());
    check(d, (*c)->PushTensors(tensors, options), 0);
  }
  SECTION("a CUDA tensor whose address is not on the GPU it names is refused, naming it") {
    TrainerDaemon d(CudaDaemon());
    auto endpoint = client::ResolveEndpoint(d.socket, "");
    REQUIRE(endpoint.ok());
    auto c = client::TrainerClient::Connect(*endpoint);
    REQUIRE(c.ok());
    std::vector<client::TensorView> wrong = tensors;
    wrong[1].data = bytes.data();  // host memory, said to be on GPU 0
    for (auto transport : {client::Transport::kLocal, client::Transport::kGrpc}) {
      options.transport = transport;
      auto info = (*c)->PushTensors(wrong, options);
      INFO(info.status().ToString());
      CHECK(info.status().code() == absl::StatusCode::kInvalidArgument);
      CHECK(Contains(std::string(info.status().message()), "tensor 'b' (device 0)"));
      CHECK(Contains(std::string(info.status().message()), "is not CUDA device memory"));
    }
    d.RequireClean();
  }
}

TEST_CASE("a trainer killed during a push from GPU memory leaves nothing, and the daemon goes on") {
  using Clock = std::chrono::steady_clock;
  using namespace std::chrono_literals;
  TrainerDaemon d(CudaDaemon("3GiB"));
  const uint64_t before = d.Status().host_memory_used_bytes();
  // 2 GiB in 32 allocations: the daemon's copy takes tens of milliseconds; kills land before the
  // begin, during the copy (the exporter vanishes under the daemon's reads) and around the commit.
  const std::vector<std::string> push = {Runfile("tests/integration/local_push_client"),
                                         d.socket,
                                         "32",
                                         std::to_string(64 << 20),
                                         std::to_string(64 << 20),
                                         "local",
                                         "0",
                                         "cuda"};
  RunResult full = Run(push);
  INFO(full.err);
  REQUIRE(full.exit.code == 0);
  REQUIRE(Contains(full.out, "transport local ipc_bytes 2147483648"));
  REQUIRE(d.Drop(1).ok());
  std::mt19937 rng(77);
  int committed = 0;
  for (int round = 0; round < 8; ++round) {
    Subprocess pusher(push);
    // Wait until its tensors are on the GPU, then kill it 0..60 ms later.
    for (auto deadline = Clock::now() + 60s;
         pusher.running() && !Contains(pusher.Stdout(), "ready") && Clock::now() < deadline;) {
      std::this_thread::sleep_for(200us);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 60000));
    pusher.Signal(SIGKILL);
    pusher.Wait(20s);
    auto deadline = Clock::now() + 20s;
    v1::StatusResponse s = d.Status();
    while (s.staging_versions() != 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
      s = d.Status();
    }
    committed += d.DropCommitted("local");
    s = d.Status();
    INFO("round " << round);
    CHECK(s.staging_versions() == 0);
    CHECK(s.host_memory_used_bytes() == before);
  }
  WARN(committed << " of 8 killed pushes committed before the kill");
  // The daemon's CUDA context survived: a full push from GPU memory still works.
  RunResult after = Run(push);
  INFO(after.err);
  CHECK(after.exit.code == 0);
  CHECK(Contains(after.out, "ipc_bytes 2147483648"));
}

}  // namespace
}  // namespace ckpt::testing
