#include "daemon/store/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/scoped_fd.h"
#include "tests/testing/safetensors_writer.h"

namespace ckpt::daemon {
namespace {

using ::ckpt::testing::RandomBytes;
using ::ckpt::testing::TensorToWrite;
using ::ckpt::testing::WriteRawSafetensors;
using ::ckpt::testing::WriteSafetensors;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

bool Contains(absl::string_view haystack, absl::string_view needle) {
  return haystack.find(needle) != absl::string_view::npos;
}

// Checks the code, that the message is one line naming the file, and that it holds each of `parts`.
void CheckError(const absl::Status& status, absl::StatusCode code, const std::string& path,
                const std::vector<std::string>& parts = {}) {
  INFO(status.ToString());
  REQUIRE_FALSE(status.ok());
  CHECK(status.code() == code);
  CHECK(Contains(status.message(), path));
  CHECK_FALSE(Contains(status.message(), "\n"));
  for (const std::string& p : parts) {
    INFO(p);
    CHECK(Contains(status.message(), p));
  }
}

// A file named `name` with `header` (as given) and `data_size` bytes of data; returns what reading
// its header gives.
absl::StatusOr<SafetensorsFile> ReadRaw(const std::string& name, const std::string& header,
                                        size_t data_size = 64) {
  std::string path = TempPath(name);
  REQUIRE(WriteRawSafetensors(path, header, std::string(data_size, '\0')).ok());
  return ReadSafetensorsHeader(path);
}

// Expects reading a file with `header` to fail INVALID_ARGUMENT naming the file and `parts`.
void ExpectBadHeader(const std::string& name, const std::string& header,
                     const std::vector<std::string>& parts, size_t data_size = 64) {
  auto r = ReadRaw(name, header, data_size);
  CheckError(r.status(), absl::StatusCode::kInvalidArgument, TempPath(name), parts);
}

std::vector<TensorToWrite> SampleTensors() {
  return {
      {"model.embed.weight", DType::kBfloat16, {16, 8}, RandomBytes(16 * 8 * 2, 1)},
      {"model.layers.0.scale", DType::kFloat32, {}, RandomBytes(4, 2)},  // a scalar
      {"model.layers.0.empty", DType::kFloat16, {0, 4}, ""},
      {"model.layers.0.w", DType::kFloat8E4m3fn, {33, 7}, RandomBytes(33 * 7, 3)},
      {"model.layers.0.idx", DType::kInt64, {5}, RandomBytes(40, 4)},
      {"model.layers.0.mask", DType::kBool, {3}, std::string("\x01\x00\x01", 3)},
      {"lm_head.weight", DType::kFloat8E5m2, {1000}, RandomBytes(1000, 5)},
  };
}

// Reads every tensor of `file` into one buffer per tensor.
absl::Status ReadAll(const SafetensorsFile& file, std::vector<std::string>* out, int threads,
                     absl::Time deadline, uint64_t piece_bytes) {
  ScopedFd fd(::open(file.path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd.valid());
  out->assign(file.tensors.size(), "");
  std::vector<ReadRange> ranges;
  for (size_t i = 0; i < file.tensors.size(); ++i) {
    const SafetensorsEntry& t = file.tensors[i];
    (*out)[i].assign(t.byte_size, '\xee');
    ranges.push_back({fd.get(), t.file_offset, t.byte_size, (*out)[i].data(),
                      "file " + file.path + " tensor " + t.name});
  }
  return ReadRangesParallel(ranges, threads, deadline, piece_bytes);
}

TEST_CASE("a written file round-trips: header, metadata, bytes") {
  std::string path = TempPath("roundtrip.safetensors");
  std::vector<TensorToWrite> tensors = SampleTensors();
  std::vector<std::pair<std::string, std::string>> metadata = {{"format", "pt"}, {"step", "1200"}};
  REQUIRE(WriteSafetensors(path, tensors, metadata).ok());

  auto file = ReadSafetensorsHeader(path);
  REQUIRE(file.ok());
  CHECK(file->path == path);
  CHECK(file->metadata == metadata);
  CHECK((file->data_start - 8) % 8 == 0);  // the writer pads the header with spaces
  REQUIRE(file->tensors.size() == tensors.size());
  uint64_t offset = file->data_start;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsEntry& e = file->tensors[i];
    INFO(tensors[i].name);
    CHECK(e.name == tensors[i].name);  // written back to back: file order is the header's order
    CHECK(e.dtype == tensors[i].dtype);
    CHECK(e.shape == tensors[i].shape);
    CHECK(e.file_offset == offset);
    CHECK(e.byte_size == tensors[i].bytes.size());
    offset += e.byte_size;
  }
  CHECK(file->file_size == offset);

  std::vector<std::string> data;
  // Pieces of 7 bytes: every range is cut, at odd boundaries.
  REQUIRE(ReadAll(*file, &data, 4, absl::InfiniteFuture(), 7).ok());
  for (size_t i = 0; i < tensors.size(); ++i) CHECK(data[i] == tensors[i].bytes);
}

TEST_CASE("tensors come ordered by file offset; empty ones at an offset first, in header order") {
  std::string header = R"({"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                       R"("z0":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                       R"("__metadata__":{"zeta":"1","alpha":"2"},)"
                       R"("a0":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
                       R"("a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}})";
  auto file = ReadRaw("order.safetensors", header + "   ", 8);
  REQUIRE(file.ok());
  std::vector<std::string> names;
  for (const auto& t : file->tensors) names.push_back(t.name);
  // b, z0 and a0 all start at data offset 4: the empty ones first, in header order.
  CHECK(names == std::vector<std::string>{"a", "z0", "a0", "b"});
  // Metadata keeps the header's order (not sorted).
  CHECK(file->metadata ==
        std::vector<std::pair<std::string, std::string>>{{"zeta", "1"}, {"alpha", "2"}});
}

