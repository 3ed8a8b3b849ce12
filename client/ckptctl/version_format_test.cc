#include "client/ckptctl/version_format.h"

#include <algorithm>
#include <catch2/catch.hpp>

namespace ckpt::ctl {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

size_t Lines(const std::string& text) { return std::count(text.begin(), text.end(), '\n'); }

v1::VersionInfo Info(uint64_t id, v1::VersionState state, const std::string& label) {
  v1::VersionInfo v;
  v.set_version(id);
  v.set_state(state);
  v.set_tensor_count(3);
  v.set_total_bytes(3u << 20);
  v.set_created_unix_ms(1795443089962);  // 2026-11-23 14:11:29.962 UTC
  v.set_label(label);
  return v;
}

v1::GetVersionResponse Detail() {
  v1::GetVersionResponse r;
  *r.mutable_info() = Info(7, v1::VERSION_STATE_COMMITTED, "step-1200");
  r.mutable_info()->set_committed_unix_ms(1795443091000);
  r.mutable_info()->set_transport("local");
  auto add = [&](const std::string& name, v1::DType dtype, std::vector<int64_t> shape,
                 uint64_t bytes, uint64_t xxh3) {
    v1::TensorSpec* t = r.mutable_manifest()->add_tensors();
    t->set_name(name);
    t->set_dtype(dtype);
    for (int64_t d : shape) t->add_shape(d);
    t->set_byte_size(bytes);
    t->set_xxh3(xxh3);
  };
  add("embed", v1::DTYPE_BFLOAT16, {1024, 512}, 1u << 20, 0xfedcba9876543210ull);
  add("bias", v1::DTYPE_FLOAT32, {256}, 1024, 1);
  add("head", v1::DTYPE_BFLOAT16, {1024, 1024}, 2u << 20, 2);
  return r;
}

TEST_CASE("names of states and dtypes, checksums as 16 hex digits") {
  CHECK(StateName(v1::VERSION_STATE_STAGING) == "staging");
  CHECK(StateName(v1::VERSION_STATE_COMMITTED) == "committed");
  CHECK(StateName(v1::VERSION_STATE_RETIRED) == "retired");
  CHECK(StateName(v1::VERSION_STATE_UNSPECIFIED) == "unspecified");
  CHECK(DTypeWireName(v1::DTYPE_BFLOAT16) == "bfloat16");
  CHECK(DTypeWireName(v1::DTYPE_FLOAT8_E5M2) == "float8_e5m2");
  CHECK(DTypeWireName(99) == "dtype(99)");
  CHECK(Xxh3Hex(0xab) == "00000000000000ab");
  CHECK(Xxh3Hex(0xfedcba9876543210ull) == "fedcba9876543210");
}

TEST_CASE("version JSON keeps proto field names and numbers as numbers") {
  nlohmann::json j = VersionInfoJson(Info(7, v1::VERSION_STATE_STAGING, "x"));
  CHECK(j["version"] == 7);
  CHECK(j["state"] == "staging");
  CHECK(j["total_bytes"].is_number_unsigned());
  CHECK(j["created_unix_ms"] == 1795443089962);
  CHECK(j["label"] == "x");
  CHECK(j.contains("received_bytes"));
  CHECK(j.contains("committed_unix_ms"));
  CHECK(j["transport"] == "");
  CHECK(VersionInfoJson(Detail().info())["transport"] == "local");

  v1::ListVersionsResponse list;
  CHECK(VersionsJson(list)["versions"].is_array());
  CHECK(VersionsJson(list)["versions"].empty());
  *list.add_versions() = Info(1, v1::VERSION_STATE_COMMITTED, "");
  *list.add_versions() = Info(2, v1::VERSION_STATE_STAGING, "");
  CHECK(VersionsJson(list)["versions"][1]["version"] == 2);
}

TEST_CASE("detail JSON: per-dtype totals and every tensor") {
  nlohmann::json j = VersionDetailJson(Detail());
  CHECK(j["version"] == 7);
  CHECK(j["state"] == "committed");
  CHECK(j["dtypes"]["bfloat16"]["tensors"] == 2);
  CHECK(j["dtypes"]["bfloat16"]["bytes"] == (3u << 20));
  CHECK(j["dtypes"]["float32"]["bytes"] == 1024);
  REQUIRE(j["tensors"].size() == 3);
  CHECK(j["tensors"][0]["name"] == "embed");
  CHECK(j["tensors"][0]["dtype"] == "bfloat16");
  CHECK(j["tensors"][0]["shape"] == nlohmann::json::array({1024, 512}));
  CHECK(j["tensors"][0]["byte_size"] == (1u << 20));
  CHECK(j["tensors"][0]["xxh3"] == "fedcba9876543210");
  CHECK(j["tensors"][1]["name"] == "bias");  // Manifest order.
}

TEST_CASE("dtype totals: largest first") {
  std::vector<DTypeTotal> t = DTypeTotals(Detail().manifest());
  REQUIRE(t.size() == 2);
  CHECK(t[0].dtype == "bfloat16");
  CHECK(t[0].tensors == 2);
  CHECK(t[1].dtype == "float32");
  CHECK(DTypeTotals(v1::Manifest()).empty());
}

TEST_CASE("versions table") {
  absl::TimeZone utc = absl::UTCTimeZone();
  CHECK(VersionsText(v1::ListVersionsResponse(), utc) == "no versions\n");
  v1::ListVersionsResponse list;
  *list.add_versions() = Info(7, v1::VERSION_STATE_COMMITTED, "step-1200");
  v1::VersionInfo staging = Info(12, v1::VERSION_STATE_STAGING, "");
  staging.set_received_bytes(staging.total_bytes() / 2);
  *list.add_versions() = staging;
  std::string t = VersionsText(list, utc);
  INFO(t);
  CHECK(t ==
        "VERSION  STATE          TENSORS     SIZE  CREATED              LABEL\n"
        "      7  committed            3  3.0 MiB  2026-11-23 14:11:29  step-1200\n"
        "     12  staging (50%)        3  3.0 MiB  2026-11-23 14:11:29\n");
}

TEST_CASE("show text: summary, dtypes, and tensors on request") {
  absl::TimeZone utc = absl::UTCTimeZone();
  std::string t = VersionDetailText(Detail(), utc, false);
  INFO(t);
  CHECK(Contains(t, "version 7: committed, label \"step-1200\"\n"));
  CHECK(Contains(t, "  created:    2026-11-23 14:11:29\n"));
  CHECK(Contains(t, "  committed:  2026-11-23 14:11:31\n"));
  CHECK(Contains(t, "  tensors:    3, 3.0 MiB (3145728 bytes)\n"));
  CHECK(Contains(t, "  transport:  local\n"));
  v1::GetVersionResponse ipc = Detail();
  ipc.mutable_info()->set_ipc_bytes(3 << 20);
  CHECK(Contains(VersionDetailText(ipc, utc, false),
                 "  transport:  local (3.0 MiB copied from GPU memory)\n"));
  CHECK(VersionInfoJson(ipc.info())["ipc_bytes"] == 3 << 20);
  CHECK(Contains(t, "  dtypes:     bfloat16  2 tensors  3.0 MiB\n"));
  CHECK(Contains(t, "              float32   1 tensor   1.0 KiB\n"));
  CHECK_FALSE(Contains(t, "embed"));
  std::string with = VersionDetailText(Detail(), utc, true);
  INFO(with);
  CHECK(Contains(with,
                 "  NAME   DTYPE     SHAPE            SIZE  XXH3\n"
                 "  embed  bfloat16  [1024, 512]   1.0 MiB  fedcba9876543210\n"
                 "  bias   float32   [256]         1.0 KiB  0000000000000001\n"
                 "  head   bfloat16  [1024, 1024]  2.0 MiB  0000000000000002\n"));
  CHECK(FormatUnixMs(0, utc) == "-");
}

// Where `needle` starts in each line that has it.
std::vector<size_t> Columns(const std::string& text, const std::string& needle) {
  std::vector<size_t> at;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const size_t found = text.substr(begin, end - begin).find(needle);
    if (found != std::string::npos) at.push_back(found);
    begin = end + 1;
  }
  return at;
}

