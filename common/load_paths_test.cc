#include "common/load_paths.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace ckpt {
namespace {

namespace fs = std::filesystem;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A fresh directory under TEST_TMPDIR for one test.
struct Dir {
  explicit Dir(const std::string& name) {
    const char* tmp = std::getenv("TEST_TMPDIR");
    path = fs::path(tmp != nullptr ? tmp : "/tmp") / ("load_paths_" + name);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  std::string Write(const std::string& name, const std::string& text = "x") const {
    std::ofstream(path / name, std::ios::binary) << text;
    return *this / name;
  }
  fs::path path;
};

// An index whose weight_map maps tensor i to shards[i].
std::string Index(const std::vector<std::string>& shards) {
  std::string map;
  for (size_t i = 0; i < shards.size(); ++i) {
    if (i > 0) map += ",";
    map += "\"t" + std::to_string(i) + "\":\"" + shards[i] + "\"";
  }
  return "{\"metadata\":{\"total_size\":123},\"weight_map\":{" + map + "}}";
}

std::vector<std::string> Expand(const std::vector<std::string>& paths) {
  auto r = ExpandLoadPaths(paths, OpenPath);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return *r;
}

absl::Status ExpandError(const std::vector<std::string>& paths) {
  auto r = ExpandLoadPaths(paths, OpenPath);
  REQUIRE_FALSE(r.ok());
  return r.status();
}

TEST_CASE("IsIndexFileName looks at the last component only") {
  CHECK(IsIndexFileName("/m/model.safetensors.index.json"));
  CHECK(IsIndexFileName("/m/diffusion_pytorch_model.safetensors.index.json"));
  CHECK(IsIndexFileName("x.index.json"));
  CHECK_FALSE(IsIndexFileName("/m/.index.json"));
  CHECK_FALSE(IsIndexFileName("/m.index.json/model.safetensors"));
  CHECK_FALSE(IsIndexFileName("/m/config.json"));
}

TEST_CASE("ParseIndexShards: deduplicated and sorted shard names") {
  auto shards = ParseIndexShards(
      Index({"model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors"}),
      "/m/i.json");
  REQUIRE(shards.ok());
  CHECK(*shards == std::vector<std::string>{"model-00001-of-00002.safetensors",
                                            "model-00002-of-00002.safetensors"});
}

TEST_CASE("ParseIndexShards refuses bad indexes, naming the index") {
  struct Case {
    std::string json;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"not json", "not valid JSON"},
      {"[1]", "not a JSON object (it is array)"},
      {"{}", "has no \"weight_map\""},
      {"{\"weight_map\":[]}", "\"weight_map\" is not an object"},
      {"{\"weight_map\":{}}", "names no shard"},
      {"{\"weight_map\":{\"a\":1}}", "maps tensor 'a' to a JSON number"},
      {Index({"../outside.safetensors"}), "not a plain file name"},
      {Index({"sub/x.safetensors"}), "not a plain file name"},
      {Index({"..safetensors"}), "not a plain file name"},
      {Index({""}), "is empty"},
      {Index({"pytorch_model-00001.bin"}), "does not end in .safetensors"},
      {std::string(100, '[') + std::string(100, ']'), "nests deeper than 8 levels"},
      {"{\"weight_map\":{\"a\":\"x.safetensors\"}} trailing", "not valid JSON"},
  };
  for (const Case& c : cases) {
    INFO(c.json);
    auto r = ParseIndexShards(c.json, "/m/model.safetensors.index.json");
    REQUIRE_FALSE(r.ok());
    INFO(r.status().message());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(std::string(r.status().message()),
                   "safetensors index /m/model.safetensors.index.json: "));
    CHECK(Contains(std::string(r.status().message()), c.needle));
  }
}

TEST_CASE("a directory with an index loads the shards it names, not the other files") {
  Dir d("with_index");
  d.Write("model-00001-of-00002.safetensors");
  d.Write("model-00002-of-00002.safetensors");
  d.Write("consolidated.safetensors");  // as Mistral's repositories ship it beside the shards
  d.Write("model.safetensors.index.json",
          Index({"model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"}));
  const std::vector<std::string> want = {d / "model-00001-of-00002.safetensors",
                                         d / "model-00002-of-00002.safetensors"};
  CHECK(Expand({d.path.string()}) == want);
  CHECK(Expand({d.path.string() + "//"}) == want);
  // The index itself, given directly.
  CHECK(Expand({d / "model.safetensors.index.json"}) == want);
}

TEST_CASE("a directory without an index loads every *.safetensors file in it, sorted") {
  Dir d("no_index");
  d.Write("b.safetensors");
  d.Write("a.safetensors");
  d.Write("config.json", "{}");
  d.Write(".hidden.safetensors");
  fs::create_directories(d.path / "sub");
  d.Write("sub/c.safetensors");
  CHECK(Expand({d.path.string()}) ==
        std::vector<std::string>{d / "a.safetensors", d / "b.safetensors"});
  // Plain files pass as they are, in their place.
  CHECK(Expand({d / "b.safetensors", d.path.string(), d / "config.json"}) ==
        std::vector<std::string>{d / "b.safetensors", d / "a.safetensors", d / "b.safetensors",
                                 d / "config.json"});
}

