#include "tests/testing/state_dict.h"

#include <xxhash.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tests/testing/safetensors_writer.h"

namespace ckpt::testing {

void StateDict::Add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                    uint64_t seed) {
  const uint64_t bytes = *TensorByteSize(dtype, shape);
  storage.push_back(RandomBytes(bytes, seed != 0 ? seed : storage.size() + 1));
  views.push_back({name, dtype, std::move(shape), nullptr, bytes});
  for (size_t i = 0; i < views.size(); ++i) views[i].data = storage[i].data();
  total += bytes;
}

std::string HexBytes(absl::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes.size());
  for (unsigned char c : bytes) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::optional<nlohmann::json> WaitForWorkerReport(const std::string& path, uint64_t version,
                                                  std::chrono::milliseconds timeout) {
  nlohmann::json report;
  const bool got = WaitUntil(
      [&] {
        report = nlohmann::json::parse(ReadFile(path), nullptr, false);
        return !report.is_discarded() && report["version"] == version;
      },
      timeout);
  if (!got) return std::nullopt;
  return report;
}

std::string CompareWorkerReport(const nlohmann::json& report, const StateDict& m,
                                const std::vector<std::string>& only) {
  std::map<std::string, nlohmann::json> got;
  for (const auto& t : report["tensors"]) got[t["name"].get<std::string>()] = t;
  std::string diff;
  size_t expected = 0;
  for (size_t i = 0; i < m.views.size(); ++i) {
    const client::TensorView& v = m.views[i];
    if (!only.empty() && std::find(only.begin(), only.end(), v.name) == only.end()) continue;
    ++expected;
    auto it = got.find(v.name);
    if (it == got.end()) {
      absl::StrAppend(&diff, v.name, ": missing\n");
      continue;
    }
    const nlohmann::json& t = it->second;
    if (t["dtype"] != static_cast<int>(v.dtype)) {
      absl::StrAppend(&diff, v.name, ": dtype ", t["dtype"].dump(), ", pushed ",
                      static_cast<int>(v.dtype), "\n");
    }
    if (t["shape"].get<std::vector<int64_t>>() != v.shape) {
      absl::StrAppend(&diff, v.name, ": shape ", t["shape"].dump(), " differs\n");
    }
    if (t["hex"] != HexBytes(m.storage[i])) absl::StrAppend(&diff, v.name, ": bytes differ\n");
  }
  if (got.size() != expected) {
    absl::StrAppend(&diff, got.size(), " tensors received, ", expected, " expected\n");
  }
  return diff;
}

std::optional<Mismatch> ExpectedMismatch(const std::string& message, const StateDict& m,
                                         char fill) {
  const std::string head = "failed to load bucket 0: checksum mismatch in tensor '";
  const size_t at = message.find(head);
  if (at == std::string::npos) return std::nullopt;
  const size_t begin = at + head.size();
  const std::string name = message.substr(begin, message.find('\'', begin) - begin);
  for (const client::TensorView& v : m.views) {
    if (v.name != name) continue;
    const std::string filled(v.bytes, fill);
    return Mismatch{name,
                    absl::StrFormat("expected xxh3 %016x, got %016x", XXH3_64bits(v.data, v.bytes),
                                    XXH3_64bits(filled.data(), filled.size()))};
  }
  return std::nullopt;
}

}  // namespace ckpt::testing