TEST_CASE("accepted: no tensors, JSON whitespace around the object") {
  auto empty = ReadRaw("empty.safetensors", "{}        ", 0);
  REQUIRE(empty.ok());
  CHECK(empty->tensors.empty());
  CHECK(empty->data_start == 18);
  auto ws =
      ReadRaw("ws.safetensors",
              " \n{\"t\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}\t\r\n  ", 4);
  REQUIRE(ws.ok());
  CHECK(ws->tensors[0].byte_size == 4);
}

TEST_CASE("strict: unknown entry keys, gaps and trailing bytes are refused, naming them") {
  ExpectBadHeader("extra.safetensors",
                  R"({"t":{"dtype":"I32","shape":[1],"data_offsets":[0,4],"x":[1]}}  )",
                  {"tensor 't'", "unknown key 'x'"}, 4);
  ExpectBadHeader("gap.safetensors",
                  R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})",
                  {"bytes [4, 8) of the data section belong to no tensor (before 'b')"}, 12);
  ExpectBadHeader("lead.safetensors", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                  {"bytes [0, 4) of the data section belong to no tensor"}, 8);
  ExpectBadHeader("tail.safetensors", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                  {"the data section has 60 bytes after the last tensor"}, 64);
  ExpectBadHeader("tail_empty.safetensors", "{}", {"has 64 bytes after the last tensor"}, 64);
}

