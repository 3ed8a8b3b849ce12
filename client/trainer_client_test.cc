// TrainerClient against an in-process fake Trainer service (TCP on port 0), plus its local checks
// and helpers. The fake keeps what it receives so that tests can compare it byte for byte, and can
// be told to fail, stall or corrupt.
#include "client/trainer_client.h"

#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/local_push.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace ckpt::client {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

// The daemon's Trainer contract, kept to what the client relies on.
class FakeTrainer final : public v1::Trainer::Service {
 public:
  struct Version {
    v1::Manifest manifest;
    std::string token;
    std::string label;
    std::map<std::string, std::string> bytes;       // tensor -> contents
    std::map<std::string, std::vector<bool>> seen;  // tensor -> byte received
    bool committed = false;
  };

  // Knobs, set before the client runs.
  int fail_after_chunks = -1;  // >= 0: PushChunks fails after that many chunks in total
  bool stall = false;          // PushChunks stops reading until the client cancels
  bool corrupt = false;        // flips the first byte of the first tensor before Commit
  bool exhausted = false;      // BeginVersion answers RESOURCE_EXHAUSTED
  bool with_progress = false;  // LoadFilesWithProgress is served (else UNIMPLEMENTED, as before)

  grpc::Status BeginVersion(grpc::ServerContext*, const v1::BeginVersionRequest* request,
                            v1::BeginVersionResponse* response) override {
    absl::MutexLock lock(&mu_);
    if (exhausted) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "version needs 2.0 GiB, 1.0 GiB free");
    }
    uint64_t id = request->version() != 0 ? request->version() : next_id_;
    if (versions_.count(id) != 0) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          absl::StrCat("version ", id, " exists"));
    }
    next_id_ = std::max(next_id_, id + 1);
    Version& v = versions_[id];
    v.manifest = request->manifest();
    v.token = absl::StrCat("token-", id);
    v.label = request->label();
    for (const v1::TensorSpec& t : v.manifest.tensors()) {
      v.bytes[t.name()] = std::string(t.byte_size(), '\0');
      v.seen[t.name()] = std::vector<bool>(t.byte_size(), false);
    }
    response->set_version(id);
    response->set_upload_token(v.token);
    return grpc::Status::OK;
  }

  grpc::Status PushChunks(grpc::ServerContext* context, grpc::ServerReader<v1::Chunk>* reader,
                          v1::PushChunksResponse* response) override {
    {
      absl::MutexLock lock(&mu_);
      ++streams_opened_;
      ++streams_active_;
      max_streams_active_ = std::max(max_streams_active_, streams_active_);
    }
    grpc::Status status = ReadChunks(context, reader, response);
    absl::MutexLock lock(&mu_);
    --streams_active_;
    return status;
  }

  grpc::Status Commit(grpc::ServerContext*, const v1::CommitRequest* request,
                      v1::VersionInfo* response) override {
    absl::MutexLock lock(&mu_);
    auto it = versions_.find(request->version());
    if (it == versions_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such version");
    Version& v = it->second;
    if (corrupt) v.bytes.begin()->second[0] ^= 1;
    std::vector<std::string> problems;
    uint64_t total = 0;
    for (const v1::TensorSpec& t : v.manifest.tensors()) {
      total += t.byte_size();
      const std::vector<bool>& seen = v.seen[t.name()];
      if (std::count(seen.begin(), seen.end(), false) != 0) {
        problems.push_back(absl::StrCat(t.name(), ": bytes missing"));
      } else if (XXH3_64bits(v.bytes[t.name()].data(), t.byte_size()) != t.xxh3()) {
        problems.push_back(absl::StrCat(t.name(), ": checksum mismatch"));
      }
    }
    if (!problems.empty()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, absl::StrJoin(problems, "; "));
    }
    v.committed = true;
    response->set_version(it->first);
    response->set_state(v1::VERSION_STATE_COMMITTED);
    response->set_tensor_count(v.manifest.tensors_size());
    response->set_total_bytes(total);
    response->set_label(v.label);
    return grpc::Status::OK;
  }

  grpc::Status Abort(grpc::ServerContext*, const v1::AbortRequest* request,
                     v1::AbortResponse*) override {
    absl::MutexLock lock(&mu_);
    ++aborts_;
    versions_.erase(request->version());
    return grpc::Status::OK;
  }

  grpc::Status LoadFiles(grpc::ServerContext*, const v1::LoadFilesRequest* request,
                         v1::VersionInfo* response) override {
    absl::MutexLock lock(&mu_);
    load_paths_.assign(request->paths().begin(), request->paths().end());
    response->set_version(request->version() != 0 ? request->version() : 42);
    response->set_state(v1::VERSION_STATE_COMMITTED);
    response->set_label(request->label());
    return grpc::Status::OK;
  }

  grpc::Status LoadFilesWithProgress(grpc::ServerContext*, const v1::LoadFilesRequest* request,
                                     grpc::ServerWriter<v1::LoadFilesProgress>* writer) override {
    if (!with_progress) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "");
    {
      absl::MutexLock lock(&mu_);
      load_paths_.assign(request->paths().begin(), request->paths().end());
      progress_calls_++;
    }
    v1::LoadFilesProgress p;
    p.set_files_total(2);
    p.set_bytes_total(100);
    p.set_stage(v1::LOAD_STAGE_HEADERS);
    writer->Write(p);
    p.set_stage(v1::LOAD_STAGE_READING);
    p.set_bytes_done(40);
    writer->Write(p);
    p.set_stage(v1::LOAD_STAGE_DONE);
    p.set_bytes_done(100);
    p.set_files_done(2);
    p.mutable_version()->set_version(request->version() != 0 ? request->version() : 43);
    p.mutable_version()->set_state(v1::VERSION_STATE_COMMITTED);
    writer->Write(p);
    return grpc::Status::OK;
  }

  // Accessors for the tests.
  int progress_calls() {
    absl::MutexLock lock(&mu_);
    return progress_calls_;
  }
  std::map<uint64_t, Version> versions() {
    absl::MutexLock lock(&mu_);
    return versions_;
  }
  int aborts() {
    absl::MutexLock lock(&mu_);
    return aborts_;
  }
  int multi_part_chunks() {
    absl::MutexLock lock(&mu_);
    return multi_part_chunks_;
  }
  int streams_opened() {
    absl::MutexLock lock(&mu_);
    return streams_opened_;
  }
  int max_streams_active() {
    absl::MutexLock lock(&mu_);
    return max_streams_active_;
  }
  std::vector<std::string> load_paths() {
    absl::MutexLock lock(&mu_);
    return load_paths_;
  }

 private:
  grpc::Status ReadChunks(grpc::ServerContext* context, grpc::ServerReader<v1::Chunk>* reader,
                          v1::PushChunksResponse* response) {
    if (stall) {
      while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    v1::Chunk chunk;
    while (reader->Read(&chunk)) {
      absl::MutexLock lock(&mu_);
      if (fail_after_chunks >= 0 && chunks_total_ >= fail_after_chunks) {
        return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "chunk past the end of 'w'");
      }
      ++chunks_total_;
      auto it = versions_.find(chunk.version());
      if (it == versions_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "version");
      if (chunk.upload_token() != it->second.token) {
        return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "bad upload token");
      }
      // One range, or several (Chunk.part_*): each part names its tensor by manifest index.
      std::vector<std::tuple<std::string, uint64_t, uint64_t>> ranges;
      if (chunk.part_tensor_size() == 0) {
        ranges.emplace_back(chunk.tensor(), chunk.offset(), chunk.data().size());
      } else {
        if (chunk.part_offset_size() != chunk.part_tensor_size() ||
            chunk.part_bytes_size() != chunk.part_tensor_size()) {
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "part lists");
        }
        for (int k = 0; k < chunk.part_tensor_size(); ++k) {
          if (chunk.part_tensor(k) >= static_cast<uint32_t>(it->second.manifest.tensors_size())) {
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tensor index");
          }
          ranges.emplace_back(it->second.manifest.tensors(chunk.part_tensor(k)).name(),
                              chunk.part_offset(k), chunk.part_bytes(k));
        }
      }
      uint64_t from = 0;
      for (const auto& [name, offset, size] : ranges) {
        auto bytes = it->second.bytes.find(name);
        if (bytes == it->second.bytes.end()) {
          return grpc::Status(grpc::StatusCode::NOT_FOUND, "tensor");
        }
        if (offset + size > bytes->second.size() || from + size > chunk.data().size()) {
          return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "past the end");
        }
        std::memcpy(&bytes->second[offset], chunk.data().data() + from, size);
        from += size;
        std::vector<bool>& seen = it->second.seen[name];
        std::fill(seen.begin() + offset, seen.begin() + offset + size, true);
      }
      if (from != chunk.data().size()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "parts and data differ");
      }
      ++multi_part_chunks_;
      if (chunk.part_tensor_size() == 0) --multi_part_chunks_;
      response->set_chunks(response->chunks() + 1);
      response->set_bytes(response->bytes() + chunk.data().size());
    }
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "broken");
    return grpc::Status::OK;
  }

  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Version> versions_ ABSL_GUARDED_BY(mu_);
  int aborts_ ABSL_GUARDED_BY(mu_) = 0;
  int chunks_total_ ABSL_GUARDED_BY(mu_) = 0;
  int multi_part_chunks_ ABSL_GUARDED_BY(mu_) = 0;
  int streams_opened_ ABSL_GUARDED_BY(mu_) = 0;
  int streams_active_ ABSL_GUARDED_BY(mu_) = 0;
  int max_streams_active_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> load_paths_ ABSL_GUARDED_BY(mu_);
  int progress_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

