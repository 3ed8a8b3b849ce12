// Regression tests for the security review (issue 9) against the real daemon binary, host
// backend: every finding that a raw gRPC client could trigger, each checked for the refusal, for
// leaving nothing behind, and for a daemon that is still alive and answering afterwards.
#include <signal.h>
#include <sys/stat.h>
#include <xxhash.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "proto/consumer.grpc.pb.h"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/state_dict.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/trainer_daemon.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

v1::TensorSpec Huge(const std::string& name, v1::DType dtype, std::vector<int64_t> shape,
                    uint64_t byte_size) {
  v1::TensorSpec t;
  t.set_name(name);
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  t.set_byte_size(byte_size);
  return t;
}

// Commits one small version and returns its id.
uint64_t CommitSmall(TrainerDaemon& d, const std::string& bytes, uint64_t id = 0) {
  v1::Manifest m;
  *m.add_tensors() = Spec("w", bytes);
  v1::BeginVersionResponse b;
  grpc::Status begun = d.Begin(m, &b, id);
  INFO(begun.error_message());
  REQUIRE(begun.ok());
  REQUIRE(d.Push({MakeChunk(b, "w", 0, bytes)}).ok());
  v1::VersionInfo info;
  REQUIRE(d.Commit(b, &info).ok());
  return b.version();
}

TEST_CASE("finding 1: sizes near 2^64 are refused at begin, charge nothing, corrupt nothing") {
  TrainerDaemon d;
  const std::string good = RandomBytes(4096, 7);
  const uint64_t v = CommitSmall(d, good);
  const uint64_t used = d.Status().host_memory_used_bytes();

  // F16 [2^63-1] = 2^64-2 bytes and I8 [2^32-1, 2^32+1] = 2^64-1 bytes: (size + 255) wrapped to a
  // charge of 0 bytes, and chunks at any offset below 2^64-2 were then accepted.
  for (const v1::TensorSpec& t :
       {Huge("f16", v1::DTYPE_FLOAT16, {INT64_MAX}, UINT64_MAX - 1),
        Huge("i8", v1::DTYPE_INT8, {(int64_t{1} << 32) - 1, (int64_t{1} << 32) + 1}, UINT64_MAX)}) {
    INFO(t.name());
    v1::Manifest m;
    *m.add_tensors() = t;
    v1::BeginVersionResponse b;
    RequireError(d.Begin(m, &b), grpc::StatusCode::RESOURCE_EXHAUSTED,
                 "more than the whole host_memory_budget of 1.0 MiB");
    // With no version begun there is no token: a chunk aimed at the committed version's memory
    // or far outside the arena is refused too.
    v1::Chunk c;
    c.set_version(v + 1);
    c.set_upload_token("0123456789abcdef0123456789abcdef");
    c.set_tensor(t.name());
    c.set_offset(uint64_t{1} << 46);
    c.set_data("x");
    RequireError(d.Push({c}), grpc::StatusCode::NOT_FOUND, "no staging version");
  }
  v1::StatusResponse s = d.Status();  // alive
  CHECK(s.host_memory_used_bytes() == used);
  CHECK(s.staging_versions() == 0);
  v1::GetVersionResponse got;
  REQUIRE(d.Get(v, &got).ok());
  CHECK(got.manifest().tensors(0).xxh3() == XXH3_64bits(good.data(), good.size()));
}

TEST_CASE("finding 6: version id 2^64-1 is refused; ids stop at 2^63-1 without wrapping") {
  TrainerDaemon d;
  const std::string bytes = RandomBytes(64, 1);
  v1::Manifest m;
  *m.add_tensors() = Spec("w", bytes);
  v1::BeginVersionResponse b;
  RequireError(d.Begin(m, &b, UINT64_MAX), grpc::StatusCode::INVALID_ARGUMENT,
               "over the largest id 9223372036854775807");
  // Automatic ids still work afterwards (the old daemon wrapped to 0 and refused every commit).
  CHECK(CommitSmall(d, bytes) == 1);
  CHECK(CommitSmall(d, bytes) == 2);
  CHECK(CommitSmall(d, bytes, (uint64_t{1} << 63) - 1) == (uint64_t{1} << 63) - 1);
  RequireError(d.Begin(m, &b), grpc::StatusCode::RESOURCE_EXHAUSTED, "no version id is left");
  CHECK(d.Status().staging_versions() == 0);
}

