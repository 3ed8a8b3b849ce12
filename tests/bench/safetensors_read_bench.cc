// safetensors_read_bench: how fast ReadRangesParallel moves a page-cached safetensors file into
// memory, by thread count.
//
// Writes a file of --gib GiB (BF16 tensors of 64 MiB) into --dir, leaves it in the page cache (it
// drops nothing: this measures the copy out of the page cache, the case of a checkpoint the trainer
// has just written), then reads all of it with 1, 4, 8 and 16 threads into one anonymous mapping
// that is touched beforehand (no page faults in the timed part), --repeat times each, and prints
// GB/s (10^9 bytes per second). The bytes read are checked against the bytes written (xxh3).
//
//   bazel run //tests/bench:safetensors_read_bench -- --gib 4 --dir /mnt/nvme
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/scoped_fd.h"
#include "daemon/store/safetensors.h"
#include "tests/testing/safetensors_writer.h"

namespace {

using ckpt::ScopedFd;
using ckpt::daemon::ReadRange;
using ckpt::daemon::ReadRangesParallel;

constexpr uint64_t kTensorBytes = uint64_t{64} << 20;

int Fail(const std::string& message) {
  std::fprintf(stderr, "safetensors_read_bench: %s\n", message.c_str());
  return 1;
}

// Fraction of the file's pages in the page cache.
double ResidentFraction(int fd, uint64_t size) {
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return -1;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  double fraction = -1;
  if (::mincore(map, size, vec.data()) == 0) {
    uint64_t resident = 0;
    for (unsigned char v : vec) resident += v & 1;
    fraction = static_cast<double>(resident) / static_cast<double>(vec.size());
  }
  ::munmap(map, size);
  return fraction;
}

}  // namespace

int main(int argc, char** argv) {
  const char* tmpdir = std::getenv("TMPDIR");
  double gib = 1;
  std::string dir = tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp";
  std::vector<int> thread_counts = {1, 4, 8, 16};
  int repeat = 3;
  bool keep = false;
  CLI::App app("Reads a page-cached safetensors file with ReadRangesParallel; prints GB/s.");
  app.add_option("--gib", gib, "file size in GiB (whole 64 MiB tensors)")->capture_default_str();
  app.add_option("--dir", dir, "directory for the file ($TMPDIR or /tmp)")->capture_default_str();
  app.add_option("--threads", thread_counts, "thread counts to measure")
      ->capture_default_str()
      ->delimiter(',');
  app.add_option("--repeat", repeat, "timed reads per thread count")->capture_default_str();
  app.add_flag("--keep", keep, "keep the file");
  CLI11_PARSE(app, argc, argv);
  if (gib <= 0 || repeat < 1) return Fail("--gib must be > 0 and --repeat >= 1");

  const uint64_t count = std::max<uint64_t>(1, static_cast<uint64_t>(gib * 16 + 0.5));
  const uint64_t total = count * kTensorBytes;
  const std::string path = absl::StrFormat("%s/safetensors_read_bench.%d.safetensors", dir,
                                           static_cast<int>(::getpid()));

  // Write, remembering the hash of the data section (the tensors back to back).
  uint64_t expected_hash;
  {
    std::vector<ckpt::testing::TensorToWrite> tensors;
    XXH3_state_t* state = XXH3_createState();
    XXH3_64bits_reset(state);
    for (uint64_t i = 0; i < count; ++i) {
      tensors.push_back({absl::StrFormat("model.layers.%d.weight", i),
                         ckpt::DType::kBfloat16,
                         {4096, 8192},
                         ckpt::testing::RandomBytes(kTensorBytes, i + 1)});
      XXH3_64bits_update(state, tensors.back().bytes.data(), kTensorBytes);
    }
    expected_hash = XXH3_64bits_digest(state);
    XXH3_freeState(state);
    absl::Time t0 = absl::Now();
    if (auto s = ckpt::testing::WriteSafetensors(path, tensors); !s.ok()) {
      return Fail(std::string(s.message()));
    }
    std::printf("wrote %s: %llu tensors, %.2f GiB in %.2f s\n", path.c_str(),
                static_cast<unsigned long long>(count), static_cast<double>(total) / (1 << 30),
                absl::ToDoubleSeconds(absl::Now() - t0));
  }

  auto file = ckpt::daemon::ReadSafetensorsHeader(path);
  if (!file.ok()) return Fail(std::string(file.status().message()));
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Fail("cannot open " + path + ": " + std::strerror(errno));

  void* dest = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (dest == MAP_FAILED) return Fail(std::string("mmap: ") + std::strerror(errno));
  std::memset(dest, 0, total);  // pre-touch: the timed reads take no page faults

  std::vector<ReadRange> ranges;
  for (const auto& t : file->tensors) {
    ranges.push_back({fd.get(), t.file_offset, t.byte_size,
                      static_cast<char*>(dest) + (t.file_offset - file->data_start),
                      "file " + path + " tensor " + t.name});
  }

  // One untimed read brings back any page the kernel dropped since the write.
  if (auto s = ReadRangesParallel(ranges, 16, absl::InfiniteFuture()); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  std::printf("page cache: %.1f%% of the file resident; %u CPUs\n",
              100 * ResidentFraction(fd.get(), file->file_size),
              std::thread::hardware_concurrency());
  std::printf("%7s %12s %12s %10s\n", "threads", "best GB/s", "median GB/s", "best ms");
  for (int threads : thread_counts) {
    std::vector<double> seconds;
    for (int r = 0; r < repeat; ++r) {
      absl::Time t0 = absl::Now();
      auto s = ReadRangesParallel(ranges, threads, absl::InfiniteFuture());
      seconds.push_back(absl::ToDoubleSeconds(absl::Now() - t0));
      if (!s.ok()) return Fail(std::string(s.message()));
    }
    std::sort(seconds.begin(), seconds.end());
    const double gb = static_cast<double>(total) / 1e9;
    std::printf("%7d %12.2f %12.2f %10.1f\n", threads, gb / seconds.front(),
                gb / seconds[seconds.size() / 2], seconds.front() * 1e3);
  }

  const bool ok = XXH3_64bits(dest, total) == expected_hash;
  std::printf("check: %s\n", ok ? "bytes match" : "BYTES DIFFER");
  ::munmap(dest, total);
  if (!keep) ::unlink(path.c_str());
  return ok ? 0 : 1;
}