struct FakeServer {
  FakeServer() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(32 << 20);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
    endpoint.target = absl::StrCat("127.0.0.1:", port);
    auto c = TrainerClient::Connect(endpoint);
    REQUIRE(c.ok());
    client = std::move(*c);
  }
  ~FakeServer() { server->Shutdown(std::chrono::system_clock::now()); }

  FakeTrainer service;
  std::unique_ptr<grpc::Server> server;
  Endpoint endpoint;
  std::unique_ptr<TrainerClient> client;
};

// Tensors with random contents, kept alive by `storage`.
struct Sample {
  std::vector<std::string> storage;
  std::vector<TensorView> views;

  void Add(const std::string& name, DType dtype, std::vector<int64_t> shape, uint32_t seed) {
    uint64_t bytes = *TensorByteSize(dtype, shape);
    std::string data(bytes, '\0');
    std::mt19937 rng(seed);
    for (char& c : data) c = static_cast<char>(rng());
    storage.push_back(std::move(data));
    views.push_back({name, dtype, std::move(shape), nullptr, bytes});
    for (size_t i = 0; i < views.size(); ++i) views[i].data = storage[i].data();
  }
};

Sample MixedSample() {
  Sample s;
  s.Add("embed.weight", DType::kBfloat16, {1000, 257}, 1);   // 514000 bytes
  s.Add("layers.0.bias", DType::kFloat32, {257}, 2);         // 1028 bytes
  s.Add("layers.0.weight", DType::kFloat16, {300, 300}, 3);  // 180000 bytes
  s.Add("step", DType::kInt64, {}, 4);                       // a scalar: 8 bytes
  s.Add("empty", DType::kFloat32, {0, 16}, 5);               // 0 bytes
  s.Add("mask", DType::kBool, {33}, 6);
  s.Add("fp8", DType::kFloat8E4m3fn, {64, 64}, 7);
  return s;
}

