// Start-up warm-up of the version store (issue 10 point 10), against the real daemon (host
// backend): the daemon serves and answers Status at once while the budget's memory is made ready
// in the background; a version that needs more than is ready waits for it (store_ready_wait) or is
// refused with UNAVAILABLE; a push succeeds once the memory is there; SIGTERM during warm-up is
// prompt. The testing knob CKPT_TEST_WARMUP_PACE slows warm-up down so that it can be watched.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "proto/admin.grpc.pb.h"
#include "proto/trainer.grpc.pb.h"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/trainer_daemon.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1 << 20;

SpawnOptions Pace(const std::string& pace) {
  SpawnOptions options;
  options.env = {{"CKPT_TEST_WARMUP_PACE", pace}};
  return options;
}

// Status, polled until `done` holds or `timeout` passes; the last answer.
template <typename Done>
v1::StatusResponse PollStatus(TrainerDaemon& d, Done done, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  v1::StatusResponse s = d.Status();
  while (!done(s) && Clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
    s = d.Status();
  }
  return s;
}

v1::Manifest OneTensor(const std::string& bytes) {
  v1::Manifest m;
  *m.add_tensors() = Spec("w", bytes);
  return m;
}

TEST_CASE("the daemon answers Status while its store warms up; a push waits for memory") {
  // 64 MiB in 1 MiB pieces, 150 ms apart: about 10 s of warm-up, 40 MiB after about 6 s.
  TrainerDaemon d(
      {"--host-memory-budget", "64MiB", "--store-ready-wait", "9s", "--log-level", "info"},
      Pace("1MiB/150ms"));
  CHECK(Contains(*d.ready_message, "STATUS=serving on unix:" + d.socket));
  CHECK(Contains(*d.ready_message, "store getting memory ready"));

  const auto asked = Clock::now();
  v1::StatusResponse s = d.Status();
  CHECK(Clock::now() - asked < 2s);
  CHECK(s.host_memory_budget_bytes() == 64 * kMiB);
  CHECK_FALSE(s.store_ready());
  CHECK(s.store_ready_bytes() < 64 * kMiB);
  CHECK(s.store_error().empty());
  CHECK_FALSE(s.store_pinned());

  RunResult text = d.Ctl({"status"});
  INFO(text.err);
  REQUIRE(text.exit.code == 0);
  CHECK(Contains(text.out, "store:        getting memory ready: "));
  RunResult json = d.Ctl({"status", "--json"});
  REQUIRE(json.exit.code == 0);
  nlohmann::json j = nlohmann::json::parse(json.out);
  CHECK(j["store_ready"] == false);
  CHECK(j["store_ready_bytes"].get<uint64_t>() < 64 * kMiB);
  CHECK(j.contains("store_error"));
  CHECK(j.contains("store_warmup_seconds"));

  // 40 MiB: more than is ready now. BeginVersion waits until it is (well within store_ready_wait),
  // then the version is placed in memory that is ready: the push and the commit succeed.
  const std::string bytes(40 * kMiB, '\x5a');
  v1::BeginVersionResponse b;
  const uint64_t ready_before = d.Status().store_ready_bytes();
  REQUIRE(ready_before < 40 * kMiB);
  grpc::Status begun = d.Begin(OneTensor(bytes), &b);
  INFO("daemon stderr: " << d.proc->Stderr());
  REQUIRE(begun.ok());
  CHECK(d.Status().store_ready_bytes() >= 40 * kMiB);
  std::vector<v1::Chunk> chunks;
  for (uint64_t off = 0; off < bytes.size(); off += 8 * kMiB) {
    chunks.push_back(MakeChunk(b, "w", off, bytes.substr(off, 8 * kMiB)));
  }
  REQUIRE(d.Push(chunks).ok());
  v1::VersionInfo info;
  grpc::Status committed = d.Commit(b, &info);
  INFO(committed.error_message());
  REQUIRE(committed.ok());
  CHECK(info.state() == v1::VERSION_STATE_COMMITTED);

  s = PollStatus(
      d, [](const v1::StatusResponse& r) { return r.store_ready(); }, 30s);
  CHECK(s.store_ready());
  CHECK(s.store_ready_bytes() == 64 * kMiB);
  CHECK(s.store_warmup_seconds() > 0.5);
  CHECK(s.latest_committed_version() == b.version());
  text = d.Ctl({"status"});
  CHECK(Contains(text.out, "store:        ready (64.0 MiB in "));
  CHECK(Contains(d.proc->Stderr(), "version store ready: 64.0 MiB of shared host memory"));
  CHECK(d.notify.WaitFor("store ready", 10s).has_value());
}