TEST_CASE("finding 7: an empty upload token does not commit or abort another's version") {
  TrainerDaemon d;
  const std::string bytes = RandomBytes(64, 1);
  v1::Manifest m;
  *m.add_tensors() = Spec("w", bytes);
  v1::BeginVersionResponse b;
  REQUIRE(d.Begin(m, &b).ok());
  REQUIRE(d.Push({MakeChunk(b, "w", 0, bytes)}).ok());
  v1::BeginVersionResponse no_token = b;
  no_token.clear_upload_token();
  v1::VersionInfo info;
  RequireError(d.Commit(no_token, &info), grpc::StatusCode::PERMISSION_DENIED, "no upload token");
  RequireError(d.Abort(no_token), grpc::StatusCode::PERMISSION_DENIED, "upload token");
  CHECK(d.Status().staging_versions() == 1);
  REQUIRE(d.Commit(b, &info).ok());
}

TEST_CASE("finding 8: labels, names, tensor counts and staging versions are bounded") {
  TrainerDaemon d({"--max-staging-per-client", "3", "--max-tensors-per-version", "1000"});
  const std::string bytes = RandomBytes(64, 1);
  v1::Manifest m;
  *m.add_tensors() = Spec("w", bytes);
  v1::BeginVersionResponse b;
  // A 30 MiB label grew the daemon's heap outside the budget and its logs verbatim.
  grpc::Status label = d.Begin(m, &b, 0, std::string(30 << 20, '\n'));
  RequireError(label, grpc::StatusCode::INVALID_ARGUMENT, "label of 31457280 bytes is too long");
  CHECK(label.error_message().size() < 4096);
  // A 16 MiB name echoed back broke the client (metadata limit): now a short, clean error.
  v1::Manifest long_name;
  *long_name.add_tensors() = Spec(std::string(16 << 20, 'n'), bytes);
  grpc::Status name = d.Begin(long_name, &b);
  RequireError(name, grpc::StatusCode::INVALID_ARGUMENT, "has a name of 16777216 bytes");
  CHECK(name.error_message().size() < 4096);
  // 10^6 tensors.
  v1::Manifest many;
  for (int i = 0; i < 1000000; ++i)
    *many.add_tensors() = Huge("t" + std::to_string(i), v1::DTYPE_UINT8, {0}, 0);
  RequireError(d.Begin(many, &b), grpc::StatusCode::INVALID_ARGUMENT,
               "1000000 tensors; at most 1000");
  // Staging versions per client.
  std::vector<v1::BeginVersionResponse> held(3);
  for (auto& h : held) REQUIRE(d.Begin(m, &h).ok());
  RequireError(d.Begin(m, &b), grpc::StatusCode::RESOURCE_EXHAUSTED, "max_staging_per_client");
  for (auto& h : held) REQUIRE(d.Abort(h).ok());
  d.RequireClean();
}

TEST_CASE("finding 4: deeply nested safetensors headers are refused, the daemon stays up") {
  TrainerDaemon d;
  v1::VersionInfo info;
  for (const char* where : {"shape", "dtype", "data_offsets", "__metadata__"}) {
    INFO(where);
    std::string path = d.dir / (std::string(where) + ".safetensors");
    std::string deep =
        std::string(where) == "__metadata__"
            ? R"({"__metadata__":)" + std::string(90000, '[') + std::string(90000, ']') + "}"
            : std::string(R"({"w":{")") + where + "\":" + std::string(90000, '[') +
                  std::string(90000, ']') + "}}";
    REQUIRE(WriteRawSafetensors(path, deep, "").ok());
    RequireError(d.LoadFiles({path}, &info), grpc::StatusCode::INVALID_ARGUMENT,
                 "nests deeper than 8 levels");
  }
  d.RequireClean();
}

TEST_CASE("finding 5: LoadFiles of a FIFO or a device node is refused at once, never opened") {
  TrainerDaemon d({"--shutdown-grace", "1s"});
  const std::string fifo = d.dir / "fifo.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  v1::VersionInfo info;
  auto start = Clock::now();
  RequireError(d.LoadFiles({fifo}, &info), grpc::StatusCode::FAILED_PRECONDITION,
               "not a regular file");
  RequireError(d.LoadFiles({"/dev/zero"}, &info), grpc::StatusCode::FAILED_PRECONDITION,
               "not a regular file");
  CHECK(Clock::now() - start < 5s);
  d.RequireClean();
  // Nothing is stuck: SIGTERM ends the daemon promptly and cleanly.
  d.proc->Signal(SIGTERM);
  ExitInfo exit = d.proc->Wait(10s);
  CHECK(exit.exited);
  CHECK(exit.code == 0);
}