TEST_CASE("ValidatePush names the tensor and the problem") {
  Sample s;
  s.Add("a", DType::kFloat32, {2, 3}, 1);
  s.Add("b", DType::kBfloat16, {4}, 2);
  PushOptions o;
  REQUIRE(ValidatePush(s.views, o).ok());

  auto error = [&](std::vector<TensorView> views, const PushOptions& opts) {
    absl::Status st = ValidatePush(views, opts);
    CHECK(st.code() == absl::StatusCode::kInvalidArgument);
    return Message(st);
  };
  CHECK(Contains(error({}, o), "no tensors"));
  auto v = s.views;
  v[1].name = "a";
  CHECK(Contains(error(v, o), "duplicate tensor name 'a'"));
  v = s.views;
  v[0].name = "";
  CHECK(Contains(error(v, o), "tensor #0 has an empty name"));
  v = s.views;
  v[0].dtype = static_cast<DType>(99);
  CHECK(Contains(error(v, o), "tensor 'a': unknown dtype 99"));
  v = s.views;
  v[0].bytes = 20;
  CHECK(Contains(error(v, o), "tensor 'a': 20 bytes given, but shape [2, 3] of float32 needs 24"));
  v = s.views;
  v[1].shape = {-4};
  CHECK(Contains(error(v, o), "tensor 'b': negative dimension -4"));
  v = s.views;
  v[1].data = nullptr;
  CHECK(Contains(error(v, o), "tensor 'b': data is null for 8 bytes"));
  v = s.views;
  v[0].shape = {0};
  v[0].bytes = 0;
  v[0].data = nullptr;
  CHECK(ValidatePush(v, o).ok());  // An empty tensor needs no data.

  PushOptions bad = o;
  bad.streams = 0;
  CHECK(Contains(error(s.views, bad), "streams must be 1..64, not 0"));
  bad.streams = 65;
  CHECK(Contains(error(s.views, bad), "streams must be 1..64"));
  bad = o;
  bad.chunk_bytes = 0;
  CHECK(Contains(error(s.views, bad), "chunk_bytes must be 1..16777216"));
  bad.chunk_bytes = kMaxChunkBytes + 1;
  CHECK(Contains(error(s.views, bad), "chunk_bytes"));
  bad = o;
  bad.timeout = absl::ZeroDuration();
  CHECK(Contains(error(s.views, bad), "timeout"));
}