TEST_CASE("with store_ready_wait 0s a version that does not fit yet is refused with UNAVAILABLE") {
  // One piece, then a pause of 30 s after each: nothing here waits for it, and a SIGTERM that
  // waited for the pause to end would be seen.
  TrainerDaemon d({"--host-memory-budget", "64MiB", "--store-ready-wait", "0s", "--log-level",
                   "info", "--shutdown-grace", "1s"},
                  Pace("1MiB/30s"));
  v1::StatusResponse s = PollStatus(
      d, [](const v1::StatusResponse& r) { return r.store_ready_bytes() >= kMiB; }, 20s);
  REQUIRE(s.store_ready_bytes() >= kMiB);
  REQUIRE(s.store_ready_bytes() < 32 * kMiB);

  v1::BeginVersionResponse b;
  const auto asked = Clock::now();
  grpc::Status refused = d.Begin(OneTensor(std::string(32 * kMiB, '\x01')), &b);
  CHECK(Clock::now() - asked < 5s);
  RequireError(refused, grpc::StatusCode::UNAVAILABLE, "the store is still getting memory ready: ");
  CHECK(Contains(refused.error_message(), " of 64.0 MiB ready ("));
  CHECK(Contains(refused.error_message(), "; retry"));
  CHECK(d.Status().staging_versions() == 0);
  // ckptctl push (LoadFiles) says the same, as the daemon's answer, not as a connection problem.
  const std::string file = d.dir / "big.safetensors";
  REQUIRE(WriteSafetensors(file, {{"w", DType::kUint8, {32 << 20}, std::string(32 * kMiB, '\x01')}})
              .ok());
  RunResult push = d.Ctl({"push", file});
  INFO("ckptctl push: " << push.err);
  CHECK(push.exit.code == 1);
  CHECK(Contains(push.err, "the store is still getting memory ready: "));
  CHECK(Contains(push.err, "; retry"));
  CHECK_FALSE(Contains(push.err, "cannot reach"));
  CHECK(d.Status().staging_versions() == 0);

  // What fits in the ready part is admitted now, and committed.
  const std::string small(256 << 10, '\x02');
  REQUIRE(d.Begin(OneTensor(small), &b).ok());
  REQUIRE(d.Push({MakeChunk(b, "w", 0, small)}).ok());
  v1::VersionInfo info;
  REQUIRE(d.Commit(b, &info).ok());

  // SIGTERM during warm-up: stopped between two pieces (the pause ends at once), a clean exit.
  // (gRPC's shutdown may take shutdown_grace while this test's channel stays open.)
  const auto stop = Clock::now();
  d.proc->Signal(SIGTERM);
  ExitInfo e = d.proc->Wait(20s);
  INFO("daemon stderr: " << d.proc->Stderr());
  CHECK(Clock::now() - stop < 5s);
  CHECK(e.exited);
  CHECK(e.code == 0);
  CHECK(Contains(d.proc->Stderr(), "warm-up stopped with"));
}

TEST_CASE("a bad CKPT_TEST_WARMUP_PACE fails start-up naming it") {
  TempDir dir;
  RunResult r = Run({Runfile("daemon/ckpt-engined"), "--backend", "host", "--listen-unix",
                     dir / "d.sock", "--host-memory-budget", "16MiB"},
                    Pace("fast"));
  CHECK(r.exit.code == 2);
  CHECK(Contains(r.err, "CKPT_TEST_WARMUP_PACE"));
}

}  // namespace
}  // namespace ckpt::testing
