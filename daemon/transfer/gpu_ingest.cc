#include "daemon/transfer/gpu_ingest.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/checked_math.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "common/xxh3.h"
#include "gpu/cuda_event.h"
#include "gpu/cuda_status.h"
#include "gpu/cuda_stream.h"
#include "gpu/ipc_mapping.h"
#include "gpu/scoped_device.h"

namespace ckpt::daemon {
namespace {

using GetAddressRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);

// cuMemGetAddressRange through the runtime's entry-point query (the daemon links no libcuda).
absl::StatusOr<GetAddressRange> AddressRangeFunction() {
  static const absl::StatusOr<GetAddressRange> function = []() -> absl::StatusOr<GetAddressRange> {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    CUDA_RETURN_IF_ERROR(cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000,
                                                          cudaEnableDefault, &found));
    if (fn == nullptr || found != cudaDriverEntryPointSuccess) {
      return absl::FailedPreconditionError("the CUDA driver has no cuMemGetAddressRange");
    }
    return reinterpret_cast<GetAddressRange>(fn);
  }();
  return function;
}

// One opened allocation: the mapping and its size as this process sees it.
struct Opened {
  gpu::IpcMapping mapping;
  uint64_t size = 0;
};

// INVALID_ARGUMENT when the handle cannot be opened (it names nothing this process may map);
// the daemon's own failures (its device, the driver) keep their codes.
absl::StatusOr<Opened> OpenAllocation(int device, const gpu::IpcHandle& handle) {
  ASSIGN_OR_RETURN(GetAddressRange range, AddressRangeFunction());
  ASSIGN_OR_RETURN(gpu::ScopedDevice scope, gpu::ScopedDevice::Create(device));
  absl::StatusOr<gpu::IpcMapping> opened = gpu::IpcMapping::Open(device, handle, 0);
  if (!opened.ok()) {
    if (opened.status().code() == absl::StatusCode::kResourceExhausted) return opened.status();
    return absl::InvalidArgumentError(
        absl::StrCat("its CUDA IPC handle cannot be opened: ", opened.status().message()));
  }
  gpu::IpcMapping mapping = *std::move(opened);
  CUdeviceptr base = 0;
  size_t size = 0;
  const CUresult r = range(&base, &size, reinterpret_cast<CUdeviceptr>(mapping.data()));
  if (r != CUDA_SUCCESS) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuMemGetAddressRange of the mapped allocation failed (CUresult ", r, ")"));
  }
  // The mapping starts at the allocation's base; anything else would make the offsets wrong.
  if (base != reinterpret_cast<CUdeviceptr>(mapping.data())) {
    return absl::FailedPreconditionError(
        "the mapped allocation does not start where cudaIpcOpenMemHandle put it");
  }
  return Opened{std::move(mapping), static_cast<uint64_t>(size)};
}

// Polls `stream` until its work is done (true; also when that work failed) or `deadline` passes
// (false: a copy may still be running).
bool Drain(const gpu::CudaStream& stream, absl::Time deadline) {
  absl::Duration pause = absl::Microseconds(10);
  while (true) {
    absl::StatusOr<bool> done = stream.Query();
    if (!done.ok() || *done) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(1));
  }
}

// A lane's stream and two events on one device: piece p is copied on the stream and waited for
// through events[p % 2].
struct LaneDevice {
  gpu::CudaStream stream;
  gpu::CudaEvent events[2];
};

}  // namespace

absl::StatusOr<std::unique_ptr<GpuIngest>> GpuIngest::Create(const std::vector<gpu::GpuInfo>& gpus,
                                                             Options options) {
  if (gpus.empty()) return absl::FailedPreconditionError("GPU ingest without GPUs");
  options.lanes = std::max(1, options.lanes);
  options.piece_bytes = std::max<uint64_t>(options.piece_bytes, 4096);
  RETURN_IF_ERROR(AddressRangeFunction().status());
  return std::unique_ptr<GpuIngest>(new GpuIngest(gpus, options));
}

bool GpuIngest::ContextLost(const std::vector<Source>& sources) const {
  std::set<int> devices;
  for (const Source& s : sources) devices.insert(s.device);
  for (int device : devices) {
    absl::StatusOr<gpu::ScopedDevice> scope = gpu::ScopedDevice::Create(device);
    // A sticky error comes back from any call in the lost context, this cheap one included.
    const cudaError_t e = cudaStreamQuery(nullptr);
    if (gpu::IsStickyError(e)) return true;
    (void)cudaGetLastError();
  }
  return false;
}

int GpuIngest::DeviceOf(const std::string& uuid) const {
  for (const gpu::GpuInfo& g : gpus_) {
    if (g.uuid == uuid) return g.index;
  }
  return -1;
}