TEST_CASE("PlanChunks cuts tensors in order, with a short last chunk, and skips empty ones") {
  std::vector<TensorView> t = {{"a", DType::kUint8, {10}, "", 10},
                               {"e", DType::kUint8, {0}, nullptr, 0},
                               {"b", DType::kUint8, {8}, "", 8}};
  std::vector<ChunkRef> c = PlanChunks(t, 4);
  REQUIRE(c.size() == 5);
  CHECK((c[0].tensor == 0 && c[0].offset == 0 && c[0].bytes == 4));
  CHECK((c[2].tensor == 0 && c[2].offset == 8 && c[2].bytes == 2));
  CHECK((c[3].tensor == 2 && c[3].offset == 0 && c[3].bytes == 4));
  CHECK((c[4].tensor == 2 && c[4].offset == 4 && c[4].bytes == 4));
  CHECK(PlanChunks(t, 100).size() == 2);
}

TEST_CASE("PlanWindows fills windows back to back, splitting tensors across windows") {
  std::vector<TensorView> t = {{"a", DType::kUint8, {10}, "", 10},
                               {"e", DType::kUint8, {0}, nullptr, 0},
                               {"b", DType::kUint8, {8}, "", 8},
                               {"c", DType::kUint8, {1}, "", 1}};
  std::vector<WindowPlan> w = PlanWindows(t, 4);
  // a: 4 + 4 + 2; b: 2 (after a's tail) + 4 + 2; c: 1 (after b's tail): 19 bytes in 5 windows.
  REQUIRE(w.size() == 5);
  uint64_t sum = 0;
  std::vector<uint64_t> per_tensor(t.size(), 0);
  for (const WindowPlan& plan : w) {
    CHECK(plan.bytes <= 4);
    uint64_t at = 0;
    for (const WindowPartRef& p : plan.parts) {
      CHECK(p.window_offset == at);             // back to back
      CHECK(p.offset == per_tensor[p.tensor]);  // each tensor in order
      CHECK(p.tensor != 1);                     // the empty tensor is in no window
      at += p.bytes;
      per_tensor[p.tensor] += p.bytes;
    }
    CHECK(at == plan.bytes);
    sum += plan.bytes;
  }
  CHECK(sum == 19);
  CHECK(per_tensor == std::vector<uint64_t>{10, 0, 8, 1});
  REQUIRE(w[2].parts.size() == 2);
  CHECK((w[2].parts[0].tensor == 0 && w[2].parts[0].bytes == 2));
  CHECK((w[2].parts[1].tensor == 2 && w[2].parts[1].bytes == 2));
  CHECK(PlanWindows(t, 100).size() == 1);
  // max_parts: at most that many parts per window, even when bytes are left.
  std::vector<WindowPlan> two = PlanWindows(t, 100, /*lanes=*/1, /*max_parts=*/2);
  REQUIRE(two.size() == 2);
  CHECK(two[0].parts.size() == 2);
  CHECK(two[1].parts.size() == 1);
  CHECK(PlanWindows(t, 0).empty());
  std::vector<TensorView> empty_only = {{"e", DType::kUint8, {0}, nullptr, 0}};
  CHECK(PlanWindows(empty_only, 4).empty());
}

TEST_CASE("PlanWindows leaves out the tensors it is told to skip (the daemon copies them)") {
  std::vector<TensorView> t = {{"a", DType::kUint8, {10}, "", 10},
                               {"b", DType::kUint8, {8}, "", 8},
                               {"c", DType::kUint8, {1}, "", 1}};
  const std::vector<bool> skip = {false, true, false};
  const int lanes = GENERATE(1, 3);
  std::vector<WindowPlan> w = PlanWindows(t, 4 << 20, lanes, kMaxWindowParts, &skip);
  REQUIRE(w.size() == 1);
  REQUIRE(w[0].parts.size() == 2);
  CHECK(w[0].parts[0].tensor == 0);
  CHECK(w[0].parts[1].tensor == 2);
  CHECK(w[0].bytes == 11);
  const std::vector<bool> all = {true, true, true};
  CHECK(PlanWindows(t, 4, 1, kMaxWindowParts, &all).empty());
}

