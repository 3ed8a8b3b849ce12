// PeerSession (proved envelopes) and the rendezvous store, and a Gloo group over it.
#include "daemon/cluster/peer_session.h"

#include <catch2/catch.hpp>
#include <thread>

#include "daemon/cluster/peer_proof.h"
#include "daemon/cluster/rendezvous.h"
#include "daemon/transfer/gloo_group.h"

namespace ckpt::daemon {
namespace {

const std::string kSecret(40, 's');

v1::RendezvousRequest Request(const std::string& key) {
  v1::RendezvousRequest r;
  r.set_set(true);
  r.set_key(key);
  r.set_value("value of " + key);
  return r;
}

TEST_CASE("envelopes go both ways and carry their messages") {
  PeerSession caller(kSecret, "MemberUpdate", PeerSession::Side::kCaller);
  PeerSession callee(kSecret, "MemberUpdate", PeerSession::Side::kCallee);
  for (int i = 0; i < 3; ++i) {
    v1::PeerEnvelope e;
    REQUIRE(caller.Seal(Request("k" + std::to_string(i)), &e).ok());
    CHECK(e.nonce().size() == (i == 0 ? kPeerNonceBytes : 0));
    v1::RendezvousRequest got;
    REQUIRE(callee.Open(e, &got, "a request").ok());
    CHECK(got.key() == "k" + std::to_string(i));
    REQUIRE(callee.Seal(Request("r" + std::to_string(i)), &e).ok());
    REQUIRE(caller.Open(e, &got, "an answer").ok());
    CHECK(got.key() == "r" + std::to_string(i));
  }
}

TEST_CASE("a changed, reordered, replayed or foreign envelope is refused before parsing") {
  PeerSession caller(kSecret, "MemberUpdate", PeerSession::Side::kCaller);
  std::vector<v1::PeerEnvelope> sent(3);
  for (int i = 0; i < 3; ++i) REQUIRE(caller.Seal(Request(std::to_string(i)), &sent[i]).ok());
  v1::RendezvousRequest got;
  SECTION("changed body") {
    PeerSession callee(kSecret, "MemberUpdate", PeerSession::Side::kCallee);
    v1::PeerEnvelope bad = sent[0];
    bad.mutable_body()->back() ^= 1;
    CHECK(absl::IsUnauthenticated(callee.Open(bad, &got, "x")));
  }
  SECTION("another secret") {
    PeerSession callee(std::string(40, 't'), "MemberUpdate", PeerSession::Side::kCallee);
    CHECK(absl::IsUnauthenticated(callee.Open(sent[0], &got, "x")));
  }
  SECTION("another method") {
    PeerSession callee(kSecret, "Rendezvous", PeerSession::Side::kCallee);
    CHECK(absl::IsUnauthenticated(callee.Open(sent[0], &got, "x")));
  }
  SECTION("no nonce in the first message, or a second nonce later") {
    PeerSession callee(kSecret, "MemberUpdate", PeerSession::Side::kCallee);
    v1::PeerEnvelope bare = sent[0];
    bare.clear_nonce();
    CHECK(absl::IsUnauthenticated(callee.Open(bare, &got, "x")));
    PeerSession callee2(kSecret, "MemberUpdate", PeerSession::Side::kCallee);
    REQUIRE(callee2.Open(sent[0], &got, "x").ok());
    v1::PeerEnvelope renonced = sent[1];
    renonced.set_nonce(sent[0].nonce());
    CHECK(absl::IsUnauthenticated(callee2.Open(renonced, &got, "x")));
  }
  SECTION("skipped or reordered") {
    PeerSession callee(kSecret, "MemberUpdate", PeerSession::Side::kCallee);
    REQUIRE(callee.Open(sent[0], &got, "x").ok());
    CHECK(absl::IsUnauthenticated(callee.Open(sent[2], &got, "x")));
  }
  SECTION("a recorded call replayed: the callee speaks first, so the start is bound to its nonce") {
    // The original exchange, as MemberUpdate runs it: the callee's hello, then the caller's start.
    PeerSession callee(kSecret, "MemberUpdate", PeerSession::Side::kCallee);
    PeerSession caller2(kSecret, "MemberUpdate", PeerSession::Side::kCaller);
    v1::PeerEnvelope hello, start;
    REQUIRE(callee.Seal(Request("hello"), &hello).ok());
    REQUIRE(caller2.Open(hello, &got, "x").ok());
    REQUIRE(caller2.Seal(Request("start"), &start).ok());
    REQUIRE(callee.Open(start, &got, "x").ok());
    CHECK(got.key() == "start");
    // Replayed to the same member later: it says hello with a fresh nonce; the recorded start
    // proves the old one.
    PeerSession fresh(kSecret, "MemberUpdate", PeerSession::Side::kCallee);
    v1::PeerEnvelope fresh_hello;
    REQUIRE(fresh.Seal(Request("hello"), &fresh_hello).ok());
    CHECK(fresh_hello.nonce() != hello.nonce());
    CHECK(absl::IsUnauthenticated(fresh.Open(start, &got, "x")));
  }
}

TEST_CASE("insecure sessions carry no proofs and check none") {
  PeerSession caller("", "Rendezvous", PeerSession::Side::kCaller);
  PeerSession callee("", "Rendezvous", PeerSession::Side::kCallee);
  v1::PeerEnvelope e;
  REQUIRE(caller.Seal(Request("k"), &e).ok());
  CHECK(e.proof().empty());
  v1::RendezvousRequest got;
  REQUIRE(callee.Open(e, &got, "x").ok());
  CHECK(got.key() == "k");
  e.set_body("\xff\xff\xff");
  CHECK(absl::IsInvalidArgument(callee.Open(e, &got, "x")));
}

TEST_CASE("the rendezvous store takes keys of open ids only, bounded") {
  RendezvousStore store;
  CHECK(absl::IsPermissionDenied(store.Set("abc/k", "v")));
  store.Open("abc");
  REQUIRE(store.Set("abc/k", "v").ok());
  CHECK(store.Set("abc/k", "v").ok());  // a retried call
  CHECK(absl::IsAlreadyExists(store.Set("abc/k", "w")));
  CHECK(absl::IsPermissionDenied(store.Set("abd/k", "v")));
  CHECK(absl::IsPermissionDenied(store.Set("nokey", "v")));
  CHECK(absl::IsInvalidArgument(store.Set("abc/" + std::string(300, 'x'), "v")));
  CHECK(absl::IsInvalidArgument(
      store.Set("abc/big", std::string(kMaxRendezvousValueBytes + 1, 'v'))));
  auto got = store.Get({"abc/k"}, absl::Now() + absl::Seconds(1));
  REQUIRE(got.ok());
  CHECK(got->front() == "v");
  auto missing = store.Get({"abc/k", "abc/late"}, absl::Now() + absl::Milliseconds(50));
  CHECK(absl::IsDeadlineExceeded(missing.status()));
  CHECK(std::string(missing.status().message()).find("abc/late") != std::string::npos);
  // A Get waits for a key set meanwhile.
  std::thread later([&] {
    absl::SleepFor(absl::Milliseconds(20));
    CHECK(store.Set("abc/late", "x").ok());
  });
  auto waited = store.Get({"abc/late"}, absl::Now() + absl::Seconds(10));
  later.join();
  REQUIRE(waited.ok());
  CHECK(waited->front() == "x");
  store.Close("abc");
  CHECK(absl::IsPermissionDenied(store.Get({"abc/k"}, absl::Now()).status()));
  store.Open("abc");
  CHECK(absl::IsDeadlineExceeded(store.Get({"abc/k"}, absl::Now()).status()));  // erased
  for (size_t i = 0; i < kMaxRendezvousKeys; ++i) {
    REQUIRE(store.Set("abc/" + std::to_string(i), "v").ok());
  }
  CHECK(absl::IsResourceExhausted(store.Set("abc/one-more", "v")));
}

// `size` ranks in threads over one local store; each runs `body(group)`.
void RunRanks(int size, absl::Duration timeout,
              const std::function<void(int, absl::StatusOr<std::unique_ptr<GlooGroup>>&)>& body) {
  RendezvousStore store;
  store.Open("g1");
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      RendezvousClient client(
          "g1/", [&](const v1::RendezvousRequest& r) { return store.Serve(r); }, timeout);
      GlooGroup::Options o;
      o.rank = rank;
      o.size = size;
      o.host = "127.0.0.1";
      o.timeout = timeout;
      auto group = GlooGroup::Create(client, o);
      body(rank, group);
    });
  }
  for (auto& t : threads) t.join();
}

