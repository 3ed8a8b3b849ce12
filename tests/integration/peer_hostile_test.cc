// The Peer API of a real daemon against hostile callers (docs/security.md, "Peer API"): requests
// without the cluster's secret or with a wrong one, oversized messages, MemberUpdate calls that
// prove nothing or send nothing (at most 4 at once, each ended by cluster_timeout), and proved
// MemberUpdate starts whose ranks, sizes or manifest are wrong. Each is refused with a status
// naming the problem, before the member claims its update slot, and the member serves on.
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "common/dtype.h"
#include "daemon/cluster/cluster.h"
#include "daemon/cluster/peer_proof.h"
#include "daemon/cluster/peer_session.h"
#include "proto/peer.grpc.pb.h"
#include "tests/testing/state_dict.h"
#include "tests/testing/subprocess.h"

namespace ckpt {
namespace {

using daemon::PeerSession;
using testing::DaemonProcess;
using testing::RunResult;
using testing::TempDir;
using namespace std::chrono_literals;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

const std::string kSecret(40, 's');

// One member, node-a, whose secret the test knows (so it can also speak as a member would).
struct Target {
  Target() {
    const std::string token = dir / "token";
    std::ofstream(token) << kSecret << "\n";
    REQUIRE(::chmod(token.c_str(), 0600) == 0);
    address = "127.0.0.1:" + std::to_string(testing::FreeLoopbackPorts(1)[0]);
    daemon = std::make_unique<DaemonProcess>(std::vector<std::string>{
        "--backend", "host", "--host-memory-budget", "16MiB", "--bucket-bytes", "64KiB",
        "--node-name", "node-a", "--cluster-listen", address, "--cluster-members", address,
        "--cluster-token-file", token, "--cluster-timeout", "2s", "--max-tensors-per-version",
        "1000"});
    INFO(daemon->proc->Stderr());
    REQUIRE(daemon->ready());
    RunResult r = daemon->Ctl({"cluster", "--json"});
    REQUIRE(r.exit.code == 0);
    instance = nlohmann::json::parse(r.out)["members"][0]["instance"];
    stub = v1::Peer::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  // Still serving, and no update slot held.
  void CheckIdle() {
    RunResult s = daemon->Ctl({"status", "--json"});
    INFO(s.err);
    REQUIRE(s.exit.code == 0);
    CHECK(nlohmann::json::parse(s.out)["updating_version"] == 0);
  }
  TempDir dir;
  std::string address, instance;
  std::unique_ptr<DaemonProcess> daemon;
  std::unique_ptr<v1::Peer::Stub> stub;
};

grpc::Status Hello(Target& t, v1::HelloRequest request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 10s);
  v1::HelloResponse response;
  return t.stub->Hello(&context, request, &response);
}

v1::HelloRequest BaseHello() {
  v1::HelloRequest r;
  r.set_protocol_version(daemon::kPeerProtocolVersion);
  r.set_node_name("node-z");
  r.set_instance("00112233445566778899aabbccddeeff");
  return r;
}

v1::HelloRequest Proved(v1::HelloRequest r, const std::string& secret) {
  r.set_nonce(daemon::PeerNonce());
  r.set_proof(daemon::RequestProof(secret, r));
  return r;
}

TEST_CASE("Hello: no proof, another secret, oversized, other protocol and a stolen name refused") {
  Target t;
  grpc::Status none = Hello(t, BaseHello());
  CHECK(none.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(Contains(none.error_message(), "no proof of the cluster token"));
  grpc::Status other = Hello(t, Proved(BaseHello(), std::string(40, 'x')));
  CHECK(other.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(Contains(other.error_message(), "does not match"));
  // A proof over other fields than those sent (changed on the way).
  v1::HelloRequest changed = Proved(BaseHello(), kSecret);
  changed.set_node_name("node-y");
  CHECK(Hello(t, changed).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  v1::HelloRequest big = BaseHello();
  big.set_node_name(std::string(100 << 10, 'n'));
  CHECK(Hello(t, Proved(big, kSecret)).error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  v1::HelloRequest future = BaseHello();
  future.set_protocol_version(99);
  grpc::Status version = Hello(t, Proved(future, kSecret));
  CHECK(version.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(Contains(version.error_message(), "not adjacent"));
  v1::HelloRequest stolen = BaseHello();
  stolen.set_node_name("node-a");
  grpc::Status name = Hello(t, Proved(stolen, kSecret));
  CHECK(name.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(Contains(name.error_message(), "this member's own name"));
  CHECK(Hello(t, Proved(BaseHello(), kSecret)).ok());
  t.CheckIdle();
}

// A MemberUpdate call as a caller makes it: the member's hello first.
struct Call {
  explicit Call(Target& t, std::string secret = kSecret)
      : session(std::move(secret), "MemberUpdate", PeerSession::Side::kCaller) {
    context.set_deadline(std::chrono::system_clock::now() + 30s);
    stream = t.stub->MemberUpdate(&context);
  }
  // Reads the member's hello (false when the call ended instead).
  bool Hello() {
    v1::PeerEnvelope e;
    if (!stream->Read(&e)) return false;
    v1::MemberUpdateOut out;
    absl::Status s = session.Open(e, &out, "the hello");
    INFO(s.ToString());
    REQUIRE(s.ok());
    REQUIRE(out.has_hello());
    return true;
  }
  void Send(const v1::MemberUpdateIn& in) {
    v1::PeerEnvelope e;
    REQUIRE(session.Seal(in, &e).ok());
    stream->Write(e);
  }
  grpc::Status Finish() {
    stream->WritesDone();
    v1::PeerEnvelope e;
    while (stream->Read(&e)) {
    }
    return stream->Finish();
  }
  PeerSession session;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::PeerEnvelope, v1::PeerEnvelope>> stream;
};

// A start that would pass every check: node-a at rank 0, the coordinator node-z at rank 1.
v1::MemberUpdateIn GoodStart(const Target& t, uint32_t tensors) {
  v1::MemberUpdateIn in;
  v1::MemberUpdateStart* st = in.mutable_start();
  st->set_protocol_version(daemon::kPeerProtocolVersion);
  st->set_update_id("0123456789abcdef");
  st->set_coordinator("node-z");
  st->set_version(5);
  st->set_bucket_bytes(64 << 10);
  v1::ClusterRank* a = st->add_ranks();
  a->set_node_name("node-a");
  a->set_instance(t.instance);
  v1::ClusterRank* z = st->add_ranks();
  z->set_node_name("node-z");
  z->set_instance("00112233445566778899aabbccddeeff");
  st->set_rank(0);
  st->add_uploader_ranks(1);
  st->set_tensors(tensors);
  return in;
}

TEST_CASE("MemberUpdate: callers without the secret are refused; at most 4 at once, each bounded") {
  Target t;
  {
    // Another secret: the member's hello does not prove it to us, and our start (sealed with it)
    // does not prove the member's to it.
    Call c(t, std::string(40, 'x'));
    v1::PeerEnvelope hello;
    REQUIRE(c.stream->Read(&hello));
    v1::MemberUpdateOut out;
    CHECK(c.session.Open(hello, &out, "the hello").code() == absl::StatusCode::kUnauthenticated);
    c.Send(GoodStart(t, 2));
    grpc::Status s = c.Finish();
    CHECK(s.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    CHECK(Contains(s.error_message(), "does not prove the cluster token"));
  }
  {
    Call c(t, "");  // junk in an envelope
    v1::PeerEnvelope hello;
    REQUIRE(c.stream->Read(&hello));
    v1::PeerEnvelope junk;
    junk.set_nonce(std::string(daemon::kPeerNonceBytes, 'n'));
    junk.set_proof(std::string(32, 'p'));
    junk.set_body("junk");
    c.stream->Write(junk);
    grpc::Status s = c.Finish();
    CHECK(s.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    CHECK(Contains(s.error_message(), "does not prove the cluster token"));
  }
  {
    Call c(t, "");
    v1::PeerEnvelope hello;
    REQUIRE(c.stream->Read(&hello));
    v1::PeerEnvelope plain;
    v1::MemberUpdateIn in;
    in.mutable_start()->set_version(1);
    in.SerializeToString(plain.mutable_body());
    c.stream->Write(plain);
    grpc::Status s = c.Finish();
    CHECK(s.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    CHECK(Contains(s.error_message(), "carries no nonce"));
  }
  // Four calls that send nothing hold the member's four places; a fifth is refused at once.
  std::vector<std::unique_ptr<Call>> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(std::make_unique<Call>(t));
    REQUIRE(idle.back()->Hello());
  }
  const auto opened = std::chrono::steady_clock::now();
  {
    Call fifth(t);
    CHECK_FALSE(fifth.Hello());
    grpc::Status s = fifth.Finish();
    CHECK(s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
    CHECK(Contains(s.error_message(), "serves 4 MemberUpdate calls at once"));
  }
  // Hello still answers meanwhile (other threads of the Peer server).
  CHECK(Hello(t, Proved(BaseHello(), kSecret)).ok());
  // Each is ended by the member after cluster_timeout (2 s) without its start (the caller keeps
  // it open).
  for (auto& c : idle) {
    v1::PeerEnvelope e;
    CHECK_FALSE(c->stream->Read(&e));
    CHECK_FALSE(c->stream->Finish().ok());
  }
  const auto held = std::chrono::steady_clock::now() - opened;
  CHECK(held > 1500ms);
  CHECK(held < 10s);
  // And the places are free again.
  Call again(t);
  CHECK(again.Hello());
  t.CheckIdle();
}

v1::MemberUpdateIn Part(int first, int count, uint64_t byte_size = 64) {
  v1::MemberUpdateIn in;
  for (int i = first; i < first + count; ++i) {
    v1::TensorSpec* s = in.mutable_manifest()->add_tensors();
    s->set_name("t" + std::to_string(i));
    s->set_dtype(v1::DTYPE_FLOAT32);
    s->add_shape(16);
    s->set_byte_size(byte_size);
    s->set_xxh3(1);
  }
  return in;
}

// Runs one proved call: the start (changed by `change`), then `parts`; its final status.
grpc::Status Refused(Target& t, const std::function<void(v1::MemberUpdateStart&)>& change,
                     const std::vector<v1::MemberUpdateIn>& parts, uint32_t tensors = 2) {
  Call c(t);
  REQUIRE(c.Hello());
  v1::MemberUpdateIn start = GoodStart(t, tensors);
  change(*start.mutable_start());
  c.Send(start);
  for (const auto& p : parts) c.Send(p);
  return c.Finish();
}

TEST_CASE(
    "MemberUpdate with the secret: wrong ranks, sizes and manifests refused before anything is "
    "claimed") {
  Target t;
  auto none = [](v1::MemberUpdateStart&) {};
  struct Case {
    const char* what;
    std::function<void(v1::MemberUpdateStart&)> change;
    std::vector<v1::MemberUpdateIn> parts;
    grpc::StatusCode code;
    const char* says;
    uint32_t tensors = 2;
  };
  std::vector<Case> cases = {
      {"version 0",
       [](auto& s) { s.set_version(0); },
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       "version 0"},
      {"a bad id",
       [](auto& s) { s.set_update_id("not hex"); },
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       "hex digits"},
      {"one rank",
       [](auto& s) { s.mutable_ranks()->RemoveLast(); },
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       "1 ranks"},
      {"ranks out of order",
       [](auto& s) { s.mutable_ranks(1)->set_node_name("node-0"); },
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       "not ordered"},
      {"another process at its rank",
       [](auto& s) { s.mutable_ranks(0)->set_instance("ff"); },
       {},
       grpc::StatusCode::FAILED_PRECONDITION,
       "do not name this member's process"},
      {"itself the coordinator",
       [](auto& s) { s.set_coordinator("node-a"); },
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       "not another rank"},
      {"an uploader out of range",
       [](auto& s) { s.set_uploader_ranks(0, 7); },
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       "out of range"},
      {"asked to upload",
       [](auto& s) { s.set_uploader_ranks(0, 0); },
       {},
       grpc::StatusCode::FAILED_PRECONDITION,
       "it was not sent"},
      {"buckets past its slots",
       [](auto& s) { s.set_bucket_bytes(1ull << 40); },
       {},
       grpc::StatusCode::FAILED_PRECONDITION,
       "do not fit this member's slots"},
      {"more tensors than it takes",
       none,
       {},
       grpc::StatusCode::FAILED_PRECONDITION,
       "max_tensors_per_version",
       1000000000},
      {"parts past the count",
       none,
       {Part(0, 3)},
       grpc::StatusCode::INVALID_ARGUMENT,
       "do not add up to 2 tensors"},
      {"an empty part",
       none,
       {Part(0, 1), Part(1, 0)},
       grpc::StatusCode::INVALID_ARGUMENT,
       "do not add up"},
      {"a tensor whose bytes are not its shape's",
       none,
       {Part(0, 2, 65)},
       grpc::StatusCode::INVALID_ARGUMENT,
       "t0"},
      {"a name twice", none, {Part(0, 1), Part(0, 1)}, grpc::StatusCode::INVALID_ARGUMENT, "t0"},
  };
  for (const Case& k : cases) {
    INFO(k.what);
    grpc::Status s = Refused(t, k.change, k.parts, k.tensors);
    INFO(s.error_message());
    CHECK(s.error_code() == k.code);
    CHECK(Contains(s.error_message(), k.says));
  }
  {
    // A message past 64 KiB is not read at all.
    Call c(t);
    REQUIRE(c.Hello());
    v1::MemberUpdateIn big = GoodStart(t, 2);
    big.mutable_start()->set_trigger(std::string(100 << 10, 't'));
    c.Send(big);
    CHECK(c.Finish().error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  {
    // A replayed envelope (the first message of another call) fails at the start.
    Call first(t);
    REQUIRE(first.Hello());
    v1::PeerEnvelope recorded;
    REQUIRE(first.session.Seal(GoodStart(t, 2), &recorded).ok());
    Call replay(t, "");
    v1::PeerEnvelope hello;
    REQUIRE(replay.stream->Read(&hello));
    replay.stream->Write(recorded);
    grpc::Status s = replay.Finish();
    CHECK(s.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    first.context.TryCancel();
  }
  t.CheckIdle();
  // The member serves on.
  CHECK(Hello(t, Proved(BaseHello(), kSecret)).ok());
}

TEST_CASE("Rendezvous: without the secret refused; with it, only ids being created") {
  Target t;
  auto call = [&](const v1::PeerEnvelope& in) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    v1::PeerEnvelope out;
    return t.stub->Rendezvous(&context, in, &out);
  };
  v1::RendezvousRequest r;
  r.set_node_name("node-z");
  r.set_set(true);
  r.set_key("0123/rank0");
  r.set_value("x");
  v1::PeerEnvelope plain;
  r.SerializeToString(plain.mutable_body());
  CHECK(call(plain).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  PeerSession wrong(std::string(40, 'x'), "Rendezvous", PeerSession::Side::kCaller);
  v1::PeerEnvelope forged;
  REQUIRE(wrong.Seal(r, &forged).ok());
  CHECK(call(forged).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  PeerSession right(kSecret, "Rendezvous", PeerSession::Side::kCaller);
  v1::PeerEnvelope proved;
  REQUIRE(right.Seal(r, &proved).ok());
  grpc::Status s = call(proved);
  INFO(s.error_message());
  CHECK_FALSE(s.ok());  // no communicator is being created: no key may be set
  CHECK(s.error_code() != grpc::StatusCode::UNAUTHENTICATED);
  t.CheckIdle();
}

// Issue 13: the Peer calls that read a member's versions (VersionManifest, ReadTensors) refuse
// callers without the secret, and hostile requests of proved callers, each naming why; the
// member keeps serving.
TEST_CASE("VersionManifest and ReadTensors: unproved refused; hostile requests refused") {
  Target t;
  // A committed version of two tensors (2 MiB and 4 bytes) on node-a.
  testing::StateDict m;
  m.Add("big", DType::kFloat32, {512, 1024}, 1);
  m.Add("small", DType::kFloat32, {1}, 2);
  auto endpoint = client::ResolveEndpoint(t.daemon->socket, "");
  REQUIRE(endpoint.ok());
  auto trainer = client::TrainerClient::Connect(*endpoint);
  REQUIRE(trainer.ok());
  client::PushOptions o;
  o.version = 7;
  REQUIRE((*trainer)->PushTensors(m.views, o).ok());

  auto manifest = [&](const v1::PeerEnvelope& in) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    v1::PeerEnvelope out;
    return t.stub->VersionManifest(&context, in, &out);
  };
  auto seal = [](const char* method, const google::protobuf::MessageLite& body) {
    PeerSession session(kSecret, method, PeerSession::Side::kCaller);
    v1::PeerEnvelope e;
    REQUIRE(session.Seal(body, &e).ok());
    return e;
  };
  // Reads every chunk of a ReadTensors call; its status and the bytes that came.
  auto read = [&](const v1::PeerEnvelope& in, uint64_t* bytes) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    auto reader = t.stub->ReadTensors(&context, in);
    v1::TensorChunk c;
    while (reader->Read(&c)) *bytes += c.data().size();
    return reader->Finish();
  };

  v1::VersionManifestRequest mr;
  mr.set_version(7);
  v1::PeerEnvelope plain;
  mr.SerializeToString(plain.mutable_body());
  CHECK(manifest(plain).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  PeerSession wrong(std::string(40, 'x'), "VersionManifest", PeerSession::Side::kCaller);
  v1::PeerEnvelope forged;
  REQUIRE(wrong.Seal(mr, &forged).ok());
  CHECK(manifest(forged).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(manifest(seal("VersionManifest", mr)).ok());
  mr.set_first(3);  // past its 2 tensors
  grpc::Status past = manifest(seal("VersionManifest", mr));
  CHECK(past.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  mr.set_first(0);
  mr.set_version(8);
  CHECK(manifest(seal("VersionManifest", mr)).error_code() == grpc::StatusCode::NOT_FOUND);
  mr.set_version(0);
  CHECK(manifest(seal("VersionManifest", mr)).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  // A proved request sealed for another method is not one for this method.
  mr.set_version(7);
  CHECK(manifest(seal("ReadTensors", mr)).error_code() == grpc::StatusCode::UNAUTHENTICATED);

  v1::ReadTensorsRequest rr;
  rr.set_version(7);
  rr.set_manifest_tensors(2);
  rr.add_tensors(0);
  uint64_t bytes = 0;
  v1::PeerEnvelope unproved;
  rr.SerializeToString(unproved.mutable_body());
  CHECK(read(unproved, &bytes).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(bytes == 0);
  // Proved: the whole tensor, in 1 MiB chunks.
  grpc::Status whole = read(seal("ReadTensors", rr), &bytes);
  INFO(whole.error_message());
  CHECK(whole.ok());
  CHECK(bytes == 512 * 1024 * 4);
  struct Bad {
    const char* what;
    std::function<void(v1::ReadTensorsRequest&)> change;
    grpc::StatusCode code;
    const char* says;
  };
  const std::vector<Bad> bad = {
      {"no positions", [](auto& r) { r.clear_tensors(); }, grpc::StatusCode::INVALID_ARGUMENT,
       "a read of 0 tensors"},
      {"a position twice", [](auto& r) { r.add_tensors(0); }, grpc::StatusCode::INVALID_ARGUMENT,
       "asked for twice"},
      {"a position past the manifest", [](auto& r) { r.add_tensors(2); },
       grpc::StatusCode::INVALID_ARGUMENT, "tensor #2 of 2"},
      {"a position at 2^32-1", [](auto& r) { r.add_tensors(0xFFFFFFFFu); },
       grpc::StatusCode::INVALID_ARGUMENT, "tensor #4294967295"},
      {"8193 positions",
       [](auto& r) {
         for (int i = 0; i < 8192; ++i) r.add_tensors(1);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "a read of 8193 tensors"},
      {"another manifest count", [](auto& r) { r.set_manifest_tensors(3); },
       grpc::StatusCode::FAILED_PRECONDITION, "changed since"},
      {"a version not held", [](auto& r) { r.set_version(9); }, grpc::StatusCode::NOT_FOUND, ""},
      {"version 0", [](auto& r) { r.set_version(0); }, grpc::StatusCode::INVALID_ARGUMENT,
       "version 0"},
  };
  for (const Bad& b : bad) {
    INFO(b.what);
    v1::ReadTensorsRequest r = rr;
    b.change(r);
    uint64_t got = 0;
    grpc::Status s = read(seal("ReadTensors", r), &got);
    INFO(s.error_message());
    CHECK(s.error_code() == b.code);
    CHECK(Contains(s.error_message(), b.says));
    CHECK(got == 0);
  }
  // A reader that stops mid-stream (cancels after its first chunk) leaves the member serving.
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    auto reader = t.stub->ReadTensors(&context, seal("ReadTensors", rr));
    v1::TensorChunk c;
    REQUIRE(reader->Read(&c));
    context.TryCancel();
    (void)reader->Finish();
  }
  uint64_t again = 0;
  CHECK(read(seal("ReadTensors", rr), &again).ok());
  CHECK(again == 512 * 1024 * 4);
  t.CheckIdle();
}

}  // namespace
}  // namespace ckpt
