// Hugging Face checkpoints as they ship, loaded by the real daemon (host backend): a directory of
// shards with its model.safetensors.index.json, a directory without index, the index file itself,
// and the errors (no safetensors, a missing shard, a shard name leaving the directory, a JSON file
// given as a shard); each through the Unix socket (the C++ client expands and passes descriptors)
// and TCP (the daemon expands, under load_files_dirs only). Also LoadFilesWithProgress: stages in
// order, byte counts that grow and end at the total; and ckptctl push of a directory.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/subprocess.h"

namespace ckpt::testing {
namespace {

using client::DaemonClient;
using client::TrainerClient;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

// A sharded checkpoint in `dir`: shard i (1-based) of n holds tensors "layers.<i>.<k>" of
// `bytes_per_tensor` bytes each. With `index`, writes model.safetensors.index.json naming them.
// Returns the tensor names.
std::set<std::string> WriteCheckpoint(const std::string& dir, int shards, int tensors_per_shard,
                                      size_t bytes_per_tensor, bool index) {
  ::mkdir(dir.c_str(), 0755);
  nlohmann::json weight_map = nlohmann::json::object();
  std::set<std::string> names;
  for (int i = 1; i <= shards; ++i) {
    char file[64];
    std::snprintf(file, sizeof(file), "model-%05d-of-%05d.safetensors", i, shards);
    std::vector<TensorToWrite> tensors;
    for (int k = 0; k < tensors_per_shard; ++k) {
      const std::string name = "layers." + std::to_string(i) + "." + std::to_string(k);
      tensors.push_back({name,
                         DType::kFloat32,
                         {static_cast<int64_t>(bytes_per_tensor / 4)},
                         RandomBytes(bytes_per_tensor, i * 100 + k)});
      weight_map[name] = file;
      names.insert(name);
    }
    REQUIRE(WriteSafetensors(dir + "/" + file, tensors).ok());
  }
  if (index) {
    nlohmann::json j = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    WriteText(dir + "/model.safetensors.index.json", j.dump(2));
  }
  // What else a Hugging Face repository holds: never loaded.
  WriteText(dir + "/config.json", "{\"architectures\": [\"LlamaForCausalLM\"]}\n");
  WriteText(dir + "/tokenizer.json", "{\"version\": \"1.0\"}\n");
  return names;
}

// A daemon with its Unix socket and TCP (no authentication: the test owns the machine) serving
// LoadFiles under `models` only, and a trainer client for each.
struct Daemon {
  Daemon()
      : proc({"--backend", "host", "--host-memory-budget", "128MiB", "--log-level", "warn",
              "--listen-tcp", "127.0.0.1:0", "--insecure-tcp", "true", "--load-files-dirs",
              models.path()}) {
    INFO("daemon stderr: " << proc.proc->Stderr());
    REQUIRE(proc.ready());
    unix_endpoint = *client::ResolveEndpoint(proc.socket, "");
    admin = std::move(*DaemonClient::Connect(unix_endpoint));
    auto status = admin->Status(absl::Seconds(10));
    REQUIRE(status.ok());
    REQUIRE(status->listen_addresses_size() == 2);
    tcp_endpoint = *client::ResolveEndpoint("", status->listen_addresses(1));
    unix_client = std::move(*TrainerClient::Connect(unix_endpoint));
    tcp_client = std::move(*TrainerClient::Connect(tcp_endpoint));
  }

  std::set<std::string> TensorNames(uint64_t version) {
    auto v = admin->GetVersion(version, absl::Seconds(10));
    REQUIRE(v.ok());
    std::set<std::string> names;
    for (const v1::TensorSpec& t : v->manifest().tensors()) names.insert(t.name());
    return names;
  }

  // Nothing staging, whatever failed.
  void RequireNoStaging() {
    auto s = admin->Status(absl::Seconds(10));
    REQUIRE(s.ok());
    CHECK(s->staging_versions() == 0);
  }