GpuIngest::Result GpuIngest::Copy(const std::vector<Source>& sources,
                                  const std::function<bool()>& cancelled, const Feed& feed) const {
  Result result;
  // Every distinct allocation is opened once, and every range checked, before any copy.
  std::map<std::pair<int, std::string>, Opened> opened;
  std::vector<const uint8_t*> from(sources.size(), nullptr);
  for (size_t i = 0; i < sources.size(); ++i) {
    const Source& s = sources[i];
    const auto key = std::make_pair(s.device, s.handle.ToBytes());
    auto it = opened.find(key);
    if (it == opened.end()) {
      absl::StatusOr<Opened> o = OpenAllocation(s.device, s.handle);
      if (!o.ok()) {
        result.status = Annotate(
            o.status(), absl::StrCat("tensor '", s.name, "' on GPU ", s.device, " of the daemon"));
        return result;
      }
      it = opened.emplace(key, *std::move(o)).first;
    }
    CheckedSum end;
    if (s.bytes == 0 || !end.Add(s.offset) || !end.Add(s.bytes) || end.total() > it->second.size) {
      result.status = absl::OutOfRangeError(
          absl::StrCat("tensor '", s.name, "': ", s.bytes, " bytes at offset ", s.offset,
                       " do not lie inside its allocation of ", it->second.size, " bytes"));
      return result;
    }
    from[i] = static_cast<const uint8_t*>(it->second.mapping.data()) + s.offset;
  }

  // The order lanes take tensors in: the GPUs in turn, so that all of them copy at once, and on
  // each GPU the largest first (one lane hashes a tensor at about one core's rate: a large one
  // taken last would finish long after the rest); for an update that follows, only the large ones
  // first, then the others as given.
  std::map<int, std::vector<size_t>> by_device;
  for (size_t i = 0; i < sources.size(); ++i) by_device[sources[i].device].push_back(i);
  for (auto& [device, list] : by_device) {
    std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
      const uint64_t x = sources[a].bytes, y = sources[b].bytes;
      return feed.in_order ? TakenEarlier(x, y) : x > y;
    });
  }
  std::vector<size_t> order;
  for (size_t round = 0; order.size() < sources.size(); ++round) {
    for (auto& [device, list] : by_device) {
      if (round < list.size()) order.push_back(list[round]);
    }
  }

  result.xxh3.assign(sources.size(), 0);
  std::atomic<size_t> next{0};
  std::atomic<bool> pending_left{false};
  FirstFailure failure;
  auto fail = [&](absl::Status st) { failure.Record(std::move(st)); };
  const uint64_t piece = options_.piece_bytes;
  const absl::Duration timeout = options_.gpu_timeout;
  auto lane = [&] {
    std::map<int, LaneDevice> devices;
    Xxh3State state(XXH3_createState());
    if (state == nullptr) {
      fail(absl::ResourceExhaustedError("no memory for a hash state"));
      return;
    }
    for (size_t j = next.fetch_add(1); j < order.size() && !failure.stopped();
         j = next.fetch_add(1)) {
      const size_t i = order[j];
      const Source& s = sources[i];
      absl::StatusOr<gpu::ScopedDevice> scope = gpu::ScopedDevice::Create(s.device);
      if (!scope.ok()) {
        fail(scope.status());
        return;
      }
      auto it = devices.find(s.device);
      if (it == devices.end()) {
        LaneDevice d;
        absl::StatusOr<gpu::CudaStream> stream = gpu::CudaStream::Create(s.device);
        absl::Status made = stream.status();
        if (made.ok()) d.stream = *std::move(stream);
        for (gpu::CudaEvent& e : d.events) {
          if (!made.ok()) break;
          absl::StatusOr<gpu::CudaEvent> event = gpu::CudaEvent::Create(s.device);
          made = event.status();
          if (made.ok()) e = *std::move(event);
        }
        if (!made.ok()) {
          fail(Annotate(made, absl::StrCat("a copy stream on GPU ", s.device)));
          return;
        }
        it = devices.emplace(s.device, std::move(d)).first;
      }
      LaneDevice& d = it->second;
      const uint64_t pieces = (s.bytes + piece - 1) / piece;
      auto issue = [&](uint64_t p) -> absl::Status {
        const uint64_t offset = p * piece;
        const uint64_t n = std::min(piece, s.bytes - offset);
        CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.dst + offset, from[i] + offset,
                                             static_cast<size_t>(n), cudaMemcpyDeviceToHost,
                                             d.stream.get()));
        return d.events[p % 2].Record(d.stream);
      };
      (void)XXH3_64bits_reset(state.get());
      absl::Status st = issue(0);
      // Pieces issued but not yet waited for: [waited, issued).
      uint64_t issued = st.ok() ? 1 : 0;
      uint64_t waited = 0;
      while (st.ok() && waited < pieces) {
        if (failure.stopped()) break;
        if (cancelled && cancelled()) {
          st = absl::CancelledError(
              "the push was cancelled during the GPU copy (the trainer went away, or its stream "
              "stayed idle for push_idle_timeout)");
          break;
        }
        if (issued < pieces) {
          st = issue(issued);
          if (!st.ok()) break;
          ++issued;
        }
        st = d.events[waited % 2].WaitWithDeadline(timeout);
        if (!st.ok()) break;
        const uint64_t offset = waited * piece;
        XXH3_64bits_update(state.get(), s.dst + offset,
                           static_cast<size_t>(std::min(piece, s.bytes - offset)));
        ++waited;
      }
      if (waited == pieces && st.ok()) {
        result.xxh3[i] = XXH3_64bits_digest(state.get());
        if (feed.tensor_done) feed.tensor_done(i, result.xxh3[i]);
        continue;
      }
      // Stopping early: the copies still in flight must end before the mappings close and the
      // destination may be reused. The stream, not only the events: a copy may be queued whose
      // event could not be recorded.
      if (!Drain(d.stream, absl::Now() + timeout)) pending_left.store(true);
      if (!st.ok()) {
        fail(Annotate(st, absl::StrCat("copying tensor '", s.name, "' (", FormatBytes(s.bytes),
                                       ") from GPU ", s.device)));
      }
      return;
    }
  };
  RunOnThreads(std::max(1, std::min<int>(options_.lanes, static_cast<int>(order.size()))), lane);
  result.quiesced = !pending_left.load();
  if (!result.quiesced) {
    // A copy the GPU never finished may still read through these mappings: they stay open.
    (void)new std::map<std::pair<int, std::string>, Opened>(std::move(opened));
  }
  result.status = failure.status();
  if (!result.status.ok()) result.xxh3.clear();
  return result;
}

}  // namespace ckpt::daemon
