// Test-only safetensors writer, for tests and benchmarks that need files to load: well-formed files
// (WriteSafetensors) and files with any header at all (WriteRawSafetensors), plus reproducible
// random tensor bytes.
#ifndef CKPT_TESTS_TESTING_SAFETENSORS_WRITER_H_
#define CKPT_TESTS_TESTING_SAFETENSORS_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace ckpt::testing {

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kUnspecified;
  std::vector<int64_t> shape;
  std::string bytes;  // exactly product(shape) * DTypeSize(dtype) bytes
};

// Writes a safetensors file as the safetensors library does: header keys "__metadata__" (when
// `metadata` is not empty) then the tensors in the given order, their data packed back to back in
// that order, the header padded with spaces to a multiple of 8 bytes. Replaces an existing file.
// INVALID_ARGUMENT when a tensor's bytes do not match its dtype and shape or a name is not UTF-8;
// FAILED_PRECONDITION naming the path when the file cannot be written.
absl::Status WriteSafetensors(
    const std::string& path, const std::vector<TensorToWrite>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata = {});

// Writes the 8-byte little-endian length of `header`, `header` as given (no padding) and `data`:
// for malformed files. `header_length` overrides the length written (to lie about it).
absl::Status WriteRawSafetensors(const std::string& path, absl::string_view header,
                                 absl::string_view data, int64_t header_length = -1);

// `n` pseudo-random bytes, the same for the same seed (splitmix64; fast enough for GiBs).
std::string RandomBytes(size_t n, uint64_t seed);

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_SAFETENSORS_WRITER_H_
