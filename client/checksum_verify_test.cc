// Worker-side checksum verification without a GPU: host memory in place, and the staged path
// (runs, pieces, double buffering) through host copiers that complete a copy at Start or only at
// Wait, so that hashing a half before its copy landed, or copying into the half being hashed,
// shows up as a wrong hash.
#include "client/checksum_verify.h"

#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"

namespace ckpt::client {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string Hex(uint64_t v) { return absl::StrFormat("%016x", v); }

// A "slot" of deterministic bytes and tensors placed in it.
struct Slot {
  explicit Slot(size_t bytes) : data(bytes) {
    uint32_t x = 12345;
    for (auto& b : data) {
      x = x * 1664525u + 1013904223u;
      b = static_cast<uint8_t>(x >> 24);
    }
  }
  // A tensor of `bytes` at `offset`, its expected checksum taken from the bytes now.
  void Add(const std::string& name, size_t offset, size_t bytes) {
    names.push_back(name);
    offsets.push_back(offset);
    sizes.push_back(bytes);
    hashes.push_back(XXH3_64bits(data.data() + offset, bytes));
  }
  std::vector<TensorChecksum> Tensors() const {
    std::vector<TensorChecksum> out;
    for (size_t i = 0; i < names.size(); ++i) {
      out.push_back(
          {names[i], sizes[i] > 0 ? data.data() + offsets[i] : nullptr, sizes[i], hashes[i]});
    }
    return out;
  }
  std::vector<uint8_t> data;
  std::vector<std::string> names;
  std::vector<size_t> offsets, sizes;
  std::vector<uint64_t> hashes;
};

class HostCopier : public StagingCopier {
 public:
  explicit HostCopier(bool complete_at_wait) : complete_at_wait_(complete_at_wait) {}
  absl::Status Start(void* dst, const void* src, size_t n) override {
    ++starts;
    copied += n;
    max_copy = std::max(max_copy, n);
    if (fail_at_start > 0 && starts == fail_at_start) return absl::InternalError("copy broke");
    if (pending_ > 0) in_flight_twice = true;
    ++pending_;
    if (complete_at_wait_) {
      queued_.push_back({dst, src, n});
    } else {
      std::memcpy(dst, src, n);
    }
    return absl::OkStatus();
  }
  absl::Status Wait() override {
    ++waits;
    for (const Copy& c : queued_) std::memcpy(c.dst, c.src, c.n);
    queued_.clear();
    pending_ = 0;
    return absl::OkStatus();
  }
  bool idle() const { return pending_ == 0; }

  int starts = 0, waits = 0, fail_at_start = 0;
  size_t copied = 0, max_copy = 0;
  bool in_flight_twice = false;

