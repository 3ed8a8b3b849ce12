// Every bad input of the Trainer API against the real daemon (host backend), each checked for its
// status code, its message, and for leaving nothing behind: no STAGING version and no memory in
// use.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "client/descriptor_socket.h"
#include "common/scoped_fd.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/admin.grpc.pb.h"
#include "proto/trainer.grpc.pb.h"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/trainer_daemon.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

using Daemon = TrainerDaemon;

std::string Bytes(size_t n, int seed) { return RandomBytes(n, seed); }

TEST_CASE("a good push commits and is listed") {
  Daemon d;
  std::string a = Bytes(4096, 1), b = Bytes(1000, 2);
  v1::Manifest m;
  *m.add_tensors() = Spec("a", a);
  *m.add_tensors() = Spec("b", b);
  v1::BeginVersionResponse begun;
  REQUIRE(d.Begin(m, &begun).ok());
  REQUIRE(d.Push({MakeChunk(begun, "b", 0, b), MakeChunk(begun, "a", 2048, a.substr(2048)),
                  MakeChunk(begun, "a", 0, a.substr(0, 2048)),
                  MakeChunk(begun, "a", 0, a.substr(0, 2048))})
              .ok());
  v1::VersionInfo info;
  REQUIRE(d.Commit(begun, &info).ok());
  CHECK(info.state() == v1::VERSION_STATE_COMMITTED);
  CHECK(info.total_bytes() == 5096);
  v1::StatusResponse s = d.Status();
  CHECK(s.committed_versions() == 1);
  CHECK(s.latest_committed_version() == begun.version());
  CHECK(s.host_memory_used_bytes() == 4096 + 1024);
}

TEST_CASE("bad manifests are refused at begin") {
  Daemon d;
  v1::BeginVersionResponse begun;
  std::string x = Bytes(64, 1);

  v1::Manifest dup;
  *dup.add_tensors() = Spec("w", x);
  *dup.add_tensors() = Spec("w", x);
  RequireError(d.Begin(dup, &begun), grpc::StatusCode::INVALID_ARGUMENT,
               "duplicate tensor name 'w'");

  v1::Manifest dtype;
  *dtype.add_tensors() = Spec("w", x);
  dtype.mutable_tensors(0)->set_dtype(static_cast<v1::DType>(42));
  RequireError(d.Begin(dtype, &begun), grpc::StatusCode::INVALID_ARGUMENT, "unknown dtype 42");

  v1::Manifest shape;
  *shape.add_tensors() = Spec("w", x);
  shape.mutable_tensors(0)->set_shape(0, 15);
  RequireError(d.Begin(shape, &begun), grpc::StatusCode::INVALID_ARGUMENT,
               "byte_size 64 does not match shape [15] of float32 (60 bytes)");

  RequireError(d.Begin(v1::Manifest(), &begun), grpc::StatusCode::INVALID_ARGUMENT,
               "manifest has no tensors");

  // A NUL byte would make "w\0x" a second "w" for workers that read names as C strings.
  v1::Manifest nul;
  *nul.add_tensors() = Spec("w", x);
  *nul.add_tensors() = Spec(std::string("w\0x", 3), x);
  RequireError(d.Begin(nul, &begun), grpc::StatusCode::INVALID_ARGUMENT,
               "tensor #1 has a NUL byte in its name");

  v1::Manifest big;
  *big.add_tensors() = Spec("w", std::string(2 << 20, 'x'));
  RequireError(d.Begin(big, &begun), grpc::StatusCode::RESOURCE_EXHAUSTED,
               "more than the whole host_memory_budget of 1.0 MiB");
  d.RequireClean();
}

TEST_CASE("a second begin with an id in use is refused") {
  Daemon d;
  v1::Manifest m;
  *m.add_tensors() = Spec("w", Bytes(64, 1));
  v1::BeginVersionResponse first, second;
  REQUIRE(d.Begin(m, &first, 7).ok());
  RequireError(d.Begin(m, &second, 7), grpc::StatusCode::ALREADY_EXISTS,
               "version 7 is already in use");
  REQUIRE(d.Abort(first).ok());
  d.RequireClean();
}

