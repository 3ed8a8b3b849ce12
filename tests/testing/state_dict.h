// Test data and waiting helpers shared by the integration tests: a state dict of random tensors to
// push, hex of bytes, file contents, and polling with a deadline.
#ifndef CKPT_TESTS_TESTING_STATE_DICT_H_
#define CKPT_TESTS_TESTING_STATE_DICT_H_

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/string_view.h"
#include "client/trainer_client.h"
#include "common/dtype.h"

namespace ckpt::testing {

// Tensors with random contents; `storage` owns the bytes the views point to.
struct StateDict {
  std::vector<std::string> storage;
  std::vector<client::TensorView> views;
  uint64_t total = 0;

  // `seed` 0: the tensor's position + 1.
  void Add(const std::string& name, DType dtype, std::vector<int64_t> shape, uint64_t seed = 0);
};

// Lowercase hex of `bytes`.
std::string HexBytes(absl::string_view bytes);

// The whole file, or "" when it cannot be read.
std::string ReadFile(const std::string& path);

// Polls `done` every 20 ms until it holds or `timeout` passes; returns its last value.
template <typename F>
bool WaitUntil(F done, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

// The report the test workers (tests/integration/worker_client, tests/python/worker_process.py)
// write after each version: JSON {"version", "tensors": [{"name", "dtype", "shape", "hex"}]}; any
// JSON file with a "version" will do (e.g. a --pausable worker_client's OUT.resume.json).
// Waits until `path` holds the report of `version`; nullopt when it did not within `timeout`.
std::optional<nlohmann::json> WaitForWorkerReport(const std::string& path, uint64_t version,
                                                  std::chrono::milliseconds timeout);

// "" when `report` holds exactly the tensors of `m` (or those named in `only`), each with its
// dtype, shape and bytes; otherwise one line per difference.
std::string CompareWorkerReport(const nlohmann::json& report, const StateDict& m,
                                const std::vector<std::string>& only = {});

// For an update error naming "checksum mismatch in tensor 'NAME'" in `message`: NAME and the text
// the worker reports when it read `fill` bytes in place of NAME's, "expected xxh3 E, got G", E from
// NAME's bytes in `m`. nullopt when `message` names no mismatching tensor of `m`.
struct Mismatch {
  std::string tensor;
  std::string hashes;
};
std::optional<Mismatch> ExpectedMismatch(const std::string& message, const StateDict& m, char fill);

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_STATE_DICT_H_