 private:
  struct Copy {
    void* dst;
    const void* src;
    size_t n;
  };
  bool complete_at_wait_;
  int pending_ = 0;
  std::vector<Copy> queued_;
};

absl::Status Staged(const std::vector<TensorChecksum>& tensors, HostCopier& copier,
                    size_t staging_bytes) {
  std::vector<uint8_t> staging(staging_bytes, 0xEE);
  return VerifyStagedChecksums(tensors, copier, staging.data(), staging.size());
}

// Tensors back to back, with small gaps, one overlapping its neighbour, one far away (its own run),
// and empty ones.
Slot Layout() {
  Slot s(300000);
  s.Add("a", 0, 1000);
  s.Add("empty.first", 0, 0);
  s.Add("b", 1000, 4097);
  s.Add("c", 5200, 33);  // a 103-byte gap before it
  s.Add("d", 5233, 20000);
  s.Add("overlap", 6000, 100);  // inside d
  s.Add("far", 200000, 70001);  // > 64 KiB after d: a run of its own
  s.Add("one", 299999, 1);
  s.Add("empty.last", 0, 0);
  return s;
}

TEST_CASE("host: matching tensors pass, empty ones included") {
  Slot s = Layout();
  CHECK(VerifyHostChecksums(s.Tensors()).ok());
  CHECK(VerifyHostChecksums({}).ok());
  CHECK(ChecksumVerifier(-1).Verify(s.Tensors()).ok());
}

TEST_CASE("host: a changed byte fails with the tensor, the expected and the actual hash") {
  Slot s = Layout();
  s.data[1000 + 4096] ^= 0x01;  // last byte of "b"
  const uint64_t actual = XXH3_64bits(s.data.data() + 1000, 4097);
  absl::Status st = VerifyHostChecksums(s.Tensors());
  REQUIRE(st.code() == absl::StatusCode::kDataLoss);
  const std::string m(st.message());
  INFO(m);
  CHECK(Contains(m, "checksum mismatch in tensor 'b' (4097 bytes)"));
  CHECK(Contains(m, "expected xxh3 " + Hex(s.hashes[2])));
  CHECK(Contains(m, "got " + Hex(actual)));
  CHECK_FALSE(Contains(m, "more tensor"));

  s.data[6050] ^= 0x80;  // inside "d" and "overlap"
  s.data[299999] ^= 0xFF;
  st = ChecksumVerifier(-1).Verify(s.Tensors());
  REQUIRE(st.code() == absl::StatusCode::kDataLoss);
  CHECK(Contains(std::string(st.message()), "tensor 'b'"));
  CHECK(Contains(std::string(st.message()), "; 3 more tensors of this bucket differ"));
}

TEST_CASE("host: a wrong expected checksum fails the same way") {
  Slot s = Layout();
  auto tensors = s.Tensors();
  tensors[1].xxh3 ^= 1;  // an empty tensor with a wrong checksum
  absl::Status st = VerifyHostChecksums(tensors);
  REQUIRE(st.code() == absl::StatusCode::kDataLoss);
  CHECK(Contains(std::string(st.message()), "tensor 'empty.first' (0 bytes)"));
  CHECK(Contains(std::string(st.message()), "got " + Hex(XXH3_64bits("", 0))));
}

TEST_CASE("staged: every staging size and both copier timings give the in-place hashes") {
  for (bool at_wait : {false, true}) {
    for (size_t staging : {2, 3, 7, 64, 1000, 4096, 65536, 1 << 20}) {
      INFO("complete at wait: " << at_wait << ", staging " << staging);
      Slot s = Layout();
      HostCopier copier(at_wait);
      absl::Status st = Staged(s.Tensors(), copier, staging);
      INFO(st.ToString());
      CHECK(st.ok());
      CHECK(copier.idle());
      CHECK_FALSE(copier.in_flight_twice);
      CHECK(copier.max_copy <= staging / 2);
      CHECK(copier.waits == copier.starts);
    }
  }
}

TEST_CASE("staged: a changed byte is found wherever it falls relative to the pieces") {
  const std::vector<size_t> flips = {0,    999,   1000,   5096,   5200,   5232,  6000,
                                     6099, 25232, 200000, 235000, 270000, 299999};
  for (bool at_wait : {false, true}) {
    for (size_t staging : {2, 7, 1000, 65536}) {
      for (size_t at : flips) {
        INFO("complete at wait: " << at_wait << ", staging " << staging << ", byte " << at);
        Slot s = Layout();
        s.data[at] ^= 0x5A;
        HostCopier copier(at_wait);
        absl::Status st = Staged(s.Tensors(), copier, staging);
        CHECK(st.code() == absl::StatusCode::kDataLoss);
        // The same verdict as hashing in place.
        CHECK(st == VerifyHostChecksums(s.Tensors()));
        CHECK(copier.idle());
      }
    }
  }
}

TEST_CASE("staged: nearby tensors are copied as one run, far ones separately, gaps skipped") {
  Slot s = Layout();
  HostCopier copier(false);
  REQUIRE(Staged(s.Tensors(), copier, 1 << 20).ok());
  // Runs: [0, 25233) and [200000, 300000): two copies, the 175 KB between them not copied.
  CHECK(copier.starts == 2);
  CHECK(copier.copied == 25233 + 100000);

  HostCopier small(false);
  REQUIRE(Staged(s.Tensors(), small, 20000).ok());  // halves of 10000 bytes
  CHECK(small.starts == 3 + 10);
  CHECK(small.copied == 25233 + 100000);
}

TEST_CASE("staged: a failing copy is returned and nothing stays in flight") {
  for (int fail_at : {1, 2, 5}) {
    INFO("fail at start " << fail_at);
    Slot s = Layout();
    HostCopier copier(true);
    copier.fail_at_start = fail_at;
    absl::Status st = Staged(s.Tensors(), copier, 4096);
    CHECK(st.code() == absl::StatusCode::kInternal);
    CHECK(std::string(st.message()) == "copy broke");
    CHECK(copier.idle());
  }
}

TEST_CASE("bad input is INVALID_ARGUMENT") {
  std::vector<TensorChecksum> null_data = {{"x", nullptr, 8, 0}};
  CHECK(VerifyHostChecksums(null_data).code() == absl::StatusCode::kInvalidArgument);
  HostCopier copier(false);
  CHECK(Staged(null_data, copier, 64).code() == absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> one(1);
  CHECK(VerifyStagedChecksums({}, copier, one.data(), 1).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(VerifyStagedChecksums({}, copier, nullptr, 64).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(VerifyStagedChecksums({}, copier, one.data(), 0).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(copier.starts == 0);
}

}  // namespace
}  // namespace ckpt::client