  TempDir models;  // load_files_dirs; declared before the daemon, which needs its path
  DaemonProcess proc;
  client::Endpoint unix_endpoint, tcp_endpoint;
  std::unique_ptr<DaemonClient> admin;
  std::unique_ptr<TrainerClient> unix_client, tcp_client;
};

struct Transport {
  const char* name;
  TrainerClient* client;
};

std::vector<Transport> Transports(Daemon& d) {
  return {{"unix socket", d.unix_client.get()}, {"tcp", d.tcp_client.get()}};
}

absl::StatusOr<v1::VersionInfo> Load(TrainerClient* c, const std::vector<std::string>& paths) {
  return c->LoadFiles(paths, 0, "", absl::Seconds(30));
}

TEST_CASE("a directory with an index, one without, and the index file itself") {
  Daemon d;
  const std::string llama = d.models / "llama";
  const std::set<std::string> names = WriteCheckpoint(llama, 3, 2, 4096, /*index=*/true);
  // Beside the shards, as Mistral's repositories ship it: a consolidated file holding the same
  // tensors. Loading it too would fail ("is in both"): only the index decides.
  REQUIRE(WriteSafetensors(llama + "/consolidated.safetensors",
                           {{"layers.1.0", DType::kFloat32, {1024}, RandomBytes(4096, 1)}})
              .ok());
  const std::string plain = d.models / "plain";
  const std::set<std::string> plain_names = WriteCheckpoint(plain, 2, 3, 1024, /*index=*/false);

  for (const Transport& t : Transports(d)) {
    INFO(t.name);
    auto dir = Load(t.client, {llama});
    INFO(dir.status().ToString());
    REQUIRE(dir.ok());
    CHECK(dir->tensor_count() == 6);
    CHECK(dir->total_bytes() == 6 * 4096);
    CHECK(d.TensorNames(dir->version()) == names);

    auto trailing_slash = Load(t.client, {llama + "/"});
    REQUIRE(trailing_slash.ok());
    CHECK(d.TensorNames(trailing_slash->version()) == names);

    auto index = Load(t.client, {llama + "/model.safetensors.index.json"});
    INFO(index.status().ToString());
    REQUIRE(index.ok());
    CHECK(d.TensorNames(index->version()) == names);

    auto no_index = Load(t.client, {plain});
    INFO(no_index.status().ToString());
    REQUIRE(no_index.ok());
    CHECK(d.TensorNames(no_index->version()) == plain_names);
  }
}

TEST_CASE(
    "bad checkpoints: no safetensors, a missing shard, '..' in a shard name, JSON as a shard") {
  Daemon d;
  const std::string empty = d.models / "empty";
  ::mkdir(empty.c_str(), 0755);
  WriteText(empty + "/config.json", "{}");

  const std::string missing = d.models / "missing";
  WriteCheckpoint(missing, 2, 1, 64, /*index=*/true);
  const std::string gone = missing + "/model-00002-of-00002.safetensors";
  REQUIRE(::unlink(gone.c_str()) == 0);

  const std::string escape = d.models / "escape";
  WriteCheckpoint(escape, 1, 1, 64, /*index=*/false);
  WriteText(escape + "/model.safetensors.index.json",
            R"({"weight_map": {"w": "../missing/model-00001-of-00002.safetensors"}})");

  const std::string json = d.models / "missing/config.json";

  for (const Transport& t : Transports(d)) {
    INFO(t.name);
    auto none = Load(t.client, {empty});
    INFO(none.status().ToString());
    REQUIRE_FALSE(none.ok());
    CHECK(none.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(Contains(std::string(none.status().message()), "directory " + empty + " has no"));

    auto shard = Load(t.client, {missing});
    INFO(shard.status().ToString());
    REQUIRE_FALSE(shard.ok());
    CHECK(Contains(std::string(shard.status().message()), gone));
    CHECK(
        Contains(std::string(shard.status().message()), missing + "/model.safetensors.index.json"));

    auto dots = Load(t.client, {escape});
    INFO(dots.status().ToString());
    REQUIRE_FALSE(dots.ok());
    CHECK(dots.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(std::string(dots.status().message()), "not a plain file name"));

    auto not_safetensors = Load(t.client, {json});
    INFO(not_safetensors.status().ToString());
    REQUIRE_FALSE(not_safetensors.ok());
    CHECK(not_safetensors.status().code() == absl::StatusCode::kInvalidArgument);
    const std::string message(not_safetensors.status().message());
    CHECK(Contains(message, json));
    CHECK(Contains(message, "not a safetensors file"));
    CHECK(Contains(message, "a JSON file"));
    d.RequireNoStaging();
  }
}

TEST_CASE("TCP: a directory outside load_files_dirs, or leading out of it, is refused") {
  Daemon d;
  TempDir outside;
  const std::string model = outside / "model";
  WriteCheckpoint(model, 2, 1, 64, /*index=*/true);
  auto far = Load(d.tcp_client.get(), {model});
  INFO(far.status().ToString());
  REQUIRE_FALSE(far.ok());
  CHECK(far.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(Contains(std::string(far.status().message()), "is not under the daemon's load_files_dirs"));

  // Nothing about what lies outside comes back: an outside directory without safetensors is
  // refused as outside, not described (the expansion itself looks only below load_files_dirs).
  const std::string bare = outside / "bare";
  ::mkdir(bare.c_str(), 0755);
  auto probe = Load(d.tcp_client.get(), {bare});
  INFO(probe.status().ToString());
  REQUIRE_FALSE(probe.ok());
  CHECK(probe.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK_FALSE(Contains(std::string(probe.status().message()), "has no"));
  REQUIRE(::symlink(bare.c_str(), (d.models / "bare-link").c_str()) == 0);
  auto probe_link = Load(d.tcp_client.get(), {d.models / "bare-link"});
  INFO(probe_link.status().ToString());
  REQUIRE_FALSE(probe_link.ok());
  CHECK(probe_link.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(Contains(std::string(probe_link.status().message()), "outside load_files_dirs"));

  // A symlink to it from inside: the directory resolves outside.
  REQUIRE(::symlink(model.c_str(), (d.models / "link").c_str()) == 0);
  auto link = Load(d.tcp_client.get(), {d.models / "link"});
  INFO(link.status().ToString());
  REQUIRE_FALSE(link.ok());
  CHECK(link.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(Contains(std::string(link.status().message()), "outside load_files_dirs"));

  // A directory inside whose index names a shard that is a symlink out.
  const std::string inside = d.models / "inside";
  WriteCheckpoint(inside, 2, 1, 64, /*index=*/true);
  const std::string shard = inside + "/model-00002-of-00002.safetensors";
  REQUIRE(::unlink(shard.c_str()) == 0);
  REQUIRE(::symlink((model + "/model-00002-of-00002.safetensors").c_str(), shard.c_str()) == 0);
  auto out = Load(d.tcp_client.get(), {inside});
  INFO(out.status().ToString());
  REQUIRE_FALSE(out.ok());
  CHECK(out.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(Contains(std::string(out.status().message()), shard));

  // The same directory through the Unix socket: this process opens the files with its own
  // permissions, so the symlink is followed.
  auto local = Load(d.unix_client.get(), {inside});
  INFO(local.status().ToString());
  CHECK(local.ok());
  d.RequireNoStaging();
}

TEST_CASE("LoadFilesWithProgress: stages in order, bytes grow to the total, the version last") {
  Daemon d;
  const std::string big = d.models / "big";
  // 3 shards of 4 x 1 MiB.
  WriteCheckpoint(big, 3, 4, 1 << 20, /*index=*/true);
  const uint64_t total = 12u << 20;
  for (const Transport& t : Transports(d)) {
    INFO(t.name);
    std::vector<v1::LoadFilesProgress> seen;
    auto info = t.client->LoadFiles({big}, 0, "progress", absl::Seconds(30),
                                    [&](const v1::LoadFilesProgress& p) { seen.push_back(p); });
    INFO(info.status().ToString());
    REQUIRE(info.ok());
    CHECK(info->total_bytes() == total);
    REQUIRE(seen.size() >= 3);
    // One message at least for each stage's beginning, then DONE with the version.
    std::set<int> stages;
    for (const auto& p : seen) stages.insert(p.stage());
    CHECK(stages.count(v1::LOAD_STAGE_HEADERS) == 1);
    CHECK(stages.count(v1::LOAD_STAGE_READING) == 1);
    CHECK(stages.count(v1::LOAD_STAGE_COMMITTING) == 1);
    for (size_t i = 1; i < seen.size(); ++i) {
      INFO("message " << i);
      CHECK(seen[i].stage() >= seen[i - 1].stage());
      CHECK(seen[i].bytes_done() >= seen[i - 1].bytes_done());
      CHECK(seen[i].files_done() >= seen[i - 1].files_done());
      CHECK(seen[i].files_total() == 3);
    }
    const auto first_reading = std::find_if(
        seen.begin(), seen.end(),
        [](const v1::LoadFilesProgress& p) { return p.stage() == v1::LOAD_STAGE_READING; });
    REQUIRE(first_reading != seen.end());
    CHECK(first_reading->bytes_total() == total);
    CHECK(first_reading->bytes_done() < total);
    const v1::LoadFilesProgress& last = seen.back();
    CHECK(last.stage() == v1::LOAD_STAGE_DONE);
    CHECK(last.bytes_done() == total);
    CHECK(last.bytes_total() == total);
    CHECK(last.files_done() == 3);
    CHECK(last.headers_read() == 3);
    CHECK(last.version().version() == info->version());
    CHECK(last.version().label() == "progress");

    // A failed load ends the stream with its error.
    int calls = 0;
    auto bad = t.client->LoadFiles({d.models / "nothing-here"}, 0, "", absl::Seconds(30),
                                   [&](const v1::LoadFilesProgress&) { ++calls; });
    REQUIRE_FALSE(bad.ok());
    CHECK(Contains(std::string(bad.status().message()), d.models / "nothing-here"));
  }
}

TEST_CASE("ckptctl push takes a directory and an index file") {
  Daemon d;
  const std::string llama = d.models / "llama";
  WriteCheckpoint(llama, 2, 2, 1024, /*index=*/true);
  RunResult r = d.proc.Ctl({"push", llama, "--label", "hf"});
  INFO(r.err);
  REQUIRE(r.exit.code == 0);
  CHECK(Contains(r.out, "committed: 4 tensors, 4.0 KiB in "));
  CHECK(r.err.empty());  // no progress line without a terminal
  r = d.proc.Ctl({"push", "--json", llama + "/model.safetensors.index.json"});
  INFO(r.err);
  REQUIRE(r.exit.code == 0);
  CHECK(nlohmann::json::parse(r.out)["tensor_count"] == 4);
  r = d.proc.Ctl({"push", llama + "/config.json"});
  CHECK(r.exit.code == 1);
  CHECK(Lines(r.err).size() == 1);
  CHECK(Contains(r.err, llama + "/config.json"));
  CHECK(Contains(r.err, "not a safetensors file"));
}

}  // namespace
}  // namespace ckpt::testing
