// Serialization of IPC handles: needs no GPU.
#include "gpu/ipc_handle.h"

#include <catch2/catch.hpp>
#include <string>

namespace ckpt::gpu {
namespace {

IpcHandle Sample() {
  std::string bytes(IpcHandle::kSize, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 37 + 1);
  return *IpcHandle::FromBytes(bytes);
}

TEST_CASE("IpcHandle round-trips through bytes and hex") {
  const IpcHandle h = Sample();
  const std::string bytes = h.ToBytes();
  REQUIRE(bytes.size() == 64);
  const std::string hex = h.ToHex();
  REQUIRE(hex.size() == 128);
  CHECK(hex.substr(0, 6) == "01264b");
  CHECK(*IpcHandle::FromBytes(bytes) == h);
  CHECK(*IpcHandle::FromHex(hex) == h);
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(toupper(c));
  CHECK(*IpcHandle::FromHex(upper) == h);
  CHECK(IpcHandle::FromCuda(h.cuda()) == h);
  CHECK(IpcHandle() != h);
  CHECK(IpcHandle().ToHex() == std::string(128, '0'));
}

TEST_CASE("IpcHandle rejects malformed input") {
  CHECK(IpcHandle::FromBytes("").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(IpcHandle::FromBytes(std::string(63, 'x')).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(IpcHandle::FromBytes(std::string(65, 'x')).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(IpcHandle::FromHex(std::string(127, '0')).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(IpcHandle::FromHex(std::string(128, 'g')).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("IpcHandle::Export refuses empty buffers without calling CUDA") {
  CHECK(IpcHandle::Export(DeviceBuffer()).status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(IpcHandle::Export(0, nullptr).status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ckpt::gpu
