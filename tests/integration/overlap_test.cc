// Issue 12: a local push that an update follows (push and update: LocalPushBegin.update; or every
// local push with auto_update) is sent to the workers while it arrives (docs/local-push.md). On the
// host backend, against the real daemon, with an in-process worker (client::Consumer, verifying
// every tensor's XXH3-64): buckets whose tensors are in and verified go out before the commit,
// VersionDone only after it, nothing unverified ever reaches the worker, and a push that fails
// after buckets went out leaves the worker without the version.
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "client/consumer.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "common/scoped_fd.h"
#include "tests/testing/state_dict.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/trainer_daemon.h"

namespace ckpt::testing {
namespace {

using namespace std::chrono_literals;

std::string Bytes(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed * 7) & 0xff);
  return s;
}

uint64_t Xxh3(const std::string& bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

ScopedFd MemfdWith(const std::string& bytes) {
  ScopedFd fd(::memfd_create("overlap-test", MFD_CLOEXEC));
  REQUIRE(fd.valid());
  REQUIRE(::write(fd.get(), bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  return fd;
}

// A host-backend daemon with 64 KiB buckets and one worker attached in this process.
struct Overlap {
  explicit Overlap(std::vector<std::string> extra = {})
      : d([&] {
          std::vector<std::string> args = {
              "--host-memory-budget", "16MiB", "--bucket-bytes", "64KiB",
              "--staging-timeout",    "30s",   "--log-level",    "info"};
          args.insert(args.end(), extra.begin(), extra.end());
          return args;
        }()) {
    endpoint = *client::ResolveEndpoint(d.socket, "");
    client::ConsumerOptions options;
    options.engine = "overlap-test";
    options.verify_checksums = true;
    auto c = client::Consumer::Attach(endpoint, options);
    INFO(c.status().ToString());
    REQUIRE(c.ok());
    worker = *std::move(c);
    REQUIRE(WaitUntil([&] { return d.Status().workers_size() == 1; }, 20s));
  }

  // The next event for the worker; DEADLINE_EXCEEDED after `wait`.
  absl::StatusOr<client::ConsumerEvent> Next(absl::Duration wait = absl::Seconds(20)) {
    return worker->Next(absl::Now() + wait);
  }
  // Reads buckets (acking each, checking every tensor's bytes against `want`) until those named
  // in `names` all came; fails on VersionDone or an unknown tensor.
  void ReceiveTensors(uint64_t version, const std::map<std::string, std::string>& want,
                      std::vector<std::string> names) {
    while (!names.empty()) {
      auto e = Next();
      INFO(e.status().ToString());
      REQUIRE(e.ok());
      REQUIRE(e->kind == client::ConsumerEvent::Kind::kBucket);
      CHECK(e->version == version);
      for (const client::ReceivedTensor& t : e->tensors) {
        INFO(t.name);
        auto it = want.find(t.name);
        REQUIRE(it != want.end());
        REQUIRE(t.bytes == it->second.size());
        CHECK(std::memcmp(t.data, it->second.data(), t.bytes) == 0);
        CHECK(t.xxh3 == Xxh3(it->second));
        received.push_back(t.name);
        names.erase(std::remove(names.begin(), names.end(), t.name), names.end());
      }
      REQUIRE(worker->Ack(e->version, e->bucket).ok());
    }
  }
  // The next event is VersionDone of `version`: answers it (the whole version loaded), then waits
  // until the daemon's update of it succeeded; its outcome.
  v1::UpdateOutcome Finish(uint64_t version) {
    auto done = Next();
    INFO(done.status().ToString());
    REQUIRE(done.ok());
    REQUIRE(done->kind == client::ConsumerEvent::Kind::kVersionDone);
    CHECK(done->version == version);
    REQUIRE(worker->Loaded(version, 3, 0).ok());
    return AwaitUpdate(version, "succeeded");
  }
  // Waits until the daemon's last update is `state` ("succeeded", "failed").
  v1::UpdateOutcome AwaitUpdate(uint64_t version, const std::string& state) {
    v1::UpdateOutcome last;
    REQUIRE(WaitUntil(
        [&] {
          last = d.Status().last_update();
          return last.version() == version && last.state() == state;
        },
        20s));
    return last;
  }
  v1::WorkerStatus Worker() {
    v1::StatusResponse s = d.Status();
    REQUIRE(s.workers_size() == 1);
    return s.workers(0);
  }

  TrainerDaemon d;
  client::Endpoint endpoint;
  std::unique_ptr<client::Consumer> worker;
  std::vector<std::string> received;  // tensors handed to the worker, in order
};

// a: 256 KiB (four whole buckets of its own), b and c: 24 KiB each (one bucket together).
struct Tensors {
  std::string a = Bytes(256 << 10, 1), b = Bytes(24 << 10, 2), c = Bytes(24 << 10, 3);
  v1::Manifest Manifest() const {
    v1::Manifest m;
    *m.add_tensors() = Spec("a", a);
    *m.add_tensors() = Spec("b", b);
    *m.add_tensors() = Spec("c", c);
    for (auto& t : *m.mutable_tensors()) t.clear_xxh3();
    return m;
  }
  std::map<std::string, std::string> All() const { return {{"a", a}, {"b", b}, {"c", c}}; }
};

TEST_CASE(
    "push and update: verified tensors go to the worker before the commit, VersionDone after") {
  Overlap o;
  Tensors t;
  ScopedFd w1 = MemfdWith(t.a), w2 = MemfdWith(t.b + t.c);
  LocalStream ls(o.d);
  ls.update = true;
  const uint64_t version = ls.Begin(t.Manifest());
  REQUIRE(version > 0);
  REQUIRE(ls.Window({w1.get()}, {{0, 0, t.a.size()}}, "", {{0, Xxh3(t.a)}}));
  // a is in and verified: its four buckets reach the worker while the version is still staging
  // (the rest of it is not even sent yet).
  o.ReceiveTensors(version, t.All(), {"a"});
  v1::GetVersionResponse got;
  REQUIRE(o.d.Get(version, &got).ok());
  CHECK(got.info().state() == v1::VERSION_STATE_STAGING);
  CHECK(o.Next(absl::Milliseconds(200)).status().code() == absl::StatusCode::kDeadlineExceeded);
  REQUIRE(ls.Window({w2.get()}, {{1, 0, t.b.size()}, {2, 0, t.c.size()}}, "",
                    {{1, Xxh3(t.b)}, {2, Xxh3(t.c)}}));
  o.ReceiveTensors(version, t.All(), {"b", "c"});
  // Every bucket is out, but VersionDone waits for the commit.
  CHECK(o.Next(absl::Milliseconds(200)).status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(o.Worker().loaded_version() == 0);
  auto info = ls.Commit({Xxh3(t.a), Xxh3(t.b), Xxh3(t.c)});
  REQUIRE(info.has_value());
  CHECK(ls.Finish().ok());
  const v1::UpdateOutcome outcome = o.Finish(version);
  CHECK(outcome.trigger() == "push");
  CHECK(outcome.result().buckets() == 5);
  CHECK(o.Worker().loaded_version() == version);
  CHECK(o.Worker().mixed_version() == 0);
  CHECK(o.received == std::vector<std::string>{"a", "b", "c"});
  auto admin = client::DaemonClient::Connect(o.endpoint);
  REQUIRE(admin.ok());
  auto loaded = (*admin)->WaitLoaded(version, absl::Seconds(20));
  REQUIRE(loaded.ok());
  CHECK(loaded->loaded());
}

TEST_CASE("push and update: the buckets go in the order their tensors come in") {
  Overlap o;
  Tensors t;
  ScopedFd w1 = MemfdWith(t.b + t.c), w2 = MemfdWith(t.a);
  LocalStream ls(o.d);
  ls.update = true;
  const uint64_t version = ls.Begin(t.Manifest());
  REQUIRE(version > 0);
  // b and c first (they are last in the plan), a after.
  REQUIRE(ls.Window({w1.get()}, {{1, 0, t.b.size()}, {2, 0, t.c.size()}}, "",
                    {{1, Xxh3(t.b)}, {2, Xxh3(t.c)}}));
  o.ReceiveTensors(version, t.All(), {"b", "c"});
  REQUIRE(ls.Window({w2.get()}, {{0, 0, t.a.size()}}, "", {{0, Xxh3(t.a)}}));
  o.ReceiveTensors(version, t.All(), {"a"});
  REQUIRE(ls.Commit({Xxh3(t.a), Xxh3(t.b), Xxh3(t.c)}).has_value());
  CHECK(ls.Finish().ok());
  o.Finish(version);
  CHECK(o.received == std::vector<std::string>{"b", "c", "a"});
}

TEST_CASE(
    "push and update: a push that fails after buckets went out leaves the worker without it") {
  Overlap o;
  Tensors t;
  ScopedFd w1 = MemfdWith(t.a), w2 = MemfdWith(t.b + t.c);
  auto ls = std::make_unique<LocalStream>(o.d);
  ls->update = true;
  const uint64_t version = ls->Begin(t.Manifest());
  REQUIRE(version > 0);
  REQUIRE(ls->Window({w1.get()}, {{0, 0, t.a.size()}}, "", {{0, Xxh3(t.a)}}));
  o.ReceiveTensors(version, t.All(), {"a"});
  std::string why;
  SECTION("a window whose tensor differs from the trainer's checksum: never sent") {
    CHECK_FALSE(ls->Window({w2.get()}, {{1, 0, t.b.size()}, {2, 0, t.c.size()}}, "",
                           {{1, Xxh3(t.b) ^ 1}, {2, Xxh3(t.c)}}));
    RequireError(ls->Finish(), grpc::StatusCode::FAILED_PRECONDITION,
                 "'b' has xxh3 " + absl::StrFormat("%016x", Xxh3(t.b)));
    why = "has xxh3";
  }
  SECTION("the trainer goes away") {
    ls->ctx.TryCancel();
    (void)ls->Finish();
    ls.reset();
    why = "aborted";
  }
  SECTION("an operator drops the staging version") {
    REQUIRE(o.d.Drop(version).ok());
    const v1::UpdateOutcome failed = o.AwaitUpdate(version, "failed");
    CHECK(Contains(failed.error(), "was aborted (Trainer.Abort, Drop"));
    ls->ctx.TryCancel();
    (void)ls->Finish();
    ls.reset();
    why = "was aborted";
  }
  SECTION("every bucket went out, but the commit's checksum differs") {
    REQUIRE(ls->Window({w2.get()}, {{1, 0, t.b.size()}, {2, 0, t.c.size()}}, "",
                       {{1, Xxh3(t.b)}, {2, Xxh3(t.c)}}));
    o.ReceiveTensors(version, t.All(), {"b", "c"});
    CHECK_FALSE(ls->Commit({Xxh3(t.a) ^ 1, Xxh3(t.b), Xxh3(t.c)}).has_value());
    RequireError(ls->Finish(), grpc::StatusCode::FAILED_PRECONDITION, "checksum mismatch");
    why = "checksum mismatch";
  }
  const v1::UpdateOutcome outcome = o.AwaitUpdate(version, "failed");
  INFO(outcome.error());
  CHECK(Contains(outcome.error(), "the push failed"));
  CHECK(Contains(outcome.error(), why));
  // No VersionDone ever came: the worker still holds nothing, and reports this version as mixed.
  CHECK(o.Next(absl::Milliseconds(200)).status().code() == absl::StatusCode::kDeadlineExceeded);
  const v1::WorkerStatus w = o.Worker();
  CHECK(w.loaded_version() == 0);
  CHECK(w.mixed_version() == version);
  CHECK_FALSE(w.last_update_ok());
  // Nothing unverified reached it: of b and c, only what was verified.
  if (why != "checksum mismatch") CHECK(o.received == std::vector<std::string>{"a"});
  v1::GetVersionResponse got;
  CHECK(o.d.Get(version, &got).error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(o.d.Status().staging_versions() == 0);

  // The next push and update goes through.
  ScopedFd w3 = MemfdWith(t.a + t.b + t.c);
  LocalStream again(o.d);
  again.update = true;
  const uint64_t next = again.Begin(t.Manifest());
  REQUIRE(next > version);
  REQUIRE(again.Window({w3.get()}, {{0, 0, t.a.size()}, {1, 0, t.b.size()}, {2, 0, t.c.size()}}, "",
                       {{0, Xxh3(t.a)}, {1, Xxh3(t.b)}, {2, Xxh3(t.c)}}));
  REQUIRE(again.Commit({Xxh3(t.a), Xxh3(t.b), Xxh3(t.c)}).has_value());
  CHECK(again.Finish().ok());
  o.received.clear();
  o.ReceiveTensors(next, t.All(), {"a", "b", "c"});
  o.Finish(next);
  CHECK(o.Worker().loaded_version() == next);
  CHECK(o.Worker().mixed_version() == 0);
}

TEST_CASE(
    "push and update: a push that stalls gives the update up; the version follows its commit") {
  Overlap o({"--ack-timeout", "1s"});
  Tensors t;
  ScopedFd w1 = MemfdWith(t.a), w2 = MemfdWith(t.b + t.c);
  LocalStream ls(o.d);
  ls.update = true;
  const uint64_t version = ls.Begin(t.Manifest());
  REQUIRE(version > 0);
  REQUIRE(ls.Window({w1.get()}, {{0, 0, t.a.size()}}, "", {{0, Xxh3(t.a)}}));
  o.ReceiveTensors(version, t.All(), {"a"});
  // Nothing more for longer than ack_timeout: the update stops (the worker reports it mixed).
  const v1::UpdateOutcome failed = o.AwaitUpdate(version, "failed");
  CHECK(Contains(failed.error(), "its push brought nothing new for 1s"));
  CHECK(o.Worker().mixed_version() == version);
  // The push goes on and commits: the whole version then goes out again, and is loaded.
  REQUIRE(ls.Window({w2.get()}, {{1, 0, t.b.size()}, {2, 0, t.c.size()}}, "",
                    {{1, Xxh3(t.b)}, {2, Xxh3(t.c)}}));
  REQUIRE(ls.Commit({Xxh3(t.a), Xxh3(t.b), Xxh3(t.c)}).has_value());
  CHECK(ls.Finish().ok());
  o.received.clear();
  o.ReceiveTensors(version, t.All(), {"a", "b", "c"});
  CHECK(o.Finish(version).trigger() == "auto_update");
  CHECK(o.Worker().loaded_version() == version);
  CHECK(o.Worker().mixed_version() == 0);
}

TEST_CASE("push and update never sends a version older than one the worker was sent") {
  Overlap o;
  Tensors t;
  ScopedFd w = MemfdWith(t.a + t.b + t.c);
  const std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> parts = {
      {0, 0, t.a.size()}, {1, 0, t.b.size()}, {2, 0, t.c.size()}};
  const std::vector<std::pair<uint32_t, uint64_t>> ended = {
      {0, Xxh3(t.a)}, {1, Xxh3(t.b)}, {2, Xxh3(t.c)}};
  // The older push begins first, and waits; the newer one overlaps nothing (one overlapped update
  // at a time) and goes after its commit.
  LocalStream older(o.d), newer(o.d);
  older.update = newer.update = true;
  const uint64_t v_old = older.Begin(t.Manifest());
  const uint64_t v_new = newer.Begin(t.Manifest());
  REQUIRE(v_new > v_old);
  REQUIRE(newer.Window({w.get()}, parts, "", ended));
  REQUIRE(newer.Commit({Xxh3(t.a), Xxh3(t.b), Xxh3(t.c)}).has_value());
  CHECK(newer.Finish().ok());
  o.ReceiveTensors(v_new, t.All(), {"a", "b", "c"});
  o.Finish(v_new);
  // Now the older push arrives and commits: the worker is never sent it.
  REQUIRE(older.Window({w.get()}, parts, "", ended));
  REQUIRE(older.Commit({Xxh3(t.a), Xxh3(t.b), Xxh3(t.c)}).has_value());
  CHECK(older.Finish().ok());
  CHECK(o.Next(absl::Milliseconds(500)).status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(o.Worker().loaded_version() == v_new);
  CHECK(o.d.Status().last_update().version() == v_new);
}

TEST_CASE("a window's list of ended tensors is checked") {
  Overlap o;
  Tensors t;
  ScopedFd w = MemfdWith(t.a);
  LocalStream ls(o.d);
  ls.update = true;
  REQUIRE(ls.Begin(t.Manifest()) > 0);
  SECTION("a tensor with bytes still to come") {
    CHECK_FALSE(ls.Window({w.get()}, {{0, 0, 1000}}, "", {{0, Xxh3(t.a.substr(0, 1000))}}));
    RequireError(ls.Finish(), grpc::StatusCode::INVALID_ARGUMENT,
                 "ended tensor 0: 'a' still has bytes to come");
  }
  SECTION("an index past the manifest") {
    CHECK_FALSE(ls.Window({w.get()}, {{0, 0, t.a.size()}}, "", {{3, 1}}));
    RequireError(ls.Finish(), grpc::StatusCode::INVALID_ARGUMENT,
                 "ended tensor 0: index 3 is past the manifest's 3 tensors");
  }
  // Nothing went to the worker.
  CHECK(o.Next(absl::Milliseconds(200)).status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(o.d.Status().staging_versions() == 0);
}

TEST_CASE("a local push's version takes no chunk and no Commit through its upload token") {
  TrainerDaemon d({"--host-memory-budget", "16MiB", "--staging-timeout", "30s"});
  Tensors t;
  LocalStream ls(d);
  v1::LocalPushBegun begun;
  const uint64_t version = ls.Begin(t.Manifest(), {}, &begun);
  REQUIRE(version > 0);
  v1::BeginVersionResponse b;
  b.set_version(version);
  b.set_upload_token(begun.upload_token());
  RequireError(d.Push({MakeChunk(b, "b", 0, t.b)}), grpc::StatusCode::FAILED_PRECONDITION,
               "only that stream writes it");
  v1::VersionInfo info;
  RequireError(d.Commit(b, &info), grpc::StatusCode::FAILED_PRECONDITION,
               "only that stream commits it");
  // The stream itself goes on.
  ScopedFd w = MemfdWith(t.a + t.b + t.c);
  REQUIRE(ls.Window({w.get()}, {{0, 0, t.a.size()}, {1, 0, t.b.size()}, {2, 0, t.c.size()}}));
  REQUIRE(ls.Commit({Xxh3(t.a), Xxh3(t.b), Xxh3(t.c)}).has_value());
  CHECK(ls.Finish().ok());
}

TEST_CASE("push and update through the C++ client; auto_update sends every local push so") {
  const bool auto_update = GENERATE(false, true);
  INFO("auto_update " << auto_update);
  std::vector<std::string> extra;
  if (auto_update) extra = {"--auto-update", "true"};
  Overlap o(extra);
  StateDict m;
  m.Add("embed", DType::kBfloat16, {512, 300}, 1);  // 300 KiB: split over buckets
  for (int i = 0; i < 6; ++i) m.Add("layer." + std::to_string(i), DType::kFloat32, {40, 100}, i);
  m.Add("empty", DType::kFloat32, {0, 4}, 9);
  m.Add("step", DType::kInt64, {}, 10);
  auto trainer = client::TrainerClient::Connect(o.endpoint);
  REQUIRE(trainer.ok());
  client::PushOptions options;
  options.update = !auto_update;
  options.window_bytes = 1 << 20;
  auto info = (*trainer)->PushTensors(m.views, options);
  INFO(info.status().ToString());
  REQUIRE(info.ok());
  CHECK(info->transport() == "local");
  // The worker takes what comes (the buckets may have gone out before the commit, or after).
  uint64_t tensors = 0;
  for (;;) {
    auto e = o.Next();
    INFO(e.status().ToString());
    REQUIRE(e.ok());
    CHECK(e->version == info->version());
    if (e->kind == client::ConsumerEvent::Kind::kVersionDone) break;
    for (const client::ReceivedTensor& t : e->tensors) {
      INFO(t.name);
      const client::TensorView* view = nullptr;
      for (const client::TensorView& v : m.views) {
        if (v.name == t.name) view = &v;
      }
      REQUIRE(view != nullptr);
      REQUIRE(t.bytes == view->bytes);
      CHECK(std::memcmp(t.data, view->data, t.bytes) == 0);
      ++tensors;
    }
    REQUIRE(o.worker->Ack(e->version, e->bucket).ok());
  }
  CHECK(tensors == m.views.size());
  REQUIRE(o.worker->Loaded(info->version(), tensors, 0).ok());
  auto admin = client::DaemonClient::Connect(o.endpoint);
  REQUIRE(admin.ok());
  auto loaded = (*admin)->WaitLoaded(info->version(), absl::Seconds(20));
  REQUIRE(loaded.ok());
  CHECK(loaded->loaded());
  CHECK(loaded->update().trigger() == (auto_update ? "auto_update" : "push"));
  // Over gRPC the update is refused before anything is begun.
  options.update = true;
  options.transport = client::Transport::kGrpc;
  auto grpc = (*trainer)->PushTensors(m.views, options);
  CHECK(grpc.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(std::string(grpc.status().message()), "needs the local path"));
}

}  // namespace
}  // namespace ckpt::testing
