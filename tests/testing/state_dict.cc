#include "tests/testing/state_dict.h"

#include <fstream>
#include <sstream>

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

std::string HexBytes(const std::string& bytes) {
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

}  // namespace ckpt::testing
