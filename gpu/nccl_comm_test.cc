// NCCL across all visible GPUs of this process (1 GPU included): non-blocking init with a deadline,
// bit-exact broadcasts, reuse of the communicators, and the timeout path.
#include "gpu/nccl_comm.h"

#include <cuda_runtime_api.h>
#include <stdlib.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "gpu/cuda_event.h"
#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"
#include "gpu/gpu_test_util.h"

namespace ckpt::gpu {
namespace {

// NVLink multicast must stay off on the shared GPU machines; NCCL reads this at its first init.
void KeepNvlsOff() { setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/1); }

std::vector<int> AllDevices() {
  const int count = testing::VisibleDeviceCount();
  REQUIRE(count >= 1);
  std::vector<int> devices;
  for (int i = 0; i < count; ++i) devices.push_back(i);
  return devices;
}

TEST_CASE("Non-blocking NCCL init over all local GPUs completes within its deadline") {
  KeepNvlsOff();
  const std::vector<int> devices = AllDevices();
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<NcclComm>> comms = NcclComm::CreateLocal(devices, absl::Seconds(120));
  INFO(comms.status().ToString());
  REQUIRE(comms.ok());
  WARN("NCCL " << NcclComm::LibraryVersion() << ": " << devices.size() << " rank(s) ready in "
               << absl::FormatDuration(absl::Now() - start));
  REQUIRE(comms->size() == devices.size());
  for (size_t i = 0; i < devices.size(); ++i) {
    const NcclComm& comm = (*comms)[i];
    CHECK_FALSE(comm.empty());
    CHECK(comm.rank() == static_cast<int>(i));
    CHECK(comm.nranks() == static_cast<int>(devices.size()));
    CHECK(comm.device() == devices[i]);
    CHECK(comm.CheckAsyncError().ok());
    int nccl_device = -1;
    REQUIRE(ncclCommCuDevice(comm.get(), &nccl_device) == ncclSuccess);
    CHECK(nccl_device == devices[i]);
  }
}

TEST_CASE("Broadcast is bit-exact on every GPU and the communicators are reused") {
  KeepNvlsOff();
  const std::vector<int> devices = AllDevices();
  const size_t n = devices.size();
  absl::StatusOr<std::vector<NcclComm>> comms = NcclComm::CreateLocal(devices, absl::Seconds(120));
  INFO(comms.status().ToString());
  REQUIRE(comms.ok());

  constexpr size_t kBytes = (256 << 20) + 12;
  std::vector<DeviceBuffer> buffers;
  std::vector<CudaStream> streams;
  std::vector<CudaEvent> starts, dones;
  for (int device : devices) {
    absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Create(device, kBytes);
    absl::StatusOr<CudaStream> s = CudaStream::Create(device);
    absl::StatusOr<CudaEvent> e0 = CudaEvent::Create(device, /*enable_timing=*/true);
    absl::StatusOr<CudaEvent> e1 = CudaEvent::Create(device, /*enable_timing=*/true);
    REQUIRE((b.ok() && s.ok() && e0.ok() && e1.ok()));
    buffers.push_back(std::move(*b));
    streams.push_back(std::move(*s));
    starts.push_back(std::move(*e0));
    dones.push_back(std::move(*e1));
  }
  std::vector<unsigned char> host(kBytes);

  // Two rounds on the same communicators, with different roots (with one GPU: root 0 twice).
  for (int round = 0; round < 2; ++round) {
    const int root = round % static_cast<int>(n);
    const uint64_t seed = 500 + round;
    INFO("round " << round << ", root " << root);
    testing::FillPattern(host.data(), kBytes, seed);
    REQUIRE(
        testing::CopyAndWait(buffers[root].data(), host.data(), kBytes, streams[root], dones[root])
            .ok());
    std::vector<NcclBroadcastBuffers> io(n);
    for (size_t i = 0; i < n; ++i) {
      if (static_cast<int>(i) != root) {
        REQUIRE(cudaMemsetAsync(buffers[i].data(), 0, kBytes, streams[i].get()) == cudaSuccess);
      }
      REQUIRE(starts[i].Record(streams[i]).ok());
      io[i] = {buffers[i].data(), buffers[i].data(), streams[i].get()};  // in place
    }
    absl::Status enqueued =
        NcclComm::GroupBroadcast(absl::MakeSpan(*comms), io, kBytes, root, absl::Seconds(30));
    INFO(enqueued.ToString());
    REQUIRE(enqueued.ok());
    for (size_t i = 0; i < n; ++i) REQUIRE(dones[i].Record(streams[i]).ok());
    for (size_t i = 0; i < n; ++i) {
      absl::Status waited = dones[i].WaitWithDeadline(absl::Seconds(30));
      INFO("rank " << i << ": " << waited.ToString());
      REQUIRE(waited.ok());
      REQUIRE((*comms)[i].CheckAsyncError().ok());
    }
    absl::Duration slowest = absl::ZeroDuration();
    for (size_t i = 0; i < n; ++i) {
      absl::StatusOr<absl::Duration> t = CudaEvent::Elapsed(starts[i], dones[i]);
      REQUIRE(t.ok());
      slowest = std::max(slowest, *t);
    }
    WARN("round " << round << ": broadcast of " << kBytes << " bytes from rank " << root << " to "
                  << n << " GPU(s): " << absl::FormatDuration(slowest) << " ("
                  << kBytes / absl::ToDoubleSeconds(slowest) / 1e9 << " GB/s)");
    for (size_t i = 0; i < n; ++i) {
      INFO("device " << devices[i]);
      std::fill(host.begin(), host.end(), 0);
      REQUIRE(
          testing::CopyAndWait(host.data(), buffers[i].data(), kBytes, streams[i], dones[i]).ok());
      CHECK(testing::FirstMismatch(host.data(), kBytes, seed) == -1);
    }
  }
}

TEST_CASE("GroupBroadcastInPlace: every rank uploads one segment, all ranks end with the whole") {
  KeepNvlsOff();
  const std::vector<int> devices = AllDevices();
  const size_t n = devices.size();
  absl::StatusOr<std::vector<NcclComm>> comms = NcclComm::CreateLocal(devices, absl::Seconds(120));
  REQUIRE(comms.ok());
  // The update's shape: a bucket cut into one segment per GPU (the last one shorter), each written
  // only on its uploader, then broadcast from there in one group.
  constexpr size_t kSegment = (8 << 20) + 256;
  const size_t total = n * kSegment - 1000;
  std::vector<NcclComm::InPlaceOp> ops;
  for (size_t g = 0; g < n; ++g) {
    ops.push_back({static_cast<int>(g), g * kSegment, std::min(kSegment, total - g * kSegment)});
  }
  std::vector<unsigned char> whole(total);
  testing::FillPattern(whole.data(), total, 77);
  std::vector<DeviceBuffer> buffers;
  std::vector<CudaStream> streams;
  std::vector<CudaEvent> dones;
  std::vector<void*> bases;
  std::vector<cudaStream_t> raw_streams;
  for (size_t g = 0; g < n; ++g) {
    absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Create(devices[g], total);
    absl::StatusOr<CudaStream> st = CudaStream::Create(devices[g]);
    absl::StatusOr<CudaEvent> e = CudaEvent::Create(devices[g]);
    REQUIRE((b.ok() && st.ok() && e.ok()));
    buffers.push_back(std::move(*b));
    streams.push_back(std::move(*st));
    dones.push_back(std::move(*e));
    REQUIRE(cudaSetDevice(devices[g]) == cudaSuccess);
    REQUIRE(cudaMemset(buffers[g].data(), 0, total) == cudaSuccess);
    // Only this rank's own segment holds data before the broadcast.
    REQUIRE(testing::CopyAndWait(static_cast<unsigned char*>(buffers[g].data()) + ops[g].offset,
                                 whole.data() + ops[g].offset, ops[g].bytes, streams[g], dones[g])
                .ok());
    bases.push_back(buffers[g].data());
    raw_streams.push_back(streams[g].get());
  }
  absl::Status enqueued = NcclComm::GroupBroadcastInPlace(absl::MakeSpan(*comms), bases,
                                                          raw_streams, ops, absl::Seconds(30));
  INFO(enqueued.ToString());
  REQUIRE(enqueued.ok());
  std::vector<unsigned char> got(total);
  for (size_t g = 0; g < n; ++g) {
    INFO("device " << devices[g]);
    REQUIRE(dones[g].Record(streams[g]).ok());
    REQUIRE(dones[g].WaitWithDeadline(absl::Seconds(30)).ok());
    REQUIRE(testing::CopyAndWait(got.data(), buffers[g].data(), total, streams[g], dones[g]).ok());
    CHECK(testing::FirstMismatch(got.data(), total, 77) == -1);
  }
  // A root out of range is refused before anything is enqueued; the communicators stay usable.
  std::vector<NcclComm::InPlaceOp> bad = {{static_cast<int>(n), 0, 16}};
  CHECK(NcclComm::GroupBroadcastInPlace(absl::MakeSpan(*comms), bases, raw_streams, bad,
                                        absl::Seconds(1))
            .code() == absl::StatusCode::kInvalidArgument);
  for (const NcclComm& comm : *comms) CHECK_FALSE(comm.empty());
}

TEST_CASE("GroupBroadcast validates its arguments without aborting") {
  KeepNvlsOff();
  const std::vector<int> devices = AllDevices();
  absl::StatusOr<std::vector<NcclComm>> comms = NcclComm::CreateLocal(devices, absl::Seconds(120));
  REQUIRE(comms.ok());
  std::vector<NcclBroadcastBuffers> too_few(devices.size() - 1 + 0);
  if (devices.size() == 1) too_few.clear();
  CHECK(NcclComm::GroupBroadcast(absl::MakeSpan(*comms), too_few, 16, 0, absl::Seconds(1)).code() ==
        absl::StatusCode::kInvalidArgument);
  std::vector<NcclBroadcastBuffers> io(devices.size());
  CHECK(NcclComm::GroupBroadcast(absl::MakeSpan(*comms), io, 16, static_cast<int>(devices.size()),
                                 absl::Seconds(1))
            .code() == absl::StatusCode::kInvalidArgument);
  for (const NcclComm& comm : *comms) CHECK_FALSE(comm.empty());
}

TEST_CASE("A rank whose peers never join times out with DEADLINE_EXCEEDED and is aborted") {
  KeepNvlsOff();
  absl::StatusOr<ncclUniqueId> id = NcclComm::NewUniqueId();
  REQUIRE(id.ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<NcclComm> lonely =
      NcclComm::CreateRank(0, /*nranks=*/2, /*rank=*/0, *id, absl::Seconds(3));
  const absl::Duration took = absl::Now() - start;
  INFO(lonely.status().ToString() << " after " << absl::FormatDuration(took));
  REQUIRE_FALSE(lonely.ok());
  CHECK(lonely.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(took >= absl::Seconds(3));
  CHECK(took < absl::Seconds(30));
  WARN("lonely rank gave up (and aborted) after " << absl::FormatDuration(took));
  // NCCL is still usable afterwards.
  absl::StatusOr<std::vector<NcclComm>> comms =
      NcclComm::CreateLocal(AllDevices(), absl::Seconds(120));
  CHECK(comms.ok());
}

}  // namespace
}  // namespace ckpt::gpu
