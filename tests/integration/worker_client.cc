// A C++ inference-worker stand-in for tests and benchmarks: attaches to the daemon with
// client::Consumer, receives versions, and reports what it got.
//
//   worker_client --socket PATH [--out FILE] [--engine NAME] [--versions N] [--ready FILE]
//                 [--tensor NAME]... [--stall-after-buckets K] [--cuda-device D]
//                 [--copy-into-bytes B] [--verify-checksums] [--wait-for-file PATH]
//                 [--garble-own-slot-view] [--corrupt-first-bucket DONE_FILE]
//
// --out: after each version, FILE is replaced (temp + rename) by JSON {"version", "tensors":
// [{"name", "dtype", "shape", "hex"}]} (the bytes as received; from the GPU through a host copy).
// --copy-into-bytes: instead of dumping, copy every tensor into one preallocated buffer of B bytes
// (device memory with --cuda-device) before acking, as an engine's load_weights would; prints one
// JSON line per version with the copied bytes and the time from the first bucket to the ack.
// --stall-after-buckets K: stop acking after K buckets and sleep (ack-timeout tests).
// --verify-checksums: ConsumerOptions::verify_checksums (a mismatch ends the worker: exit 1 with
// the DATA_LOSS message).
// --wait-for-file PATH: after attaching, wait (up to 60 s) until PATH exists before receiving;
// events that arrive meanwhile stay queued.
// Corruption, for the tests of --verify-checksums (never in a real worker):
// --garble-own-slot-view (host backend): after attaching, replace this process's mappings of the
//   daemon's slots (memfd "ckpt-engine-store" in /proc/self/maps) with private pages of 0xA5. The
//   worker then reads bytes that differ from the committed version while the daemon's slots (sealed
//   read-only) stay intact.
// --corrupt-first-bucket DONE_FILE (cuda backend): in the first bucket, overwrite the first
//   non-empty tensor with 0xA5 through the read-write CUDA IPC mapping (what a rogue worker on the
//   same GPU could do), then create DONE_FILE, then ack.
// --pausable: a pause hook (the consistent switch): it records when it was called; with
//   --pause-error TEXT it refuses with TEXT; with --pause-sleep-ms MS it takes that long first. The
//   resume hook writes OUT.resume.json {"version", "loaded", "error", "paused_ns", "resumed_ns"}
//   (steady-clock nanoseconds, comparable between processes of one host), and each version's report
//   gains "first_bucket_ns" and "last_bucket_ns" (each taken before that bucket was acked).
// Exit 0 on success; 1 with one line on stderr otherwise.
#include <cuda_runtime_api.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/consumer.h"
#include "client/daemon_client.h"
#include "tests/testing/state_dict.h"