TEST_CASE("tensor table: columns stay aligned whatever the names' lengths") {
  v1::Manifest m;
  auto add = [&](const std::string& name, v1::DType dtype, std::vector<int64_t> shape,
                 uint64_t bytes) {
    v1::TensorSpec* t = m.add_tensors();
    t->set_name(name);
    t->set_dtype(dtype);
    for (int64_t d : shape) t->add_shape(d);
    t->set_byte_size(bytes);
  };
  add("a", v1::DTYPE_FLOAT8_E4M3FN, {7}, 7);
  add("model.layers.11.self_attn.q_proj.weight", v1::DTYPE_BFLOAT16, {4096, 4096}, 32u << 20);
  add("x.b", v1::DTYPE_INT64, {}, 8);
  std::string t = TensorsTable(m);
  INFO(t);
  // Every line of a row has each column at the same offset.
  const size_t dtype_at = Columns(t, "DTYPE")[0];
  CHECK(Columns(t, "float8_e4m3fn") == std::vector<size_t>{dtype_at});
  CHECK(Columns(t, "bfloat16") == std::vector<size_t>{dtype_at});
  CHECK(Columns(t, "int64") == std::vector<size_t>{dtype_at});
  const size_t shape_at = Columns(t, "SHAPE")[0];
  CHECK(Columns(t, "[4096, 4096]") == std::vector<size_t>{shape_at});
  CHECK(Columns(t, "[]") == std::vector<size_t>{shape_at});
  // SIZE right-aligned: the sizes end where the header's SIZE ends.
  const size_t size_end = Columns(t, "SIZE")[0] + 4;
  CHECK(Columns(t, "32.0 MiB")[0] + 8 == size_end);
  CHECK(Columns(t, "8 B")[0] + 3 == size_end);
  CHECK(Columns(t, "0000000000000000").size() == 3);
  for (size_t at : Columns(t, "0000000000000000")) CHECK(at == Columns(t, "XXH3")[0]);
  CHECK(Lines(t) == 4);

  // A name over the cap stands alone; its row continues below, aligned with the others.
  const std::string huge(kMaxTensorNameWidth + 20, 'n');
  add(huge, v1::DTYPE_FLOAT32, {2}, 8);
  t = TensorsTable(m);
  INFO(t);
  CHECK(Contains(t, "  " + huge + "\n"));
  CHECK(Columns(t, "float32") == std::vector<size_t>{Columns(t, "DTYPE")[0]});
  CHECK(Columns(t, "DTYPE")[0] <= 2 + kMaxTensorNameWidth + 2);
  CHECK(Columns(t, "bfloat16") == Columns(t, "DTYPE"));
  CHECK(Lines(t) == 6);
}

}  // namespace
}  // namespace ckpt::ctl