TEST_CASE("PlanWindows with lanes: each tensor streamed by one lane, once and in order") {
  const uint64_t mib = 1 << 20;
  std::vector<TensorView> t;
  for (uint64_t size :
       std::vector<uint64_t>{5 * mib, 1 * mib, 3 * mib + 7, 0, 2 * mib, 100, 9 * mib}) {
    t.push_back({"t" + std::to_string(t.size()),
                 DType::kUint8,
                 {static_cast<int64_t>(size)},
                 size ? "" : nullptr,
                 size});
  }
  for (int lanes : {1, 3, 4, 64}) {
    INFO("lanes " << lanes);
    std::vector<WindowPlan> w = PlanWindows(t, 8 * mib, lanes);
    std::vector<uint64_t> next(t.size(), 0);
    std::vector<int> lane_of(t.size(), -1);
    const size_t used_lanes = std::min<size_t>(lanes, 8);  // shares of at least 1 MiB
    for (const WindowPlan& plan : w) {
      CHECK(plan.bytes <= 8 * mib);
      uint64_t at = 0;
      std::vector<uint64_t> per_lane(used_lanes, 0);
      uint32_t last_lane = 0;
      for (const WindowPartRef& p : plan.parts) {
        CHECK(p.window_offset == at);
        CHECK(p.offset == next[p.tensor]);
        CHECK(p.lane >= last_lane);  // laid out lane by lane
        REQUIRE(p.lane < used_lanes);
        last_lane = p.lane;
        if (lane_of[p.tensor] == -1) lane_of[p.tensor] = static_cast<int>(p.lane);
        CHECK(lane_of[p.tensor] == static_cast<int>(p.lane));  // one lane per tensor
        next[p.tensor] += p.bytes;
        per_lane[p.lane] += p.bytes;
        at += p.bytes;
      }
      CHECK(at == plan.bytes);
      for (uint64_t b : per_lane) CHECK(b <= 8 * mib / used_lanes + 8 * mib % used_lanes);
    }
    for (size_t i = 0; i < t.size(); ++i) CHECK(next[i] == t[i].bytes);
    CHECK(lane_of[3] == -1);
    if (lanes == 1) CHECK(w.size() == 3);  // 20 MiB + 107 bytes in 8 MiB windows
  }
  // 4 lanes: the first window holds the first bytes of four tensors, 2 MiB each at most.
  std::vector<WindowPlan> four = PlanWindows(t, 8 * mib, 4);
  // Lane 1 finishes t1 (1 MiB) and starts t2; lane 2 takes t4 (t3 is empty); lane 3 t5, then t6.
  REQUIRE(four[0].parts.size() == 6);
  CHECK(four[0].parts[0].tensor == 0);
  CHECK(four[0].parts[1].tensor == 1);
  CHECK(four[0].parts[2].tensor == 2);
  CHECK(four[0].parts[2].bytes == 1 * mib);
  CHECK(four[0].parts[3].tensor == 4);
  CHECK(four[0].parts[5].tensor == 6);
  CHECK(four[0].parts[5].bytes == 2 * mib - 100);
}

TEST_CASE("transport names; window_bytes bounds; local over TCP is refused, auto uses gRPC") {
  CHECK(*ParseTransport("auto") == Transport::kAuto);
  CHECK(*ParseTransport("local") == Transport::kLocal);
  CHECK(*ParseTransport("grpc") == Transport::kGrpc);
  CHECK(std::string(TransportName(Transport::kLocal)) == "local");
  auto bad = ParseTransport("shm");
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(Message(bad.status()), "'shm' is not one of auto, local, grpc"));

  Sample s = MixedSample();
  PushOptions o;
  o.window_bytes = (1 << 20) - 1;
  CHECK(Contains(Message(ValidatePush(s.views, o)), "window_bytes must be 1 MiB to 16 GiB"));
  o.window_bytes = (uint64_t{16} << 30) + 1;
  CHECK(ValidatePush(s.views, o).code() == absl::StatusCode::kInvalidArgument);
  o = PushOptions();
  o.transport = static_cast<Transport>(7);
  CHECK(Contains(Message(ValidatePush(s.views, o)), "unknown transport 7"));

  FakeServer f;  // TCP
  o = PushOptions();
  o.transport = Transport::kLocal;
  auto local = f.client->PushTensors(s.views, o);
  CHECK(local.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(Message(local.status()), "needs the daemon's Unix socket"));
  CHECK(f.service.versions().empty());
  o.transport = Transport::kAuto;
  auto chosen = f.client->PushTensors(s.views, o);
  REQUIRE(chosen.ok());
  CHECK(f.service.versions().size() == 1);  // through BeginVersion and PushChunks
}