TEST_CASE("bad chunks are refused and an aborted version leaves nothing") {
  Daemon d;
  std::string w = Bytes(256, 3);
  v1::Manifest m;
  *m.add_tensors() = Spec("w", w);
  v1::BeginVersionResponse begun;
  REQUIRE(d.Begin(m, &begun).ok());
  RequireError(d.Push({MakeChunk(begun, "w", 200, w.substr(0, 100))}),
               grpc::StatusCode::OUT_OF_RANGE, "past the end of tensor 'w' (256 bytes)");
  RequireError(d.Push({MakeChunk(begun, "nope", 0, w)}), grpc::StatusCode::NOT_FOUND,
               "has no tensor 'nope'");
  v1::Chunk bad_token = MakeChunk(begun, "w", 0, w);
  bad_token.set_upload_token("0123");
  RequireError(d.Push({bad_token}), grpc::StatusCode::PERMISSION_DENIED, "wrong upload token");
  v1::BeginVersionResponse unknown = begun;
  unknown.set_version(999);
  RequireError(d.Push({MakeChunk(unknown, "w", 0, w)}), grpc::StatusCode::NOT_FOUND,
               "no staging version 999");
  REQUIRE(d.Abort(begun).ok());
  d.RequireClean();
}

// A chunk of several tensors (Chunk.part_*): data cut into parts in order.
v1::Chunk PartsChunk(const v1::BeginVersionResponse& b,
                     const std::vector<std::tuple<uint32_t, uint64_t, std::string>>& parts) {
  v1::Chunk c = MakeChunk(b, "", 0, "");
  for (const auto& [index, offset, bytes] : parts) {
    c.add_part_tensor(index);
    c.add_part_offset(offset);
    c.add_part_bytes(bytes.size());
    c.mutable_data()->append(bytes);
  }
  return c;
}

TEST_CASE("chunks of several tensors commit, and every bad part is refused before a byte lands") {
  Daemon d;
  std::string a = Bytes(300, 5), b = Bytes(100, 6), c = Bytes(64, 7);
  v1::Manifest m;
  *m.add_tensors() = Spec("a", a);
  *m.add_tensors() = Spec("b", b);
  *m.add_tensors() = Spec("c", c);
  v1::BeginVersionResponse begun;
  REQUIRE(d.Begin(m, &begun).ok());
  const std::string junk(300, '\xee');
  // Each bad chunk carries junk for tensor "c" in its first part: had anything been written, the
  // commit below (c sent last, correctly) would still pass, so "c" is checked by its bytes missing.
  RequireError(d.Push({PartsChunk(begun, {{2, 0, junk.substr(0, 64)}, {3, 0, "x"}})}),
               grpc::StatusCode::INVALID_ARGUMENT,
               "chunk part 1 names tensor #3 of a version of 3");
  RequireError(
      d.Push({PartsChunk(begun, {{2, 0, junk.substr(0, 64)}, {0, 250, junk.substr(0, 51)}})}),
      grpc::StatusCode::OUT_OF_RANGE,
      "chunk part 1: 51 bytes at offset 250 are past the end of tensor 'a' (300 bytes)");
  RequireError(d.Push({PartsChunk(
                   begun, {{2, 0, junk.substr(0, 64)}, {0, ~0ull - 10, junk.substr(0, 20)}})}),
               grpc::StatusCode::OUT_OF_RANGE, "past the end of tensor 'a'");
  v1::Chunk zero = PartsChunk(begun, {{2, 0, junk.substr(0, 64)}});
  zero.add_part_tensor(1);  // 0 bytes
  zero.add_part_offset(0);
  zero.add_part_bytes(0);
  RequireError(d.Push({zero}), grpc::StatusCode::INVALID_ARGUMENT, "chunk part 1 has 0 bytes");
  v1::Chunk short_data = PartsChunk(begun, {{2, 0, junk.substr(0, 64)}, {1, 0, b}});
  short_data.mutable_data()->resize(100);
  RequireError(d.Push({short_data}), grpc::StatusCode::INVALID_ARGUMENT,
               "chunk parts add up to more than its 100 data bytes (at part 1)");
  v1::Chunk long_data = PartsChunk(begun, {{2, 0, junk.substr(0, 64)}});
  long_data.mutable_data()->append("extra");
  RequireError(d.Push({long_data}), grpc::StatusCode::INVALID_ARGUMENT,
               "chunk parts add up to 64 bytes, but the chunk has 69");
  v1::Chunk named = PartsChunk(begun, {{2, 0, junk.substr(0, 64)}});
  named.set_tensor("c");
  RequireError(d.Push({named}), grpc::StatusCode::INVALID_ARGUMENT,
               "a chunk with parts must leave tensor empty and offset 0");
  v1::Chunk many = MakeChunk(begun, "", 0, std::string(65537, 'x'));
  for (int i = 0; i < 65537; ++i) {
    many.add_part_tensor(2);
    many.add_part_offset(i % 64);
    many.add_part_bytes(1);
  }
  RequireError(d.Push({many}), grpc::StatusCode::INVALID_ARGUMENT,
               "chunk has 65537 parts, more than 65536");
  v1::Chunk uneven = PartsChunk(begun, {{2, 0, junk.substr(0, 64)}});
  uneven.add_part_offset(0);
  RequireError(
      d.Push({uneven}), grpc::StatusCode::INVALID_ARGUMENT,
      "a chunk's part lists differ in length (1 part_tensor, 2 part_offset, 1 part_bytes)");
  v1::VersionInfo info;
  RequireError(d.Commit(begun, &info), grpc::StatusCode::FAILED_PRECONDITION,
               "'c' has 64 of 64 bytes missing");
  // Parts in any order and overlapping: a's halves around b, then c.
  REQUIRE(d.Push({PartsChunk(begun, {{0, 150, a.substr(150)}, {1, 0, b}, {0, 0, a.substr(0, 160)}}),
                  PartsChunk(begun, {{2, 0, c}})})
              .ok());
  REQUIRE(d.Commit(begun, &info).ok());
  CHECK(info.total_bytes() == 464);
}