TEST_CASE("finding 12: LoadFiles paths are absolute, NUL-free, and errors leak no file bytes") {
  TrainerDaemon d;
  v1::VersionInfo info;
  const std::string good = d.dir / "good.safetensors";
  REQUIRE(WriteSafetensors(good, {{"a", DType::kFloat32, {4}, RandomBytes(16, 1)}}).ok());
  RequireError(d.LoadFiles({"good.safetensors"}, &info), grpc::StatusCode::INVALID_ARGUMENT,
               "is not absolute");
  RequireError(d.LoadFiles({good + std::string("\0/etc/shadow", 12)}, &info),
               grpc::StatusCode::INVALID_ARGUMENT, "has a NUL byte");
  // A secret file whose first 8 bytes would have come back as a "header length".
  const std::string secret = d.dir / "secret";
  {
    std::ofstream out(secret, std::ios::binary);
    out << "root:$6$0123456789abcdef:19000:0:99999:7:::\n";
  }
  ::chmod(secret.c_str(), 0600);
  grpc::Status s = d.LoadFiles({secret}, &info);
  RequireError(s, grpc::StatusCode::INVALID_ARGUMENT, "not a safetensors file");
  uint64_t leaked = 0;
  const std::string head = "root:$6$";
  for (int i = 7; i >= 0; --i) leaked = (leaked << 8) | static_cast<unsigned char>(head[i]);
  CHECK_FALSE(Contains(s.error_message(), std::to_string(leaked)));
  d.RequireClean();
}

TEST_CASE("finding 13: trailing bytes, gaps, unknown keys and NUL in headers are refused") {
  TrainerDaemon d;
  v1::VersionInfo info;
  struct Case {
    const char* name;
    std::string header;
    std::string data;
    const char* needle;
  };
  const std::string entry = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  const std::vector<Case> cases = {
      {"tail", entry, std::string(12, 'x'), "8 bytes after the last tensor"},
      {"gap",
       R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})",
       std::string(12, 'x'), "belong to no tensor"},
      {"unknown_key", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"crc":1}})",
       std::string(4, 'x'), "unknown key 'crc'"},
      {"nul", entry + std::string("\0{\"b\":1}", 8), std::string(4, 'x'), "NUL byte"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string path = d.dir / (std::string(c.name) + ".safetensors");
    REQUIRE(WriteRawSafetensors(path, c.header, c.data).ok());
    RequireError(d.LoadFiles({path}, &info), grpc::StatusCode::INVALID_ARGUMENT, c.needle);
  }
  // The exact packing loads.
  const std::string exact = d.dir / "exact.safetensors";
  REQUIRE(WriteRawSafetensors(exact, entry + "    ", std::string(4, 'x')).ok());
  REQUIRE(d.LoadFiles({exact}, &info).ok());
  CHECK(info.total_bytes() == 4);
}

