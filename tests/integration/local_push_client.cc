// Test helper: pushes a synthetic version with TrainerClient::PushTensors (the C++ client library,
// as a trainer would), slowly enough that a test can kill it at any point. Prints "progress N" at
// every progress call (then sleeps SLEEP_MS) and "committed N transport T" at the end; on failure
// prints "error CODE: message" to stderr and exits 1. With "cuda" the tensors are in GPU 0's memory
// (one cudaMalloc each) and the daemon copies them through CUDA IPC; it prints "ready" once they
// are there.
//
//   local_push_client SOCKET TENSORS TENSOR_BYTES WINDOW_BYTES TRANSPORT SLEEP_MS [cuda]
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"

int main(int argc, char** argv) {
  bool cuda = false, update = false;  // the tensors in GPU memory; push and update
  for (int i = 7; i < argc; ++i) {
    cuda = cuda || std::string(argv[i]) == "cuda";
    update = update || std::string(argv[i]) == "update";
  }
  if (argc < 7 || argc - 7 != static_cast<int>(cuda) + static_cast<int>(update)) {
    std::fprintf(stderr,
                 "usage: local_push_client SOCKET TENSORS TENSOR_BYTES WINDOW_BYTES TRANSPORT "
                 "SLEEP_MS [cuda] [update]\n");
    return 2;
  }
  namespace client = ckpt::client;
  const int tensors = std::atoi(argv[2]);
  const uint64_t tensor_bytes = std::strtoull(argv[3], nullptr, 10);
  const int sleep_ms = std::atoi(argv[6]);
  auto transport = client::ParseTransport(argv[5]);
  if (!transport.ok()) {
    std::fprintf(stderr, "%s\n", transport.status().ToString().c_str());
    return 2;
  }
  std::vector<std::string> storage;
  std::vector<client::TensorView> views;
  for (int t = 0; t < tensors; ++t) {
    std::string bytes(tensor_bytes, '\0');
    for (uint64_t i = 0; i < tensor_bytes; ++i) bytes[i] = static_cast<char>(i * 131 + 7 + t);
    storage.push_back(std::move(bytes));
  }
  for (int t = 0; t < tensors; ++t) {
    views.push_back({"t" + std::to_string(t),
                     ckpt::DType::kUint8,
                     {static_cast<int64_t>(tensor_bytes)},
                     storage[t].data(),
                     tensor_bytes});
    if (cuda) {
      void* p = nullptr;
      if (cudaMalloc(&p, tensor_bytes) != cudaSuccess ||
          cudaMemcpy(p, storage[t].data(), tensor_bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
        std::fprintf(stderr, "error placing tensor %d on GPU 0\n", t);
        return 1;
      }
      views.back().data = p;  // freed with the process
      views.back().device = 0;
    }
  }
  if (cuda) {
    std::printf("ready\n");
    std::fflush(stdout);
  }
  auto endpoint = client::ResolveEndpoint(argv[1], "");
  if (!endpoint.ok()) {
    std::fprintf(stderr, "error %s\n", endpoint.status().ToString().c_str());
    return 1;
  }
  auto trainer = client::TrainerClient::Connect(*endpoint);
  if (!trainer.ok()) {
    std::fprintf(stderr, "error %s\n", trainer.status().ToString().c_str());
    return 1;
  }
  client::PushOptions options;
  options.transport = *transport;
  options.window_bytes = std::strtoull(argv[4], nullptr, 10);
  options.update = update;
  options.progress = [&](uint64_t done, uint64_t) {
    std::printf("progress %llu\n", static_cast<unsigned long long>(done));
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
  };
  auto info = (*trainer)->PushTensors(views, options);
  if (!info.ok()) {
    std::fprintf(stderr, "error %s\n", info.status().ToString().c_str());
    return 1;
  }
  std::printf("committed %llu transport %s ipc_bytes %llu\n",
              static_cast<unsigned long long>(info->version()), info->transport().c_str(),
              static_cast<unsigned long long>(info->ipc_bytes()));
  return 0;
}