TEST_CASE("a Gloo group over the rendezvous broadcasts from any root") {
  RunRanks(3, absl::Seconds(20), [](int rank, absl::StatusOr<std::unique_ptr<GlooGroup>>& group) {
    REQUIRE(group.ok());
    for (int root = 0; root < 3; ++root) {
      std::vector<uint8_t> buffer(100'003, rank == root ? static_cast<uint8_t>(root + 7) : 0);
      REQUIRE((*group)->Broadcast(buffer.data(), buffer.size(), root, root).ok());
      CHECK(std::count(buffer.begin(), buffer.end(), root + 7) == 100'003);
    }
  });
}

TEST_CASE("a rank that leaves breaks the group: the others fail, not hang") {
  RunRanks(3, absl::Seconds(2), [](int rank, absl::StatusOr<std::unique_ptr<GlooGroup>>& group) {
    REQUIRE(group.ok());
    if (rank == 2) {
      group->reset();  // gone before the broadcast (its connections close)
      return;
    }
    std::vector<uint8_t> buffer(4096, 1);
    absl::Status s = (*group)->Broadcast(buffer.data(), buffer.size(), 0, 1);
    if (rank == 0) {
      CHECK_FALSE(s.ok());
      CHECK((*group)->broken());
      CHECK_FALSE((*group)->Broadcast(buffer.data(), buffer.size(), 0, 2).ok());
    }
    // Rank 1 may have received the bytes before rank 0 failed; it must end either way.
  });
}

TEST_CASE("a group whose ranks do not all arrive fails by its deadline, naming what is missing") {
  RendezvousStore store;
  store.Open("g2");
  RendezvousClient client(
      "g2/", [&](const v1::RendezvousRequest& r) { return store.Serve(r); },
      absl::Milliseconds(300));
  GlooGroup::Options o;
  o.rank = 0;
  o.size = 2;
  o.host = "127.0.0.1";
  o.timeout = absl::Milliseconds(300);
  auto group = GlooGroup::Create(client, o);
  REQUIRE_FALSE(group.ok());
  CHECK(std::string(group.status().message()).find("rank 0 of 2") != std::string::npos);
}

}  // namespace
}  // namespace ckpt::daemon