TEST_CASE("commit with missing bytes, then with a checksum mismatch") {
  Daemon d;
  std::string w = Bytes(1024, 4);
  v1::Manifest m;
  *m.add_tensors() = Spec("w", w);
  v1::BeginVersionResponse begun;
  REQUIRE(d.Begin(m, &begun).ok());
  REQUIRE(d.Push({MakeChunk(begun, "w", 0, w.substr(0, 512))}).ok());
  v1::VersionInfo info;
  RequireError(d.Commit(begun, &info), grpc::StatusCode::FAILED_PRECONDITION,
               "'w' has 512 of 1024 bytes missing");
  std::string corrupt = w.substr(512);
  corrupt[0] ^= 0x40;
  REQUIRE(d.Push({MakeChunk(begun, "w", 512, corrupt)}).ok());
  RequireError(d.Commit(begun, &info), grpc::StatusCode::FAILED_PRECONDITION,
               "checksum mismatch in 1 tensor(s): 'w'");
  REQUIRE(d.Abort(begun).ok());
  d.RequireClean();
}

TEST_CASE("bad safetensors files are refused by LoadFiles and leave nothing") {
  Daemon d;
  v1::VersionInfo info;
  std::string good = d.dir / "good.safetensors";
  REQUIRE(WriteSafetensors(good, {{"a", DType::kFloat32, {4, 4}, Bytes(64, 1)},
                                  {"b", DType::kBfloat16, {8}, Bytes(16, 2)}})
              .ok());
  REQUIRE(d.LoadFiles({good}, &info).ok());
  CHECK(info.tensor_count() == 2);
  CHECK(info.total_bytes() == 80);

  struct Case {
    const char* name;
    std::string header;
    std::string data;
    int64_t header_length;
    const char* needle;
  };
  std::vector<Case> cases = {
      {"truncated", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_", "", -1, ""},
      {"malformed", "this is not json", "", -1, ""},
      {"header larger than the file", "{}", "", 1 << 20, ""},
      {"overlapping",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       std::string(12, 'x'), -1, "overlap"},
      {"out of range", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
       std::string(8, 'x'), -1, "'a'"},
      {"unknown dtype", R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})",
       std::string(8, 'x'), -1, "C64"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    std::string path = d.dir / (std::string(c.name) + ".safetensors");
    for (char& ch : path) ch = ch == ' ' ? '_' : ch;
    REQUIRE(WriteRawSafetensors(path, c.header, c.data, c.header_length).ok());
    grpc::Status s = d.LoadFiles({path}, &info);
    INFO(s.error_message());
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(Contains(s.error_message(), path));
    CHECK(Contains(s.error_message(), c.needle));
  }
  // A file the client could not open has no descriptor: the counts disagree, nothing is loaded.
  grpc::Status missing = d.LoadFiles({good, d.dir / "missing.safetensors"}, &info);
  CHECK(missing.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(missing.error_message(), "2 path(s) but 1 descriptor(s) passed"));
  grpc::Status twice = d.LoadFiles({good, good}, &info);
  CHECK(twice.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(twice.error_message(), "tensor 'a' is in both"));
  v1::StatusResponse s = d.Status();
  CHECK(s.staging_versions() == 0);
  CHECK(s.committed_versions() == 1);
  CHECK(s.host_memory_used_bytes() == 256 + 256);
}