TEST_CASE("GroupChunks packs consecutive pieces up to chunk_bytes and max_parts, in order") {
  // Pieces of 3, 3, 5 (a tensor of 10 cut at 5: 5, 5), 1, 1, 1 bytes.
  std::vector<TensorView> t = {
      {"a", DType::kUint8, {3}, "", 3},   {"b", DType::kUint8, {3}, "", 3},
      {"c", DType::kUint8, {10}, "", 10}, {"d", DType::kUint8, {1}, "", 1},
      {"e", DType::kUint8, {1}, "", 1},   {"f", DType::kUint8, {1}, "", 1}};
  std::vector<ChunkRef> pieces = PlanChunks(t, 5);
  REQUIRE(pieces.size() == 7);
  std::vector<ChunkMessage> m = GroupChunks(pieces, 6, 2);
  // [a b] 6 bytes; [c0] 5 (c1 would pass 6); [c1 d] 6; [e f] 2 (max 2 parts).
  REQUIRE(m.size() == 4);
  CHECK((m[0].first == 0 && m[0].end == 2 && m[0].bytes == 6));
  CHECK((m[1].first == 2 && m[1].end == 3 && m[1].bytes == 5));
  CHECK((m[2].first == 3 && m[2].end == 5 && m[2].bytes == 6));
  CHECK((m[3].first == 5 && m[3].end == 7 && m[3].bytes == 2));
  // Every piece exactly once, in order, whatever the limits.
  for (size_t chunk : {1, 5, 6, 100}) {
    for (size_t parts : {1, 3, 65536}) {
      std::vector<ChunkMessage> g = GroupChunks(pieces, chunk, parts);
      size_t next = 0;
      for (const ChunkMessage& x : g) {
        CHECK(x.first == next);
        CHECK(x.end > x.first);
        CHECK(x.end - x.first <= parts);
        uint64_t bytes = 0;
        for (size_t k = x.first; k < x.end; ++k) bytes += pieces[k].bytes;
        CHECK(x.bytes == bytes);
        CHECK((x.bytes <= chunk || x.end - x.first == 1));
        next = x.end;
      }
      CHECK(next == pieces.size());
    }
  }
  CHECK(GroupChunks({}, 6).empty());
}

TEST_CASE("HashTensors is XXH3-64 with seed 0, whatever the thread count") {
  Sample s = MixedSample();
  for (int threads : {0, 1, 3, 16}) {
    std::vector<uint64_t> h = HashTensors(s.views, threads);
    REQUIRE(h.size() == s.views.size());
    for (size_t i = 0; i < h.size(); ++i) {
      CHECK(h[i] == XXH3_64bits(s.storage[i].data(), s.storage[i].size()));
    }
  }
  CHECK(HashTensors({{"e", DType::kUint8, {0}, nullptr, 0}}, 1)[0] == XXH3_64bits(nullptr, 0));
}

TEST_CASE("BuildManifest carries name, dtype, shape, size and checksum") {
  Sample s;
  s.Add("w", DType::kBfloat16, {3, 5}, 1);
  v1::Manifest m = BuildManifest(s.views, {0x0123456789abcdefull});
  REQUIRE(m.tensors_size() == 1);
  CHECK(m.tensors(0).name() == "w");
  CHECK(m.tensors(0).dtype() == v1::DTYPE_BFLOAT16);
  CHECK(std::vector<int64_t>(m.tensors(0).shape().begin(), m.tensors(0).shape().end()) ==
        std::vector<int64_t>{3, 5});
  CHECK(m.tensors(0).byte_size() == 30);
  CHECK(m.tensors(0).xxh3() == 0x0123456789abcdefull);
}

