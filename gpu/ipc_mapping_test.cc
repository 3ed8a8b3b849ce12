// CUDA IPC round trip through a second process.
//
// The test binary re-executes itself (/proc/self/exe, posix_spawn: no fork after CUDA init) with
// `--ipc-child HEX BYTES DEVICE SEED_IN SEED_OUT`: the child opens the parent's allocation from the
// handle, checks the parent's pattern, writes its own, and exits 0. The parent waits for the child
// with a deadline and checks the child's pattern in its own buffer.
#include "gpu/ipc_mapping.h"

#include <cuda_runtime_api.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gpu/cuda_event.h"
#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"
#include "gpu/gpu_test_util.h"
#include "gpu/ipc_handle.h"

extern char** environ;

namespace ckpt::gpu {
namespace {

constexpr char kChildFlag[] = "--ipc-child";

// Exit codes of the child, so the parent can say what went wrong.
enum ChildExit { kOk = 0, kBadArgs = 2, kOpenFailed = 3, kCopyFailed = 4, kMismatch = 5 };

int RunChild(int argc, char** argv) {
  uint64_t bytes = 0, seed_in = 0, seed_out = 0;
  int device = 0;
  if (argc != 7 || !absl::SimpleAtoi(argv[3], &bytes) || !absl::SimpleAtoi(argv[4], &device) ||
      !absl::SimpleAtoi(argv[5], &seed_in) || !absl::SimpleAtoi(argv[6], &seed_out)) {
    std::fprintf(stderr, "ipc child: bad arguments\n");
    return kBadArgs;
  }
  absl::StatusOr<IpcHandle> handle = IpcHandle::FromHex(argv[2]);
  if (!handle.ok()) {
    std::fprintf(stderr, "ipc child: %s\n", handle.status().ToString().c_str());
    return kBadArgs;
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<IpcMapping> mapping = IpcMapping::Open(device, *handle, bytes);
  if (!mapping.ok()) {
    std::fprintf(stderr, "ipc child: %s\n", mapping.status().ToString().c_str());
    return kOpenFailed;
  }
  std::fprintf(stderr, "ipc child: opened %llu bytes on device %d in %s\n",
               static_cast<unsigned long long>(bytes), device,
               absl::FormatDuration(absl::Now() - start).c_str());
  absl::StatusOr<CudaStream> stream = CudaStream::Create(device);
  absl::StatusOr<CudaEvent> done = CudaEvent::Create(device);
  if (!stream.ok() || !done.ok()) return kCopyFailed;
  std::vector<unsigned char> host(bytes);
  absl::Status copied = testing::CopyAndWait(host.data(), mapping->data(), bytes, *stream, *done);
  if (!copied.ok()) {
    std::fprintf(stderr, "ipc child: %s\n", copied.ToString().c_str());
    return kCopyFailed;
  }
  const int64_t mismatch = testing::FirstMismatch(host.data(), bytes, seed_in);
  if (mismatch != -1) {
    std::fprintf(stderr, "ipc child: parent's pattern differs at byte %lld\n",
                 static_cast<long long>(mismatch));
    return kMismatch;
  }
  testing::FillPattern(host.data(), bytes, seed_out);
  copied = testing::CopyAndWait(mapping->data(), host.data(), bytes, *stream, *done);
  if (!copied.ok()) {
    std::fprintf(stderr, "ipc child: %s\n", copied.ToString().c_str());
    return kCopyFailed;
  }
  return kOk;  // the mapping closes on the way out
}

// Spawns this binary as the child and waits for it until `timeout`; returns its exit code, or -1 on
// timeout (the child is killed) or abnormal termination.
int SpawnChildAndWait(const std::vector<std::string>& args, absl::Duration timeout) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  REQUIRE(n > 0);
  self[n] = '\0';
  std::vector<std::string> all = {self};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  // posix_spawn execs at once (vfork-like): nothing of the parent's CUDA state runs in the child.
  REQUIRE(posix_spawn(&pid, self, nullptr, nullptr, argv.data(), environ) == 0);
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    REQUIRE(r >= 0);
    if (r == pid) break;
    if (absl::Now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL_CHECK("ipc child did not finish within " << absl::FormatDuration(timeout));
      return -1;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (!WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST_CASE("IPC round trip through a second process") {
  const int count = testing::VisibleDeviceCount();
  REQUIRE(count >= 1);
  // Export on device 0; the child opens on the last device (the same one with a single GPU, a peer
  // over NVLink otherwise: cudaIpcMemLazyEnablePeerAccess).
  const int child_device = count - 1;
  constexpr size_t kBytes = (64 << 20) + 5;
  constexpr uint64_t kParentSeed = 77, kChildSeed = 78;

  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Create(0, kBytes);
  absl::StatusOr<CudaStream> stream = CudaStream::Create(0);
  absl::StatusOr<CudaEvent> done = CudaEvent::Create(0);
  REQUIRE((buffer.ok() && stream.ok() && done.ok()));
  std::vector<unsigned char> host(kBytes);
  testing::FillPattern(host.data(), kBytes, kParentSeed);
  REQUIRE(testing::CopyAndWait(buffer->data(), host.data(), kBytes, *stream, *done).ok());

  absl::StatusOr<IpcHandle> handle = IpcHandle::Export(*buffer);
  REQUIRE(handle.ok());
  absl::StatusOr<IpcHandle> again = IpcHandle::Export(*buffer);
  REQUIRE(again.ok());
  CHECK(*again == *handle);  // stable per allocation

  const absl::Time start = absl::Now();
  const int exit_code = SpawnChildAndWait(
      {kChildFlag, handle->ToHex(), absl::StrCat(kBytes), absl::StrCat(child_device),
       absl::StrCat(kParentSeed), absl::StrCat(kChildSeed)},
      absl::Seconds(60));
  WARN("child (device " << child_device
                        << ") round trip: " << absl::FormatDuration(absl::Now() - start));
  REQUIRE(exit_code == kOk);

  std::fill(host.begin(), host.end(), 0);
  REQUIRE(testing::CopyAndWait(host.data(), buffer->data(), kBytes, *stream, *done).ok());
  CHECK(testing::FirstMismatch(host.data(), kBytes, kChildSeed) == -1);
}

TEST_CASE("Opening a garbage IPC handle fails with a status, not a crash") {
  for (const unsigned char fill : {0x00, 0xab}) {
    INFO("fill " << static_cast<int>(fill));
    absl::StatusOr<IpcHandle> garbage =
        IpcHandle::FromBytes(std::string(IpcHandle::kSize, static_cast<char>(fill)));
    REQUIRE(garbage.ok());
    absl::StatusOr<IpcMapping> mapping = IpcMapping::Open(0, *garbage, 4096);
    INFO(mapping.status().ToString());
    CHECK_FALSE(mapping.ok());
    CHECK(cudaGetLastError() == cudaSuccess);
  }
  CHECK(DeviceBuffer::Create(0, 1 << 20).ok());  // CUDA still usable
}

}  // namespace
}  // namespace ckpt::gpu

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], ckpt::gpu::kChildFlag) == 0) {
    return ckpt::gpu::RunChild(argc, argv);
  }
  return Catch::Session().run(argc, argv);
}