ScopedFd MemfdWith(const std::string& bytes) {
  ScopedFd fd(::memfd_create("bad-input-test", MFD_CLOEXEC));
  REQUIRE(fd.valid());
  REQUIRE(::write(fd.get(), bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  return fd;
}

uint64_t Xxh3(const std::string& bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

TEST_CASE("PushLocal: a good stream commits the window's bytes; later writes change nothing") {
  Daemon d;
  std::string a = Bytes(4096, 1), b = Bytes(1000, 2);
  v1::Manifest m;
  *m.add_tensors() = Spec("a", a);
  *m.add_tensors() = Spec("b", b);
  for (auto& t : *m.mutable_tensors()) t.clear_xxh3();
  LocalStream ls(d);
  const uint64_t version = ls.Begin(m);
  REQUIRE(version > 0);
  // b, then a in two pieces, across two windows of one memfd each.
  ScopedFd w1 = MemfdWith(b + a.substr(0, 1000));
  ScopedFd w2 = MemfdWith(a.substr(1000));
  REQUIRE(ls.Window({w1.get()}, {{1, 0, 1000}, {0, 0, 1000}}));
  REQUIRE(ls.Window({w2.get()}, {{0, 1000, 3096}}));
  // The trainer scribbles over its windows after the daemon copied them: the version keeps what
  // was copied, and the commit verifies it against the trainer's checksums.
  REQUIRE(::pwrite(w1.get(), Bytes(2000, 9).data(), 2000, 0) == 2000);
  auto info = ls.Commit({Xxh3(a), Xxh3(b)});
  REQUIRE(info.has_value());
  CHECK(info->transport() == "local");
  CHECK(info->total_bytes() == 5096);
  CHECK(ls.Finish().ok());
  v1::GetVersionResponse got;
  REQUIRE(d.Get(version, &got).ok());
  CHECK(got.manifest().tensors(0).xxh3() == Xxh3(a));
  CHECK(got.manifest().tensors(1).xxh3() == Xxh3(b));
  CHECK(d.Status().staging_versions() == 0);
}

TEST_CASE("PushLocal pull steps: the daemon reads only the stream's own process, checked") {
  Daemon d;
  const std::string a = Bytes(4096, 1), b = Bytes(1000, 2);
  v1::Manifest m;
  *m.add_tensors() = Spec("a", a);
  *m.add_tensors() = Spec("b", b);
  for (auto& t : *m.mutable_tensors()) t.clear_xxh3();
  auto address = [](const std::string& s) { return reinterpret_cast<uint64_t>(s.data()); };
  auto step = [](uint64_t nonce_at, std::vector<std::pair<uint32_t, uint64_t>> tensors) {
    v1::LocalPushPull p;
    p.set_nonce_address(nonce_at);
    for (auto [t, at] : tensors) {
      v1::PullTensor* pt = p.add_tensors();
      pt->set_tensor(t);
      pt->set_address(at);
    }
    return p;
  };
  SECTION("a good pull commits the bytes read from this process, with the daemon's checksums") {
    LocalStream ls(d);
    ls.pull = true;
    v1::LocalPushBegun begun;
    const uint64_t version = ls.Begin(m, {}, &begun);
    REQUIRE(version > 0);
    const std::string nonce = begun.pull_nonce();
    REQUIRE(nonce.size() == 32);
    // A probe with the wrong nonce address: not ok (no more said), and the push goes on.
    const std::string elsewhere(32, 'x');
    auto probe = ls.Pull(step(address(elsewhere), {}));
    REQUIRE(probe.has_value());
    CHECK_FALSE(probe->ok());
    CHECK(probe->why() == "the daemon cannot read this process's memory (its log says why)");
    auto pulled = ls.Pull(step(address(nonce), {{0, address(a)}}));
    REQUIRE(pulled.has_value());
    CHECK(pulled->ok());
    // b in a window; a may not come again, in a window or a pull.
    ScopedFd w = MemfdWith(b);
    REQUIRE(ls.Window({w.get()}, {{1, 0, 1000}}));
    auto info = ls.Commit({0, Xxh3(b)});
    REQUIRE(info.has_value());
    CHECK(ls.Finish().ok());
    v1::GetVersionResponse got;
    REQUIRE(d.Get(version, &got).ok());
    CHECK(got.manifest().tensors(0).xxh3() == Xxh3(a));
    CHECK(got.manifest().tensors(1).xxh3() == Xxh3(b));
  }
  SECTION("refused: no pull offered, a wrong nonce, memory not mapped, a tensor twice") {
    struct Case {
      bool offer;
      std::function<v1::LocalPushPull(const std::string& nonce)> make;
      grpc::StatusCode code;
      std::string needle;
    };
    const std::string wrong(32, 'y');
    std::vector<Case> cases = {
        {false,
         [&](const std::string&) {
           return step(address(wrong), {{0, address(a)}});
         },
         grpc::StatusCode::FAILED_PRECONDITION, "this daemon reads none of the trainer's memory"},
        {true,
         [&](const std::string&) {
           return step(address(wrong), {{0, address(a)}});
         },
         grpc::StatusCode::PERMISSION_DENIED, "the pull's nonce is not at"},
        {true,
         [&](const std::string& n) {
           return step(address(n), {{0, 4096}});
         },
         grpc::StatusCode::INVALID_ARGUMENT, "pulling tensor 'a' (4.0 KiB): 4096 bytes at 0x1000"},
        {true,
         [&](const std::string& n) {
           return step(address(n), {{0, address(a)}, {0, address(a)}});
         },
         grpc::StatusCode::INVALID_ARGUMENT, "pull tensor 1: 'a' is already sent"},
        {true,
         [&](const std::string& n) {
           return step(address(n), {{2, address(a)}});
         },
         grpc::StatusCode::INVALID_ARGUMENT, "index 2 is past the manifest's 2 tensors"},
        {true,
         [&](const std::string& n) {
           return step(address(n), {{0, ~uint64_t{0} - 8}});
         },
         grpc::StatusCode::INVALID_ARGUMENT, "passes 2^64"},
        {true,
         [&](const std::string&) {
           return step(~uint64_t{0} - 8, {{0, address(a)}});
         },
         grpc::StatusCode::INVALID_ARGUMENT, "the pull's nonce address passes 2^64"},
    };
    {
      // One probe per push: a second one is refused (no oracle of the trainer's memory).
      LocalStream ls(d);
      ls.pull = true;
      v1::LocalPushBegun begun;
      REQUIRE(ls.Begin(m, {}, &begun) > 0);
      REQUIRE(ls.Pull(step(address(wrong), {})).has_value());
      CHECK_FALSE(ls.Pull(step(address(wrong), {})).has_value());
      RequireError(ls.Finish(), grpc::StatusCode::INVALID_ARGUMENT, "probes whether the daemon");
    }
    for (size_t k = 0; k < cases.size(); ++k) {
      INFO("case " << k);
      LocalStream ls(d);
      ls.pull = cases[k].offer;
      v1::LocalPushBegun begun;
      REQUIRE(ls.Begin(m, {}, &begun) > 0);
      CHECK(begun.pull_nonce().empty() != cases[k].offer);
      const std::string nonce = begun.pull_nonce();
      CHECK_FALSE(ls.Pull(cases[k].make(nonce)).has_value());
      RequireError(ls.Finish(), cases[k].code, cases[k].needle);
    }
    CHECK(d.Status().staging_versions() == 0);
  }
}

TEST_CASE("PushLocal with local_pull off offers no pull") {
  Daemon d({"--local-pull", "false"});
  std::string a = Bytes(4096, 1);
  v1::Manifest m;
  *m.add_tensors() = Spec("a", a);
  LocalStream ls(d);
  ls.pull = true;
  v1::LocalPushBegun begun;
  REQUIRE(ls.Begin(m, {}, &begun) > 0);
  CHECK(begun.pull_nonce().empty());
}

TEST_CASE("PushLocal on the host backend takes no GPU memory: ipc steps are refused") {
  Daemon d;
  std::string a = Bytes(4096, 1);
  v1::Manifest m;
  *m.add_tensors() = Spec("a", a);
  const std::string gpu = "GPU-01234567-89ab-cdef-fedc-ba9876543210";
  SECTION("begin's GPUs are not taken, and an ipc step is refused") {
    LocalStream ls(d);
    v1::LocalPushBegun begun;
    REQUIRE(ls.Begin(m, {gpu}, &begun) > 0);
    CHECK(begun.ipc_gpus_size() == 0);
    v1::LocalPushIpc ipc;
    v1::IpcTensor* t = ipc.add_tensors();
    t->set_tensor(0);
    t->set_gpu(gpu);
    t->set_handle(std::string(64, '\x01'));
    CHECK_FALSE(ls.Ipc(ipc));
    RequireError(ls.Finish(), grpc::StatusCode::FAILED_PRECONDITION,
                 "ipc step 0: this daemon copies from none of the trainer's GPUs");
  }
  SECTION("more than 64 GPUs at begin") {
    LocalStream ls(d);
    CHECK(ls.Begin(m, std::vector<std::string>(65, gpu), nullptr) == 0);
    RequireError(ls.Finish(), grpc::StatusCode::INVALID_ARGUMENT, "65 ipc_gpus; at most 64");
  }
  SECTION("the bytes then come in a window, as a client does when its GPU is not taken") {
    LocalStream ls(d);
    v1::LocalPushBegun begun;
    REQUIRE(ls.Begin(m, {gpu}, &begun) > 0);
    ScopedFd w = MemfdWith(a);
    REQUIRE(ls.Window({w.get()}, {{0, 0, 4096}}));
    auto info = ls.Commit({Xxh3(a)});
    REQUIRE(info.has_value());
    CHECK(info->ipc_bytes() == 0);
    CHECK(ls.Finish().ok());
  }
  v1::StatusResponse s = d.Status();
  CHECK(s.staging_versions() == 0);
}

TEST_CASE("PushLocal: every bad stream is refused naming the problem and leaves nothing") {
  Daemon d;
  std::string a = Bytes(4096, 1);
  v1::Manifest m;
  *m.add_tensors() = Spec("a", a);
  const std::vector<uint64_t> right = {Xxh3(a)};
  auto refused = [&](LocalStream& ls, grpc::StatusCode code, const std::string& needle) {
    RequireError(ls.Finish(), code, needle);
    // A broken stream aborts its version at once.
    d.RequireClean();
  };

  SECTION("no begin first") {
    LocalStream ls(d);
    v1::LocalPushRequest r;
    r.mutable_commit();
    REQUIRE(ls.stream->Write(r));
    refused(ls, grpc::StatusCode::INVALID_ARGUMENT, "the first message must be begin, not commit");
  }
  SECTION("a second begin") {
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    CHECK(ls.Begin(m) == 0);
    refused(ls, grpc::StatusCode::INVALID_ARGUMENT,
            "expected a window, an ipc step or the commit, not begin");
  }
  SECTION("a manifest the store refuses") {
    LocalStream ls(d);
    v1::Manifest dup = m;
    *dup.add_tensors() = m.tensors(0);
    CHECK(ls.Begin(dup) == 0);
    refused(ls, grpc::StatusCode::INVALID_ARGUMENT, "duplicate tensor name 'a'");
  }
  SECTION("a pipe instead of a memfd") {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    ScopedFd r(p[0]), w(p[1]);
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    CHECK_FALSE(ls.Window({r.get()}, {{0, 0, 4096}}));
    refused(ls, grpc::StatusCode::FAILED_PRECONDITION, "is not a memfd");
  }
  SECTION("a file on disk instead of a memfd") {
    std::string path = d.dir.path() + "/window";
    { std::ofstream(path) << a; }
    ScopedFd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(f.valid());
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    CHECK_FALSE(ls.Window({f.get()}, {{0, 0, 4096}}));
    refused(ls, grpc::StatusCode::FAILED_PRECONDITION, "is not a memfd");
  }
  SECTION("a memfd shorter than its parts") {
    ScopedFd w = MemfdWith(a.substr(0, 4000));
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    CHECK_FALSE(ls.Window({w.get()}, {{0, 0, 4096}}));
    refused(ls, grpc::StatusCode::FAILED_PRECONDITION,
            "has 4000 bytes, fewer than its parts' 4096");
  }
  SECTION("a part past its tensor's end") {
    ScopedFd w = MemfdWith(a + a);
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    CHECK_FALSE(ls.Window({w.get()}, {{0, 4000, 97}}));
    refused(ls, grpc::StatusCode::OUT_OF_RANGE, "past the end of tensor 'a'");
  }
  SECTION("a part that rewrites bytes already sent, or skips some") {
    ScopedFd w = MemfdWith(a);
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    REQUIRE(ls.Window({w.get()}, {{0, 0, 2048}}));
    CHECK_FALSE(ls.Window({w.get()}, {{0, 1024, 2048}}));
    refused(ls, grpc::StatusCode::INVALID_ARGUMENT, "goes on at byte 2048, not 1024");
    LocalStream skip(d);
    REQUIRE(skip.Begin(m) > 0);
    CHECK_FALSE(skip.Window({w.get()}, {{0, 8, 100}}));
    refused(skip, grpc::StatusCode::INVALID_ARGUMENT, "goes on at byte 0, not 8");
  }
  SECTION("parts at offset 2^64 - 1, of 2^64 - 1 bytes, or adding up past 2^64") {
    ScopedFd w = MemfdWith(a);
    for (auto part : std::vector<std::tuple<uint32_t, uint64_t, uint64_t>>{
             {0, UINT64_MAX, 1}, {0, 0, UINT64_MAX}, {0, UINT64_MAX, UINT64_MAX}}) {
      LocalStream ls(d);
      REQUIRE(ls.Begin(m) > 0);
      CHECK_FALSE(ls.Window({w.get()}, {part}));
      refused(ls, grpc::StatusCode::OUT_OF_RANGE, "past the end of tensor 'a'");
    }
    LocalStream many(d);
    REQUIRE(many.Begin(m) > 0);
    std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> parts(5, {0, 0, 4096});
    CHECK_FALSE(many.Window({w.get()}, parts));  // 20 KiB named; the memfd has 4 KiB
    refused(many, grpc::StatusCode::FAILED_PRECONDITION, "fewer than its parts'");
  }
  SECTION("a trainer that goes silent after its begin is cancelled (staging_timeout 1 s)") {
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    const auto start = Clock::now();
    v1::LocalPushReply reply;
    CHECK_FALSE(ls.stream->Read(&reply));  // the daemon ends the stream; no reply comes
    CHECK(Clock::now() - start < 15s);
    // The watchdog cancels the call itself, so gRPC's own text comes back, not the daemon's.
    CHECK(ls.stream->Finish().error_code() == grpc::StatusCode::CANCELLED);
    d.RequireClean();
  }
  SECTION("two descriptors under one nonce") {
    ScopedFd w1 = MemfdWith(a), w2 = MemfdWith(a);
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    CHECK_FALSE(ls.Window({w1.get(), w2.get()}, {{0, 0, 4096}}));
    refused(ls, grpc::StatusCode::INVALID_ARGUMENT, "exactly one descriptor");
  }
  SECTION("a malformed nonce") {
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    CHECK_FALSE(ls.Window({}, {{0, 0, 4096}}, "short"));
    refused(ls, grpc::StatusCode::INVALID_ARGUMENT, "fd_nonce is not 16 to 128 printable");
  }
  SECTION("the window's bytes are not what the trainer hashed") {
    ScopedFd w = MemfdWith(Bytes(4096, 5));
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    REQUIRE(ls.Window({w.get()}, {{0, 0, 4096}}));
    CHECK_FALSE(ls.Commit(right).has_value());
    refused(ls, grpc::StatusCode::FAILED_PRECONDITION, "checksum mismatch in 1 tensor(s)");
  }
  SECTION("a checksum list of the wrong length") {
    ScopedFd w = MemfdWith(a);
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    REQUIRE(ls.Window({w.get()}, {{0, 0, 4096}}));
    CHECK_FALSE(ls.Commit({right[0], right[0]}).has_value());
    refused(ls, grpc::StatusCode::INVALID_ARGUMENT, "has 1 tensors but 2 checksums came");
  }
  SECTION("bytes missing at commit") {
    ScopedFd w = MemfdWith(a);
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    REQUIRE(ls.Window({w.get()}, {{0, 0, 4000}}));
    CHECK_FALSE(ls.Commit(right).has_value());
    refused(ls, grpc::StatusCode::FAILED_PRECONDITION, "'a' has 96 of 4096 bytes missing");
  }
  SECTION("the stream ends before the commit") {
    ScopedFd w = MemfdWith(a);
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    REQUIRE(ls.Window({w.get()}, {{0, 0, 4096}}));
    refused(ls, grpc::StatusCode::CANCELLED, "the stream ended before the commit");
  }
  SECTION("an empty commit uses the manifest's checksums, which must then be right") {
    ScopedFd w = MemfdWith(a);
    LocalStream ls(d);
    REQUIRE(ls.Begin(m) > 0);
    REQUIRE(ls.Window({w.get()}, {{0, 0, 4096}}));
    auto info = ls.Commit({});
    REQUIRE(info.has_value());
    CHECK(ls.Finish().ok());
    REQUIRE(d.Drop(info->version()).ok());
    v1::Manifest wrong = m;
    wrong.mutable_tensors(0)->set_xxh3(right[0] ^ 1);
    LocalStream bad(d);
    REQUIRE(bad.Begin(wrong) > 0);
    REQUIRE(bad.Window({w.get()}, {{0, 0, 4096}}));
    CHECK_FALSE(bad.Commit({}).has_value());
    refused(bad, grpc::StatusCode::FAILED_PRECONDITION, "checksum mismatch");
  }
}

TEST_CASE("a trainer killed at any point of a push leaves nothing behind") {
  Daemon d;
  const uint64_t before = d.Status().host_memory_used_bytes();
  std::mt19937 rng(12345);
  const std::vector<std::string> push = {
      Runfile("tests/integration/push_client"), d.socket, "16", "32768", "1024", "2"};
  // One push to the end first: it must commit, and its duration spans the cut points below.
  auto started = Clock::now();
  RunResult full = Run(push);
  auto push_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
  REQUIRE(full.exit.code == 0);
  REQUIRE(Contains(full.out, "committed"));
  int killed_mid_push = 0, committed = 0;
  for (int round = 0; round < 16; ++round) {
    Subprocess pusher(push);
    if (round % 4 != 0) {
      // Most cut points fall between BeginVersion and the end of the push.
      auto deadline = Clock::now() + 20s;
      while (!Contains(pusher.Stdout(), "begun") && pusher.running() && Clock::now() < deadline) {
        std::this_thread::sleep_for(200us);
      }
      // (Half the full run: start-up and connecting take the other half.)
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (push_us.count() / 2 + 1)));
    }
    pusher.Signal(SIGKILL);
    pusher.Wait(20s);
    killed_mid_push += Contains(pusher.Stdout(), "begun");
    // A broken stream aborts at once; a kill between two calls is caught by staging_timeout (1 s).
    auto deadline = Clock::now() + 15s;
    v1::StatusResponse s = d.Status();
    while (s.staging_versions() != 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
      s = d.Status();
    }
    // Drop what did commit (the pusher may die after its commit), so every round starts alike.
    committed += d.DropCommitted();
    s = d.Status();
    INFO("round " << round);
    CHECK(s.staging_versions() == 0);
    CHECK(s.host_memory_used_bytes() == before);
  }
  WARN("a full push took " << push_us.count() << " us; of 16 killed pushes, " << killed_mid_push
                           << " were killed after BeginVersion, " << committed
                           << " committed before the kill");
}

TEST_CASE("a trainer killed at any point of a local push leaves nothing behind") {
  // Windows (local_pull off): 8 MiB in 1 MiB windows with a 20 ms pause at each progress call, so
  // kills land before the begin, while windows are filled or copied, and around the commit.
  // Pulled (the daemon reads the trainer's memory): kills at random points of the push.
  const bool pulled = GENERATE(false, true);
  INFO("pulled " << pulled);
  std::vector<std::string> args = {"--host-memory-budget", "16MiB"};
  if (!pulled) args.insert(args.end(), {"--local-pull", "false"});
  Daemon d(args);
  const uint64_t before = d.Status().host_memory_used_bytes();
  std::mt19937 rng(4321);
  const std::vector<std::string> push = {Runfile("tests/integration/local_push_client"),
                                         d.socket,
                                         "4",
                                         std::to_string(2 << 20),
                                         std::to_string(1 << 20),
                                         "local",
                                         "20"};
  auto started = Clock::now();
  RunResult full = Run(push);
  auto push_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
  INFO(full.err);
  REQUIRE(full.exit.code == 0);
  REQUIRE(Contains(full.out, "transport local"));
  REQUIRE(d.Drop(1).ok());
  int killed_mid_push = 0, committed = 0;
  for (int round = 0; round < 12; ++round) {
    Subprocess pusher(push);
    if (pulled) {
      // Anywhere from the start (the process's own start-up included) to the end of a push.
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (push_us.count() + 1)));
    } else if (round % 4 != 0) {
      auto deadline = Clock::now() + 20s;
      while (!Contains(pusher.Stdout(), "progress") && pusher.running() &&
             Clock::now() < deadline) {
        std::this_thread::sleep_for(200us);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (push_us.count() / 2 + 1)));
    }
    pusher.Signal(SIGKILL);
    pusher.Wait(20s);
    killed_mid_push += Contains(pusher.Stdout(), "progress");
    // The stream breaks with the process: its version is aborted at once (staging_timeout 1 s
    // covers the rest).
    auto deadline = Clock::now() + 15s;
    v1::StatusResponse s = d.Status();
    while ((s.staging_versions() != 0 || s.host_memory_used_bytes() != before) &&
           Clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
      s = d.Status();
      if (s.staging_versions() == 0 && s.committed_versions() > 0) break;
    }
    committed += d.DropCommitted("local");
    s = d.Status();
    INFO("round " << round);
    CHECK(s.staging_versions() == 0);
    CHECK(s.host_memory_used_bytes() == before);
  }
  WARN("a full local push (" << (pulled ? "pulled" : "windows") << ") took " << push_us.count()
                             << " us; of 12 killed pushes, " << killed_mid_push
                             << " were killed after their first progress, " << committed
                             << " committed before the kill");
  // Through windows most kills hit a push in flight (a pull is one step: often done first).
  if (!pulled) CHECK(killed_mid_push - committed >= 4);
}

}  // namespace
}  // namespace ckpt::testing