TEST_CASE("strict: NUL bytes, text around the object, bad UTF-8 and deep nesting are refused") {
  const std::string good = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  // nlohmann stops at a NUL: without the check, anything after it would be ignored.
  ExpectBadHeader("nul.safetensors", good + std::string("\0garbage", 8),
                  {"NUL byte at offset " + std::to_string(good.size())}, 4);
  ExpectBadHeader(
      "nul_in_name.safetensors",
      std::string("{\"a\0b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 54),
      {"NUL byte"}, 4);
  ExpectBadHeader("after.safetensors", good + " x", {"not valid JSON"}, 4);
  ExpectBadHeader("before.safetensors", "x" + good, {"does not start with a JSON object"}, 4);
  ExpectBadHeader("utf8.safetensors",
                  "{\"a\xff\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
                  {"not valid UTF-8 at offset 3"}, 4);
  ExpectBadHeader("overlong.safetensors", "{\"\xc0\xaf\":1}", {"not valid UTF-8"}, 0);
  ExpectBadHeader("surrogate.safetensors", "{\"\xed\xa0\x80\":1}", {"not valid UTF-8"}, 0);
  auto utf8 = ReadRaw("utf8_ok.safetensors",
                      "{\"w\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\":{\"dtype\":\"U8\",\"shape\":[4],"
                      "\"data_offsets\":[0,4]}}",
                      4);
  REQUIRE(utf8.ok());
  // ~90,000 nested '[' crashed the daemon (a recursive dump on the error path): refused before
  // parsing, in every place a header can nest.
  for (const char* where : {"shape", "dtype", "data_offsets"}) {
    INFO(where);
    std::string deep = std::string(R"({"w":{")") + where + "\":" + std::string(90000, '[') +
                       std::string(90000, ']') + "}}";
    ExpectBadHeader("deep.safetensors", deep, {"nests deeper than 8 levels"}, 0);
  }
  ExpectBadHeader("deep_meta.safetensors", R"({"__metadata__":)" + std::string(90000, '{') + "}",
                  {"nests deeper"}, 0);
  // Brackets inside strings do not count.
  auto in_string =
      ReadRaw("brackets.safetensors", R"({"__metadata__":{"k":"[[[[[[[[[[[[[[["}})", 0);
  CHECK(in_string.ok());
}

TEST_CASE("bad: file shorter than 8 bytes") {
  std::string path = TempPath("short.safetensors");
  REQUIRE(WriteRawSafetensors(path, "", "").ok());
  REQUIRE(::truncate(path.c_str(), 5) == 0);
  CheckError(ReadSafetensorsHeader(path).status(), absl::StatusCode::kInvalidArgument, path,
             {"5 bytes", "shorter than the 8-byte header length"});
}

TEST_CASE("bad: header length larger than the file") {
  std::string path = TempPath("biglen.safetensors");
  REQUIRE(WriteRawSafetensors(path, "{}", "", /*header_length=*/1000).ok());
  CheckError(ReadSafetensorsHeader(path).status(), absl::StatusCode::kInvalidArgument, path,
             {"the header length is larger than the file (2 bytes after"});
}

TEST_CASE("bad: absurd header length") {
  std::string path = TempPath("absurd.safetensors");
  REQUIRE(WriteRawSafetensors(path, "{}", "", int64_t{1} << 40).ok());
  // The length is not quoted: for a file that is not safetensors it is the file's first 8 bytes.
  absl::Status absurd = ReadSafetensorsHeader(path).status();
  CheckError(absurd, absl::StatusCode::kInvalidArgument, path, {"over the limit of 100.0 MiB"});
  CHECK_FALSE(Contains(absurd.message(), "1099511627776"));
  // Also through the string API.
  std::string big(kMaxSafetensorsHeaderBytes + 1, ' ');
  CheckError(ParseSafetensorsHeader(big, big.size() + 8, "x.safetensors").status(),
             absl::StatusCode::kInvalidArgument, "x.safetensors", {"over the limit"});
}

TEST_CASE("a file that is not safetensors is named and said what it looks like") {
  struct Case {
    std::string name;
    std::string content;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"index.json", "{\n  \"metadata\": {\"total_size\": 16},\n  \"weight_map\": {}\n}\n",
       "it starts with '{': a JSON file, not safetensors? (an index file is accepted as such only "
       "by name *.index.json)"},
      {"page.html", "<!DOCTYPE html><html>404</html>", "an HTML or XML page"},
      {"lfs.safetensors", "version https://git-lfs.github.com/spec/v1\noid sha256:00\n",
       "a Git LFS pointer file?"},
      {"model.bin", std::string("PK\x03\x04\x14\x00\x00\x00", 8) + std::string(64, '\0'),
       "a zip archive"},
      {"model.pkl", std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8", 12),
       "a Python pickle"},
      {"notes.txt", "some words, and more words", "it starts with text"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string path = TempPath("not_st_" + c.name);
    {
      std::ofstream out(path, std::ios::binary);
      out << c.content;
    }
    absl::Status s = ReadSafetensorsHeader(path).status();
    CheckError(s, absl::StatusCode::kInvalidArgument, path, {"not a safetensors file", c.needle});
  }
}

TEST_CASE("bad: header larger than file_size given to ParseSafetensorsHeader") {
  CheckError(ParseSafetensorsHeader("{}", 9, "p.safetensors").status(),
             absl::StatusCode::kInvalidArgument, "p.safetensors",
             {"the header length is larger than the file (1 bytes after the 8-byte length"});
}

TEST_CASE("bad: truncated header (not valid JSON)") {
  ExpectBadHeader("trunc_header.safetensors", R"({"t":{"dtype":"F32","shape":[1],"data_off)",
                  {"header is not valid JSON", "parse error"});
  ExpectBadHeader("garbage_header.safetensors", "PK\x03\x04 not json",
                  {"does not start with a JSON object"});
  ExpectBadHeader("bad_json.safetensors", "{PK\x03\x04 not json", {"not valid JSON"});
}

TEST_CASE("bad: a number too large for a double is INVALID_ARGUMENT, not INTERNAL (fuzzer)") {
  ExpectBadHeader("bignum.safetensors", R"({"a":1e400})", {"number too large to represent"}, 0);
}

TEST_CASE("bad: header not a JSON object") {
  ExpectBadHeader("array_header.safetensors", "[1, 2]", {"does not start with a JSON object"});
  ExpectBadHeader("string_header.safetensors", R"("x")", {"does not start with a JSON object"});
}

TEST_CASE("bad: entry not an object") {
  ExpectBadHeader("entry_num.safetensors", R"({"w": 3})",
                  {"tensor 'w'", "not a JSON object (it is number)"});
}

TEST_CASE("bad: entry missing dtype, shape or data_offsets") {
  ExpectBadHeader("no_dtype.safetensors", R"({"w":{"shape":[1],"data_offsets":[0,4]}})",
                  {"tensor 'w'", "missing 'dtype'"});
  ExpectBadHeader("no_shape.safetensors", R"({"w":{"dtype":"F32","data_offsets":[0,4]}})",
                  {"tensor 'w'", "missing 'shape'"});
  ExpectBadHeader("no_offsets.safetensors", R"({"w":{"dtype":"F32","shape":[1]}})",
                  {"tensor 'w'", "missing 'data_offsets'"});
}

TEST_CASE("bad: entry fields of the wrong JSON type") {
  struct Case {
    const char* entry;
    const char* part;
  };
  const Case cases[] = {
      {R"({"dtype":5,"shape":[1],"data_offsets":[0,4]})", "'dtype' must be a string, got 5"},
      {R"({"dtype":"F32","shape":"1","data_offsets":[0,4]})", "'shape' must be an array"},
      {R"({"dtype":"F32","shape":[1,-2],"data_offsets":[0,4]})", "got [1,-2]"},
      {R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})", "'shape' must be an array"},
      {R"({"dtype":"F32","shape":{"a":1},"data_offsets":[0,4]})", "'shape' must be an array"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[4]})", "'data_offsets' must be [begin, end]"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})", "'data_offsets' must be"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":"0-4"})", "'data_offsets' must be"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", "got [-4,0]"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,"4"]})", "'data_offsets' must be"},
  };
  int i = 0;
  for (const Case& c : cases) {
    ExpectBadHeader("types" + std::to_string(i++) + ".safetensors",
                    std::string(R"({"layer.w":)") + c.entry + "}", {"tensor 'layer.w'", c.part});
  }
}

TEST_CASE("bad: unknown dtype names the dtype") {
  for (const char* dtype : {"F8_E8M0", "C64", "float32", "bf16", "F4", ""}) {
    INFO(dtype);
    ExpectBadHeader(
        "dtype.safetensors",
        std::string(R"({"w":{"dtype":")") + dtype + R"(","shape":[1],"data_offsets":[0,1]}})",
        {"tensor 'w'", std::string("unknown dtype '") + dtype + "'", "BF16, F32"});
  }
}

TEST_CASE("every safetensors dtype name is accepted") {
  for (const char* dtype : {"BOOL", "U8", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64",
                            "F8_E4M3", "F8_E5M2"}) {
    INFO(dtype);
    auto d = ParseDType(dtype);
    REQUIRE(d.ok());
    std::string size = std::to_string(DTypeSize(*d) * 3);
    auto file = ReadRaw("dtypes.safetensors",
                        std::string(R"({"w":{"dtype":")") + dtype +
                            R"(","shape":[3],"data_offsets":[0,)" + size + "]}}",
                        DTypeSize(*d) * 3);
    REQUIRE(file.ok());
    CHECK(file->tensors[0].dtype == *d);
  }
}

TEST_CASE("bad: data_offsets with begin > end") {
  ExpectBadHeader("begin_end.safetensors",
                  R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}})",
                  {"tensor 'w'", "begin <= end", "got [8,4]"});
}

TEST_CASE("bad: data_offsets end beyond the data section") {
  ExpectBadHeader("beyond.safetensors",
                  R"({"w":{"dtype":"U8","shape":[65],"data_offsets":[0,65]}})",
                  {"tensor 'w'", "data_offsets [0, 65] out of range", "has 64 bytes"});
}

TEST_CASE("bad: byte count differs from shape times element size") {
  ExpectBadHeader("size.safetensors",
                  R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}})",
                  {"tensor 'w'", "hold 10 bytes but BF16 [2, 3] needs 12"});
  ExpectBadHeader("overflow.safetensors",
                  R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                  {"tensor 'w'", "overflows"});
}

TEST_CASE("bad: overlapping tensors name both") {
  ExpectBadHeader("overlap.safetensors",
                  R"({"a":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},)"
                  R"("b":{"dtype":"U8","shape":[8],"data_offsets":[40,48]},)"
                  R"("c":{"dtype":"U8","shape":[4],"data_offsets":[20,24]}})",
                  {"tensors 'a' [0, 32) and 'c' [20, 24) overlap"});
  // An empty tensor inside another's range is refused too (the format packs tensors), while one
  // at a boundary is fine.
  ExpectBadHeader("overlap_empty.safetensors",
                  R"({"a":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},)"
                  R"("e":{"dtype":"U8","shape":[0],"data_offsets":[8,8]}})",
                  {"'a' [0, 32) and 'e' [8, 8) overlap"}, 32);
  auto ok = ReadRaw("boundary_empty.safetensors",
                    R"({"a":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},)"
                    R"("e":{"dtype":"U8","shape":[0],"data_offsets":[32,32]}})",
                    32);
  CHECK(ok.ok());
}

TEST_CASE("bad: duplicate keys are detected") {
  ExpectBadHeader("dup.safetensors",
                  R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                  R"("v":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                  R"("w":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})",
                  {"key 'w' appears twice in the header"});
  ExpectBadHeader("dup_inner.safetensors",
                  R"({"w":{"dtype":"U8","shape":[4],"dtype":"F32","data_offsets":[0,4]}})",
                  {"tensor 'w': key 'dtype' appears twice"});
}

TEST_CASE("bad: __metadata__ not an object of strings") {
  ExpectBadHeader("meta_arr.safetensors", R"({"__metadata__":["a"]})",
                  {"'__metadata__' must be an object of strings"});
  ExpectBadHeader("meta_num.safetensors", R"({"__metadata__":{"format":"pt","step":3}})",
                  {"'__metadata__' must be an object of strings; 'step' is 3"});
}

TEST_CASE("names with control characters stay on one line in messages") {
  ExpectBadHeader("ctl.safetensors", R"({"a\nb": 1})", {R"(tensor 'a\nb')"});
}

TEST_CASE("unreadable files: FAILED_PRECONDITION naming the path and the reason") {
  std::string missing = TempPath("no-such-file.safetensors");
  CheckError(ReadSafetensorsHeader(missing).status(), absl::StatusCode::kFailedPrecondition,
             missing, {"No such file or directory"});
  std::string dir = TempPath("");
  CheckError(ReadSafetensorsHeader(dir).status(), absl::StatusCode::kFailedPrecondition, dir,
             {"not a regular file"});
}

TEST_CASE("a file truncated in its data section fails parsing: out of range") {
  std::string path = TempPath("trunc_data.safetensors");
  std::vector<TensorToWrite> tensors = SampleTensors();
  REQUIRE(WriteSafetensors(path, tensors).ok());
  auto full = ReadSafetensorsHeader(path);
  REQUIRE(full.ok());
  // Cut inside the 4th tensor ("model.layers.0.w").
  REQUIRE(::truncate(path.c_str(), full->tensors[3].file_offset + 10) == 0);
  CheckError(ReadSafetensorsHeader(path).status(), absl::StatusCode::kInvalidArgument, path,
             {"tensor 'model.layers.0.w'", "out of range", "file truncated?"});
}

TEST_CASE("ReadRangesParallel: a file truncated after parsing is a short read naming the range") {
  std::string path = TempPath("trunc_late.safetensors");
  REQUIRE(WriteSafetensors(path, SampleTensors()).ok());
  auto file = ReadSafetensorsHeader(path);
  REQUIRE(file.ok());
  REQUIRE(::truncate(path.c_str(), file->tensors.back().file_offset + 100) == 0);
  std::vector<std::string> data;
  absl::Status s = ReadAll(*file, &data, 3, absl::InfiniteFuture(), 64);
  CheckError(s, absl::StatusCode::kOutOfRange, path,
             {"tensor lm_head.weight", "unexpected end of file"});
}

TEST_CASE("ReadRangesParallel: read errors name the range and the reason") {
  ScopedFd dir(::open(TempPath("").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(dir.valid());
  std::string buf(16, '\0');
  absl::Status s = ReadRangesParallel({{dir.get(), 0, 16, buf.data(), "file D tensor t"}}, 2,
                                      absl::InfiniteFuture());
  CheckError(s, absl::StatusCode::kFailedPrecondition, "file D tensor t",
             {"read failed at offset 0", "Is a directory"});
}

TEST_CASE("ReadRangesParallel: a passed deadline is DEADLINE_EXCEEDED and reads nothing") {
  std::string path = TempPath("deadline.safetensors");
  REQUIRE(WriteSafetensors(path, SampleTensors()).ok());
  auto file = ReadSafetensorsHeader(path);
  REQUIRE(file.ok());
  std::vector<std::string> data;
  absl::Status s = ReadAll(*file, &data, 4, absl::Now() - absl::Seconds(1), 16 << 20);
  CheckError(s, absl::StatusCode::kDeadlineExceeded, path, {"deadline exceeded", "0 B"});
  for (const std::string& d : data) CHECK(d == std::string(d.size(), '\xee'));
  // Nothing to read: done at once, whatever the deadline.
  CHECK(ReadRangesParallel({}, 4, absl::InfinitePast()).ok());
}

TEST_CASE("ReadRangesParallel: invalid arguments") {
  char buf[4];
  CHECK(ReadRangesParallel({{0, 0, 4, buf, "x"}}, 0, absl::InfiniteFuture()).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(ReadRangesParallel({{0, 0, 4, buf, "x"}}, 1, absl::InfiniteFuture(), 0).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(ReadRangesParallel({{-1, 0, 4, buf, "x"}}, 1, absl::InfiniteFuture()).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(ReadRangesParallel({{0, 0, 4, nullptr, "x"}}, 1, absl::InfiniteFuture()).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(ReadRangesParallel({{0, 0, 0, nullptr, "x"}}, 1, absl::InfiniteFuture()).ok());
}

TEST_CASE("a 64 MiB file is read exactly by 8 threads") {
  std::string path = TempPath("big.safetensors");
  std::vector<TensorToWrite> tensors;
  // Sizes that do not divide evenly into pieces, and one tensor much larger than the others.
  tensors.push_back({"big", DType::kBfloat16, {4096, 4096}, RandomBytes(32 << 20, 10)});
  for (int i = 0; i < 31; ++i) {
    tensors.push_back({"t" + std::to_string(i), DType::kFloat32, {1000, 259 + i}, ""});
    tensors.back().bytes = RandomBytes(1000 * (259 + i) * 4, 100 + i);
  }
  REQUIRE(WriteSafetensors(path, tensors).ok());
  auto file = ReadSafetensorsHeader(path);
  REQUIRE(file.ok());
  REQUIRE(file->file_size > (64u << 20));
  for (uint64_t piece : {uint64_t{16} << 20, uint64_t{1} << 20}) {
    INFO(piece);
    std::vector<std::string> data;
    REQUIRE(ReadAll(*file, &data, 8, absl::Now() + absl::Seconds(60), piece).ok());
    REQUIRE(data.size() == tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) CHECK(data[i] == tensors[i].bytes);
  }
}

TEST_CASE("the writer refuses bytes that do not match dtype and shape") {
  auto s = WriteSafetensors(TempPath("w.safetensors"), {{"w", DType::kFloat32, {2}, "abc"}});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(s.message(), "'w'"));
  CHECK(RandomBytes(100, 7) == RandomBytes(100, 7));
  CHECK(RandomBytes(100, 7) != RandomBytes(100, 8));
}

}  // namespace
}  // namespace ckpt::daemon
