// The RAII owners' empty states and argument checks: runs without a GPU (CI) and with one.
#include <catch2/catch.hpp>
#include <utility>
#include <vector>

#include "gpu/cuda_event.h"
#include "gpu/cuda_stream.h"
#include "gpu/device_buffer.h"
#include "gpu/ipc_mapping.h"
#include "gpu/nccl_comm.h"
#include "gpu/pinned_region.h"
#include "gpu/scoped_device.h"

namespace ckpt::gpu {
namespace {

TEST_CASE("Default-constructed and moved-from owners are empty and destroy cleanly") {
  ScopedDevice device;
  CudaStream stream;
  CudaEvent event;
  DeviceBuffer buffer;
  PinnedRegion pinned;
  IpcMapping mapping;
  NcclComm comm;
  CHECK(device.empty());
  CHECK(stream.empty());
  CHECK(event.empty());
  CHECK(buffer.empty());
  CHECK(buffer.size() == 0);
  CHECK(pinned.empty());
  CHECK(mapping.empty());
  CHECK(comm.empty());

  DeviceBuffer moved = std::move(buffer);
  CHECK(moved.empty());
  NcclComm moved_comm = std::move(comm);
  CHECK(moved_comm.empty());
  moved_comm.Abort();  // no-op on empty
}

TEST_CASE("Operations on empty owners fail with FAILED_PRECONDITION") {
  CudaEvent event;
  CHECK(event.Query().status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(event.Record(nullptr).code() == absl::StatusCode::kFailedPrecondition);
  CHECK(event.WaitWithDeadline(absl::Milliseconds(1)).code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(CudaEvent::Elapsed(event, event).status().code() == absl::StatusCode::kFailedPrecondition);
  CudaStream stream;
  CHECK(stream.Query().status().code() == absl::StatusCode::kFailedPrecondition);
  NcclComm comm;
  CHECK(comm.CheckAsyncError().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("Factories reject bad arguments before calling CUDA") {
  CHECK(ScopedDevice::Create(-1).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(DeviceBuffer::Create(0, 0).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(PinnedRegion::Register(nullptr, 16).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(PinnedRegion::Create(0).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(NcclComm::CreateLocal({}, absl::Seconds(1)).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(NcclComm::CreateLocal({0, 0}, absl::Seconds(1)).status().code() ==
        absl::StatusCode::kInvalidArgument);
  ncclUniqueId id{};
  CHECK(NcclComm::CreateRank(0, 2, 2, id, absl::Seconds(1)).status().code() ==
        absl::StatusCode::kInvalidArgument);
  std::vector<NcclComm> none;
  CHECK(NcclComm::GroupBroadcast(absl::MakeSpan(none), {}, 16, 0, absl::Seconds(1)).code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Without a GPU, factories that need one fail with a status; with one they succeed") {
  int count = 0;
  const bool have_gpu = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  (void)cudaGetLastError();
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Create(0, 4096);
  absl::StatusOr<CudaStream> stream = CudaStream::Create(0);
  INFO(buffer.status().ToString() << " / " << stream.status().ToString());
  if (have_gpu) {
    CHECK(buffer.ok());
    CHECK(stream.ok());
  } else {
    CHECK(buffer.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(stream.status().code() == absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace ckpt::gpu