TEST_CASE("push round trip: every byte arrives, progress is monotonic and ends at the total") {
  int streams = GENERATE(1, 4);
  FakeServer f;
  Sample s = MixedSample();
  uint64_t total = 0;
  for (const TensorView& t : s.views) total += t.bytes;

  PushOptions o;
  o.streams = streams;
  o.chunk_bytes = 16 << 10;
  o.label = "step-7";
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  std::thread::id caller = std::this_thread::get_id();
  bool same_thread = true;
  o.progress = [&](uint64_t done, uint64_t all) {
    calls.emplace_back(done, all);
    same_thread = same_thread && std::this_thread::get_id() == caller;
  };
  auto info = f.client->PushTensors(s.views, o);
  REQUIRE(info.ok());
  CHECK(info->version() == 1);
  CHECK(info->state() == v1::VERSION_STATE_COMMITTED);
  CHECK(info->tensor_count() == s.views.size());
  CHECK(info->total_bytes() == total);
  CHECK(info->label() == "step-7");

  auto versions = f.service.versions();
  REQUIRE(versions.count(1) == 1);
  const FakeTrainer::Version& v = versions[1];
  CHECK(v.committed);
  for (size_t i = 0; i < s.views.size(); ++i) {
    INFO(s.views[i].name);
    CHECK(v.bytes.at(s.views[i].name) == s.storage[i]);
    CHECK(v.manifest.tensors(i).xxh3() == XXH3_64bits(s.storage[i].data(), s.storage[i].size()));
    CHECK(v.manifest.tensors(i).dtype() == static_cast<int>(s.views[i].dtype));
  }
  CHECK(f.service.streams_opened() == streams);
  CHECK(f.service.max_streams_active() <= streams);
  // The small tensors after layers.0.weight travel together (Chunk.part_*).
  CHECK(f.service.multi_part_chunks() >= 1);

  REQUIRE(!calls.empty());
  CHECK(same_thread);
  CHECK(calls.back() == std::make_pair(total, total));
  for (size_t i = 0; i < calls.size(); ++i) {
    CHECK(calls[i].second == total);
    if (i > 0) CHECK(calls[i].first > calls[i - 1].first);
  }

  // A second push gets the next id; an explicit id is kept.
  o.progress = nullptr;
  CHECK(f.client->PushTensors(s.views, o)->version() == 2);
  o.version = 10;
  CHECK(f.client->PushTensors(s.views, o)->version() == 10);
  auto taken = f.client->PushTensors(s.views, o);
  CHECK(taken.status().code() == absl::StatusCode::kAlreadyExists);
  CHECK(Contains(Message(taken.status()), "BeginVersion failed: version 10 exists"));
}

TEST_CASE("more streams than chunks opens only as many streams as chunks") {
  FakeServer f;
  Sample s;
  s.Add("a", DType::kFloat32, {4}, 1);
  PushOptions o;
  o.streams = 8;
  REQUIRE(f.client->PushTensors(s.views, o).ok());
  CHECK(f.service.streams_opened() == 1);
}

TEST_CASE("a version of empty tensors commits without any stream") {
  FakeServer f;
  std::vector<TensorView> t = {{"e", DType::kFloat32, {0}, nullptr, 0}};
  uint64_t last_done = 1, last_total = 1;
  PushOptions o;
  o.progress = [&](uint64_t d, uint64_t a) { last_done = d, last_total = a; };
  auto info = f.client->PushTensors(t, o);
  REQUIRE(info.ok());
  CHECK(f.service.streams_opened() == 0);
  CHECK((last_done == 0 && last_total == 0));
}

TEST_CASE("a failing stream aborts the version and says where it failed") {
  FakeServer f;
  f.service.fail_after_chunks = 5;
  Sample s = MixedSample();
  PushOptions o;
  o.chunk_bytes = 4096;
  auto info = f.client->PushTensors(s.views, o);
  REQUIRE_FALSE(info.ok());
  CHECK(info.status().code() == absl::StatusCode::kOutOfRange);
  CHECK(Contains(Message(info.status()),
                 "push of version 1: PushChunks failed: chunk past the end of 'w'"));
  CHECK(f.service.aborts() == 1);
  CHECK(f.service.versions().empty());
}

TEST_CASE("a checksum mismatch at commit aborts the version") {
  FakeServer f;
  f.service.corrupt = true;
  Sample s = MixedSample();
  auto info = f.client->PushTensors(s.views, PushOptions());
  REQUIRE_FALSE(info.ok());
  CHECK(info.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(Message(info.status()), "push of version 1: Commit failed: "));
  CHECK(Contains(Message(info.status()), "checksum mismatch"));
  CHECK(f.service.aborts() == 1);
}