TEST_CASE("one *.safetensors.index.json other than model's is used; two are ambiguous") {
  Dir d("other_index");
  d.Write("x.safetensors");
  d.Write("y.safetensors");
  d.Write("diffusion_pytorch_model.safetensors.index.json", Index({"y.safetensors"}));
  CHECK(Expand({d.path.string()}) == std::vector<std::string>{d / "y.safetensors"});
  d.Write("other.safetensors.index.json", Index({"x.safetensors"}));
  absl::Status two = ExpandError({d.path.string()});
  CHECK(two.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(std::string(two.message()), "has 2 safetensors indexes"));
  // model.safetensors.index.json wins over the others.
  d.Write("model.safetensors.index.json", Index({"x.safetensors", "y.safetensors"}));
  CHECK(Expand({d.path.string()}).size() == 2);
}

TEST_CASE("a directory with no safetensors is an error naming it") {
  Dir d("empty");
  d.Write("pytorch_model.bin");
  absl::Status s = ExpandError({d.path.string()});
  INFO(s.message());
  CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(std::string(s.message()), "directory " + d.path.string() + " has no"));
  CHECK(Contains(std::string(s.message()), "'pytorch_model.bin'"));
}

TEST_CASE("an index naming a missing shard, a directory, or a bad name is refused") {
  Dir d("bad_index");
  d.Write("a.safetensors");
  fs::create_directories(d.path / "dir.safetensors");
  const std::string index = d / "model.safetensors.index.json";

  d.Write("model.safetensors.index.json", Index({"a.safetensors", "missing.safetensors"}));
  absl::Status missing = ExpandError({d.path.string()});
  INFO(missing.message());
  CHECK(missing.code() == absl::StatusCode::kNotFound);
  CHECK(Contains(std::string(missing.message()), index));
  CHECK(Contains(std::string(missing.message()), d / "missing.safetensors"));

  d.Write("model.safetensors.index.json", Index({"dir.safetensors"}));
  absl::Status dir = ExpandError({index});
  CHECK(dir.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(std::string(dir.message()), "is not a regular file"));

  d.Write("model.safetensors.index.json", Index({"../a.safetensors"}));
  absl::Status escape = ExpandError({index});
  CHECK(escape.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(std::string(escape.message()), "'../a.safetensors'"));

  d.Write("model.safetensors.index.json", std::string(kMaxIndexFileBytes + 1, ' '));
  absl::Status big = ExpandError({index});
  CHECK(big.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(std::string(big.message()), "larger than 64.0 MiB"));
}

TEST_CASE("shards are looked at through the opener: one that refuses a path refuses the load") {
  Dir d("opener");
  d.Write("a.safetensors");
  d.Write("b.safetensors");
  d.Write("model.safetensors.index.json", Index({"a.safetensors", "b.safetensors"}));
  std::vector<std::string> opened;
  PathOpener only_a = [&](const std::string& path) -> absl::StatusOr<ScopedFd> {
    opened.push_back(path);
    if (Contains(path, "b.safetensors")) return absl::PermissionDeniedError("outside " + path);
    return OpenPath(path);
  };
  auto r = ExpandLoadPaths({d.path.string()}, only_a);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(opened == std::vector<std::string>{d.path.string(), d / "model.safetensors.index.json",
                                           d / "a.safetensors", d / "b.safetensors"});
}

TEST_CASE("symlinked shards (a Hugging Face cache snapshot) are followed") {
  Dir d("snapshot");
  fs::create_directories(d.path / "blobs");
  fs::create_directories(d.path / "snap");
  d.Write("blobs/1111");
  d.Write("blobs/2222", Index({"model.safetensors"}));
  fs::create_symlink("../blobs/1111", d.path / "snap" / "model.safetensors");
  fs::create_symlink("../blobs/2222", d.path / "snap" / "model.safetensors.index.json");
  CHECK(Expand({d / "snap"}) == std::vector<std::string>{d / "snap/model.safetensors"});
  CHECK(Expand({d / "snap/model.safetensors.index.json"}) ==
        std::vector<std::string>{d / "snap/model.safetensors"});
}

TEST_CASE("more files than the limit are refused") {
  Dir d("many");
  for (int i = 0; i < 5; ++i) d.Write("f" + std::to_string(i) + ".safetensors");
  auto r = ExpandLoadPaths({d.path.string()}, OpenPath, 4);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ExpandLoadPaths({d.path.string()}, OpenPath, 5).ok());
  CHECK(ExpandError({d / "nope"}).code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ckpt