TEST_CASE("finding 3: a version dropped during LoadFiles never lets the load write into another") {
  // A load of 96 MiB, one thread, dropped as soon as it is seen staging; a second version begun
  // at once would have been given the freed range while the first load's reads kept landing in it.
  TrainerDaemon d(
      {"--host-memory-budget", "256MiB", "--load-threads", "1", "--log-level", "error"});
  const std::string big = d.dir / "big.safetensors";
  REQUIRE(
      WriteSafetensors(big, {{"big", DType::kUint8, {96 << 20}, RandomBytes(96 << 20, 3)}}).ok());
  const std::string second_bytes = RandomBytes(96 << 20, 4);
  const uint64_t second_sum = XXH3_64bits(second_bytes.data(), second_bytes.size());
  int drops = 0;
  for (int round = 0; round < 5; ++round) {
    INFO("round " << round);
    std::atomic<bool> load_done{false};
    grpc::Status load_status;
    std::thread load([&] {
      v1::VersionInfo info;
      load_status = d.LoadFiles({big}, &info);
      load_done = true;
    });
    // Drop the load's version as soon as it stages, then push a second one of the same size.
    uint64_t dropped = 0;
    auto deadline = Clock::now() + 20s;
    while (!load_done && dropped == 0 && Clock::now() < deadline) {
      grpc::ClientContext ctx;
      ctx.set_deadline(In(5s));
      v1::ListVersionsResponse list;
      if (!d.admin->ListVersions(&ctx, v1::ListVersionsRequest(), &list).ok()) continue;
      for (const auto& v : list.versions()) {
        if (v.state() == v1::VERSION_STATE_STAGING && d.Drop(v.version()).ok()) {
          dropped = v.version();
        }
      }
    }
    uint64_t second = 0;
    if (dropped != 0) {
      v1::Manifest m;
      *m.add_tensors() = Spec("w", second_bytes);
      v1::BeginVersionResponse b;
      if (d.Begin(m, &b).ok()) {
        std::vector<v1::Chunk> chunks;
        for (size_t off = 0; off < second_bytes.size(); off += 4 << 20) {
          chunks.push_back(MakeChunk(b, "w", off, second_bytes.substr(off, 4 << 20)));
        }
        REQUIRE(d.Push(chunks).ok());
        v1::VersionInfo info;
        grpc::Status committed = d.Commit(b, &info);
        INFO(committed.error_message());
        CHECK(committed.ok());
        second = b.version();
      }
    }
    load.join();
    INFO("load: " << load_status.error_code() << " " << load_status.error_message());
    if (dropped != 0) {
      ++drops;
      CHECK_FALSE(load_status.ok());
    }
    if (second != 0) {
      v1::GetVersionResponse got;
      REQUIRE(d.Get(second, &got).ok());
      CHECK(got.manifest().tensors(0).xxh3() == second_sum);
      REQUIRE(d.Drop(second).ok());
    }
    // The load's own version, when it won the race, is committed; drop it for the next round.
    v1::StatusResponse s = d.Status();
    if (s.committed_versions() > 0) REQUIRE(d.Drop(s.latest_committed_version()).ok());
  }
  CHECK(drops > 0);  // the race was run, not only the load
  d.RequireClean();
}

TEST_CASE(
    "streams that carry no work are cancelled: a silent push, an Attach without its request") {
  // staging_timeout is also the longest a push stream may go without a chunk.
  TrainerDaemon d({"--staging-timeout", "1s"});
  REQUIRE(d.ready());
  const std::string bytes = RandomBytes(64, 9);
  v1::Manifest m;
  *m.add_tensors() = Spec("w", bytes);
  v1::BeginVersionResponse b;
  REQUIRE(d.Begin(m, &b).ok());

  // A push stream that sends half a tensor, then nothing.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(30s));
    v1::PushChunksResponse response;
    auto writer = d.trainer->PushChunks(&ctx, &response);
    REQUIRE(writer->Write(MakeChunk(b, "w", 0, bytes.substr(0, 32))));
    const auto start = Clock::now();
    grpc::Status s = writer->Finish();  // no WritesDone: the stream stays open until cancelled
    const auto took = Clock::now() - start;
    INFO(s.error_message());
    CHECK(s.error_code() == grpc::StatusCode::CANCELLED);
    CHECK(took < 10s);
  }
  d.RequireClean();  // the version of the silent stream was aborted

  // A silent stream with nothing written at all, and an Attach stream without its AttachRequest.
  auto consumer = v1::Consumer::NewStub(d.channel);
  grpc::ClientContext push_ctx, attach_ctx;
  push_ctx.set_deadline(In(30s));
  attach_ctx.set_deadline(In(30s));
  v1::PushChunksResponse response;
  const auto start = Clock::now();
  auto silent_push = d.trainer->PushChunks(&push_ctx, &response);
  auto silent_attach = consumer->Attach(&attach_ctx);
  grpc::Status attach = silent_attach->Finish();
  grpc::Status push = silent_push->Finish();
  INFO(attach.error_message() << " / " << push.error_message());
  CHECK(attach.error_code() == grpc::StatusCode::CANCELLED);
  CHECK(push.error_code() == grpc::StatusCode::CANCELLED);
  CHECK(Clock::now() - start < 20s);
  // The watchdog logs right after it cancels the stream: wait (bounded) for the line.
  CHECK(testing::WaitUntil(
      [&] {
        return Contains(d.proc->Stderr(), "before its AttachRequest: nothing received for");
      },
      5s));
  // The daemon still answers.
  d.Status();
}

}  // namespace
}  // namespace ckpt::testing