TEST_CASE("BeginVersion's RESOURCE_EXHAUSTED comes back with the daemon's message") {
  FakeServer f;
  f.service.exhausted = true;
  Sample s = MixedSample();
  auto info = f.client->PushTensors(s.views, PushOptions());
  CHECK(info.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(
      Contains(Message(info.status()), "BeginVersion failed: version needs 2.0 GiB, 1.0 GiB free"));
  CHECK(Contains(Message(info.status()), "push of 7 tensors"));
  CHECK(f.service.aborts() == 0);
}

TEST_CASE("a stalled stream is cancelled after the timeout") {
  FakeServer f;
  f.service.stall = true;
  Sample s = MixedSample();
  PushOptions o;
  o.timeout = absl::Milliseconds(300);
  // Many messages, so that a write blocks on the stalled server (one message of the whole sample
  // would be written at once, and the stream's overall deadline could end it first).
  o.chunk_bytes = 16 << 10;
  absl::Time start = absl::Now();
  auto info = f.client->PushTensors(s.views, o);
  CHECK(absl::Now() - start < absl::Seconds(10));
  REQUIRE_FALSE(info.ok());
  INFO(Message(info.status()));
  CHECK(info.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(Contains(Message(info.status()), "made no progress for"));
  CHECK(f.service.aborts() == 1);
}

TEST_CASE("cancelling from the progress callback aborts the push") {
  FakeServer f;
  f.service.stall = true;  // Keeps the push going until cancelled.
  Sample s = MixedSample();
  std::atomic<bool> cancel{false};
  PushOptions o;
  o.cancel = &cancel;
  o.progress = [&](uint64_t, uint64_t) { cancel = true; };
  auto info = f.client->PushTensors(s.views, o);
  CHECK(info.status().code() == absl::StatusCode::kCancelled);
  CHECK(Contains(Message(info.status()), "push of version 1: push cancelled"));
  CHECK(f.service.aborts() == 1);
}

TEST_CASE("an unreachable daemon gives UNAVAILABLE naming the address") {
  FakeServer f;
  std::string target = f.endpoint.target;
  f.server->Shutdown(std::chrono::system_clock::now());
  Endpoint e;
  e.target = target;
  auto client = TrainerClient::Connect(e);
  REQUIRE(client.ok());
  Sample s;
  s.Add("a", DType::kFloat32, {4}, 1);
  PushOptions o;
  o.timeout = absl::Seconds(2);
  auto info = (*client)->PushTensors(s.views, o);
  REQUIRE_FALSE(info.ok());
  CHECK(info.status().code() == absl::StatusCode::kUnavailable);
  CHECK(Contains(Message(info.status()), target));
}

TEST_CASE("LoadFiles sends absolute paths") {
  FakeServer f;
  auto info = f.client->LoadFiles({"model.safetensors", "/abs/b.safetensors"}, 0, "files",
                                  absl::Seconds(5));
  REQUIRE(info.ok());
  CHECK(info->version() == 42);
  CHECK(info->label() == "files");
  std::vector<std::string> paths = f.service.load_paths();
  REQUIRE(paths.size() == 2);
  CHECK(paths[0] == (std::filesystem::current_path() / "model.safetensors").string());
  CHECK(paths[1] == "/abs/b.safetensors");
  CHECK(f.client->LoadFiles({}, 0, "", absl::Seconds(1)).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("LoadFiles with a progress callback: every message, the version from the last one") {
  FakeServer f;
  f.service.with_progress = true;
  std::vector<v1::LoadFilesProgress> seen;
  // Over TCP a directory goes to the daemon as it is: the daemon expands it.
  auto info = f.client->LoadFiles({"/models/llama"}, 0, "", absl::Seconds(5),
                                  [&](const v1::LoadFilesProgress& p) { seen.push_back(p); });
  INFO(info.status().ToString());
  REQUIRE(info.ok());
  CHECK(info->version() == 43);
  CHECK(f.service.progress_calls() == 1);
  CHECK(f.service.load_paths() == std::vector<std::string>{"/models/llama"});
  REQUIRE(seen.size() == 3);
  CHECK(seen[0].stage() == v1::LOAD_STAGE_HEADERS);
  CHECK(seen[1].bytes_done() == 40);
  CHECK(seen[2].stage() == v1::LOAD_STAGE_DONE);
  CHECK(seen[2].bytes_done() == seen[2].bytes_total());
}

TEST_CASE("LoadFiles with a progress callback falls back to the plain call on an older daemon") {
  FakeServer f;  // LoadFilesWithProgress: UNIMPLEMENTED
  int calls = 0;
  auto info = f.client->LoadFiles({"/abs/a.safetensors"}, 5, "old", absl::Seconds(5),
                                  [&](const v1::LoadFilesProgress&) { ++calls; });
  INFO(info.status().ToString());
  REQUIRE(info.ok());
  CHECK(info->version() == 5);
  CHECK(calls == 0);
  CHECK(f.service.progress_calls() == 0);
  CHECK(f.service.load_paths() == std::vector<std::string>{"/abs/a.safetensors"});
}

}  // namespace
}  // namespace ckpt::client