namespace {

int Die(const std::string& message) {
  std::fprintf(stderr, "worker_client: %s\n", message.c_str());
  return 1;
}

bool WriteAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.good()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

// See --garble-own-slot-view. Returns the number of mappings replaced, or -1 on failure.
int GarbleOwnSlotView() {
  std::ifstream maps("/proc/self/maps");
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("/memfd:ckpt-engine-store") == std::string::npos) continue;
    uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &begin, &end) != 2 || end <= begin) return -1;
    ranges.push_back({begin, end});
  }
  for (auto [begin, end] : ranges) {
    void* want = reinterpret_cast<void*>(begin);
    const size_t bytes = end - begin;
    void* p =
        ::mmap(want, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p != want) return -1;
    std::memset(p, 0xA5, bytes);
    if (::mprotect(p, bytes, PROT_READ) != 0) return -1;
  }
  return static_cast<int>(ranges.size());
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket, out_path, ready_path, engine = "cpp", wait_for, corrupt_done;
  bool verify = false, garble = false;
  int versions = 1, cuda_device = -1;
  int64_t stall_after = -1;
  uint64_t copy_bytes = 0;
  std::vector<std::string> names;
  bool pausable = false;
  std::string pause_error;
  int pause_sleep_ms = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "worker_client: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    bool ok = true;
    if (a == "--socket") {
      socket = value();
    } else if (a == "--out") {
      out_path = value();
    } else if (a == "--ready") {
      ready_path = value();
    } else if (a == "--engine") {
      engine = value();
    } else if (a == "--tensor") {
      names.push_back(value());
    } else if (a == "--versions") {
      ok = absl::SimpleAtoi(value(), &versions);
    } else if (a == "--cuda-device") {
      ok = absl::SimpleAtoi(value(), &cuda_device);
    } else if (a == "--stall-after-buckets") {
      ok = absl::SimpleAtoi(value(), &stall_after);
    } else if (a == "--copy-into-bytes") {
      ok = absl::SimpleAtoi(value(), &copy_bytes);
    } else if (a == "--verify-checksums") {
      verify = true;
    } else if (a == "--wait-for-file") {
      wait_for = value();
    } else if (a == "--garble-own-slot-view") {
      garble = true;
    } else if (a == "--corrupt-first-bucket") {
      corrupt_done = value();
    } else if (a == "--pausable") {
      pausable = true;
    } else if (a == "--pause-error") {
      pausable = true;
      pause_error = value();
    } else if (a == "--pause-sleep-ms") {
      pausable = true;
      ok = absl::SimpleAtoi(value(), &pause_sleep_ms);
    } else {
      ok = false;
    }
    if (!ok) return Die(absl::StrCat("bad argument ", a));
  }
  auto endpoint = ckpt::client::ResolveEndpoint(socket, "");
  if (!endpoint.ok()) return Die(std::string(endpoint.status().message()));
  ckpt::client::ConsumerOptions options;
  options.cuda_device = cuda_device;
  options.engine = engine;
  options.tensor_names = names;
  options.verify_checksums = verify;
  auto now_ns = [] {
    return static_cast<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    std::chrono::steady_clock::now().time_since_epoch())
                                    .count());
  };
  std::atomic<int64_t> paused_ns{0};
  std::atomic<uint64_t> resumed{0};     // the last version whose resume was written
  std::atomic<uint64_t> paused_for{0};  // the version of the last pause
  if (pausable) {
    options.on_pause = [&](uint64_t version) -> absl::Status {
      paused_ns = now_ns();
      paused_for = version;
      if (pause_sleep_ms > 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(pause_sleep_ms));
      if (!pause_error.empty()) return absl::FailedPreconditionError(pause_error);
      return absl::OkStatus();
    };
    options.on_resume = [&, out_path](uint64_t version, bool loaded, const std::string& error) {
      const nlohmann::json r = {{"version", version},
                                {"loaded", loaded},
                                {"error", error},
                                {"paused_ns", paused_ns.load()},
                                {"resumed_ns", now_ns()}};
      if (!out_path.empty()) WriteAtomically(out_path + ".resume.json", r.dump());
      resumed = version;
    };
  }
  auto consumer = ckpt::client::Consumer::Attach(*endpoint, options);
  if (!consumer.ok()) return Die(consumer.status().ToString());
  if (garble) {
    if ((*consumer)->backend() != "host")
      return Die("--garble-own-slot-view needs the host backend");
    if (GarbleOwnSlotView() != (*consumer)->slot_count()) {
      return Die("cannot replace this process's view of the slots");
    }
  }
  if (cuda_device >= 0 && cudaSetDevice(cuda_device) != cudaSuccess) {
    return Die("cudaSetDevice failed");
  }

  // The engine's own weights, preallocated once.
  void* own = nullptr;
  cudaStream_t stream = nullptr;
  if (copy_bytes > 0) {
    if (cuda_device >= 0) {
      if (cudaSetDevice(cuda_device) != cudaSuccess ||
          cudaMalloc(&own, copy_bytes) != cudaSuccess ||
          cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
        return Die("cannot allocate the worker's own GPU buffer");
      }
    } else {
      own = std::malloc(copy_bytes);
      if (own == nullptr) return Die("cannot allocate the worker's own buffer");
      std::memset(own, 0, copy_bytes);
    }
  }
  if (!ready_path.empty() && !WriteAtomically(ready_path, std::to_string(::getpid()))) {
    return Die("cannot write " + ready_path);
  }
  if (!wait_for.empty()) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!Exists(wait_for)) {
      if (std::chrono::steady_clock::now() > until) return Die("no " + wait_for + " within 60 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  int64_t buckets_seen = 0;
  for (int v = 0; v < versions; ++v) {
    nlohmann::json dump = nlohmann::json::array();
    uint64_t offset = 0;
    auto first = std::chrono::steady_clock::time_point();
    int64_t first_ns = 0, last_ns = 0;
    auto loaded = (*consumer)->ReceiveVersion(
        [&](const ckpt::client::ConsumerEvent& bucket) -> absl::Status {
          if (first == std::chrono::steady_clock::time_point()) {
            first = std::chrono::steady_clock::now();
            first_ns = now_ns();
          }
          last_ns = now_ns();  // before this bucket is acked
          if (stall_after >= 0 && buckets_seen >= stall_after) {
            std::this_thread::sleep_for(std::chrono::minutes(10));
          }
          if (!corrupt_done.empty() && buckets_seen == 0) {
            for (const auto& t : bucket.tensors) {
              if (t.bytes == 0) continue;
              if (cuda_device < 0) return absl::InternalError("--corrupt-first-bucket needs a GPU");
              if (cudaMemset(t.data, 0xA5, t.bytes) != cudaSuccess ||
                  cudaDeviceSynchronize() != cudaSuccess) {
                return absl::InternalError("cannot write into the slot");
              }
              break;
            }
            if (!WriteAtomically(corrupt_done, "corrupted")) {
              return absl::InternalError("cannot write " + corrupt_done);
            }
          }
          ++buckets_seen;
          for (const auto& t : bucket.tensors) {
            if (copy_bytes > 0) {
              if (offset + t.bytes > copy_bytes) offset = 0;  // wrap: the bench sizes it to fit
              if (cuda_device >= 0) {
                if (cudaMemcpyAsync(static_cast<uint8_t*>(own) + offset, t.data, t.bytes,
                                    cudaMemcpyDeviceToDevice, stream) != cudaSuccess) {
                  return absl::InternalError("cudaMemcpyAsync failed");
                }
              } else {
                std::memcpy(static_cast<uint8_t*>(own) + offset, t.data, t.bytes);
              }
              offset += (t.bytes + 255) / 256 * 256;
              continue;
            }
            std::vector<uint8_t> host(t.bytes);
            if (cuda_device >= 0) {
              if (t.bytes > 0 &&
                  cudaMemcpy(host.data(), t.data, t.bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
                return absl::InternalError("cudaMemcpy of a received tensor failed");
              }
            } else if (t.bytes > 0) {
              std::memcpy(host.data(), t.data, t.bytes);
            }
            dump.push_back(
                {{"name", t.name},
                 {"dtype", static_cast<int>(t.dtype)},
                 {"shape", t.shape},
                 {"hex", ckpt::testing::HexBytes(absl::string_view(
                             reinterpret_cast<const char*>(host.data()), host.size()))}});
          }
          if (stream != nullptr && cudaStreamSynchronize(stream) != cudaSuccess) {
            return absl::InternalError("cudaStreamSynchronize failed");
          }
          return absl::OkStatus();
        },
        absl::Minutes(30));
    if (!loaded.ok()) return Die(loaded.status().ToString());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - first).count();
    if (copy_bytes > 0) {
      std::printf("%s\n", nlohmann::json({{"version", loaded->version},
                                          {"bytes", loaded->bytes},
                                          {"tensors", loaded->tensors},
                                          {"seconds_first_bucket_to_done", seconds}})
                              .dump()
                              .c_str());
      std::fflush(stdout);
    }
    if (!out_path.empty()) {
      nlohmann::json report = {{"version", loaded->version}, {"tensors", dump}};
      if (pausable) {
        report["first_bucket_ns"] = first_ns;
        report["last_bucket_ns"] = last_ns;
      }
      if (!WriteAtomically(out_path, report.dump())) return Die("cannot write " + out_path);
    }
    if (pausable && paused_for.load() == loaded->version) {
      // A consistent update's resume comes after every worker loaded: stay for it.
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (resumed.load() < loaded->version) {
        if (std::chrono::steady_clock::now() > until) return Die("no resume within 30 s");
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  }
  return 0;
}
