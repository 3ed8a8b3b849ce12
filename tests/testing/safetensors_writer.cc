#include "tests/testing/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/scoped_fd.h"

namespace ckpt::testing {
namespace {

absl::Status WriteAll(int fd, const std::string& path, absl::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::FailedPreconditionError(
          absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

std::string LittleEndian64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

absl::Status WriteParts(const std::string& path, const std::vector<absl::string_view>& parts) {
  ScopedFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  for (absl::string_view part : parts) {
    if (auto s = WriteAll(fd.get(), path, part); !s.ok()) return s;
  }
  if (::close(fd.release()) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata) {
  // ordered_json keeps the keys in the order given (the test wants that order on disk).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) m[key] = value;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    auto size = TensorByteSize(t.dtype, t.shape);
    if (!size.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': ", size.status().message()));
    }
    if (*size != t.bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': ", t.bytes.size(),
                                                     " bytes given, its dtype and shape need ",
                                                     *size));
    }
    header[t.name] = {{"dtype", DTypeSafetensorsName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + *size}}};
    offset += *size;
  }
  std::string text;
  try {
    text = header.dump();  // throws on names that are not UTF-8
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write ", path, ": ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string length = LittleEndian64(text.size());
  std::vector<absl::string_view> parts = {length, text};
  for (const TensorToWrite& t : tensors) parts.push_back(t.bytes);
  return WriteParts(path, parts);
}

absl::Status WriteRawSafetensors(const std::string& path, absl::string_view header,
                                 absl::string_view data, int64_t header_length) {
  std::string length =
      LittleEndian64(header_length < 0 ? header.size() : static_cast<uint64_t>(header_length));
  return WriteParts(path, {length, header, data});
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::string out(n, '\0');
  uint64_t state = seed;
  size_t i = 0;
  for (; i < n; i += 8) {
    // splitmix64
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(&out[i], &z, std::min<size_t>(8, n - i));
  }
  return out;
}

}  // namespace ckpt::testing
