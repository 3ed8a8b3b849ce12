#include "client/ckptctl/version_format.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "common/units.h"

namespace ckpt::ctl {

std::string StateName(v1::VersionState state) {
  switch (state) {
    case v1::VERSION_STATE_STAGING:
      return "staging";
    case v1::VERSION_STATE_COMMITTED:
      return "committed";
    case v1::VERSION_STATE_RETIRED:
      return "retired";
    default:
      return "unspecified";
  }
}

std::string DTypeWireName(int dtype) {
  std::optional<DType> d = DTypeFromWire(dtype);
  return d.has_value() ? DTypeName(*d) : absl::StrCat("dtype(", dtype, ")");
}

std::string Xxh3Hex(uint64_t xxh3) { return absl::StrFormat("%016x", xxh3); }

nlohmann::json VersionInfoJson(const v1::VersionInfo& info) {
  return {
      {"version", info.version()},
      {"state", StateName(info.state())},
      {"tensor_count", info.tensor_count()},
      {"total_bytes", info.total_bytes()},
      {"created_unix_ms", info.created_unix_ms()},
      {"committed_unix_ms", info.committed_unix_ms()},
      {"label", info.label()},
      {"received_bytes", info.received_bytes()},
      {"transport", info.transport()},
      {"ipc_bytes", info.ipc_bytes()},
      {"part_count", info.part_count()},
      {"parts", std::vector<uint32_t>(info.parts().begin(), info.parts().end())},
  };
}

nlohmann::json VersionsJson(const v1::ListVersionsResponse& versions) {
  nlohmann::json list = nlohmann::json::array();
  for (const v1::VersionInfo& v : versions.versions()) list.push_back(VersionInfoJson(v));
  return {{"versions", list}};
}

std::vector<DTypeTotal> DTypeTotals(const v1::Manifest& manifest) {
  std::map<std::string, DTypeTotal> by_name;
  for (const v1::TensorSpec& t : manifest.tensors()) {
    DTypeTotal& total = by_name[DTypeWireName(t.dtype())];
    total.dtype = DTypeWireName(t.dtype());
    total.tensors += 1;
    total.bytes += t.byte_size();
  }
  std::vector<DTypeTotal> totals;
  for (auto& [name, total] : by_name) totals.push_back(total);
  std::stable_sort(totals.begin(), totals.end(),
                   [](const DTypeTotal& a, const DTypeTotal& b) { return a.bytes > b.bytes; });
  return totals;
}

nlohmann::json VersionDetailJson(const v1::GetVersionResponse& version) {
  nlohmann::json j = VersionInfoJson(version.info());
  nlohmann::json dtypes = nlohmann::json::object();
  for (const DTypeTotal& t : DTypeTotals(version.manifest())) {
    dtypes[t.dtype] = {{"tensors", t.tensors}, {"bytes", t.bytes}};
  }
  j["dtypes"] = dtypes;
  nlohmann::json tensors = nlohmann::json::array();
  for (const v1::TensorSpec& t : version.manifest().tensors()) {
    tensors.push_back({{"name", t.name()},
                       {"dtype", DTypeWireName(t.dtype())},
                       {"shape", std::vector<int64_t>(t.shape().begin(), t.shape().end())},
                       {"byte_size", t.byte_size()},
                       {"xxh3", Xxh3Hex(t.xxh3())}});
  }
  j["tensors"] = tensors;
  return j;
}

std::string FormatUnixMs(int64_t unix_ms, absl::TimeZone tz) {
  if (unix_ms == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(unix_ms), tz);
}

namespace {

std::string StateText(const v1::VersionInfo& v) {
  std::string state = StateName(v.state());
  if (v.state() == v1::VERSION_STATE_STAGING && v.total_bytes() > 0) {
    absl::StrAppend(&state, absl::StrFormat(" (%d%%)", static_cast<int>(100.0 * v.received_bytes() /
                                                                        v.total_bytes())));
  }
  if (v.part_count() != 0) {
    // A version pushed in parts: the parts held here.
    absl::StrAppend(&state, v.parts_size() == 1 ? " part " : " parts ",
                    absl::StrJoin(v.parts(), ","), " of ", v.part_count());
  }
  return state;
}

std::string Shape(const v1::TensorSpec& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]");
}

}  // namespace

std::string VersionsText(const v1::ListVersionsResponse& versions, absl::TimeZone tz) {
  if (versions.versions().empty()) return "no versions\n";
  std::vector<std::vector<std::string>> rows = {
      {"VERSION", "STATE", "TENSORS", "SIZE", "CREATED", "LABEL"}};
  for (const v1::VersionInfo& v : versions.versions()) {
    rows.push_back({absl::StrCat(v.version()), StateText(v), absl::StrCat(v.tensor_count()),
                    FormatBytes(v.total_bytes()), FormatUnixMs(v.created_unix_ms(), tz),
                    v.label()});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      // Numbers right-aligned, text left-aligned; the last column unpadded.
      bool number = c == 0 || c == 2 || c == 3;
      if (c + 1 == row.size()) {
        absl::StrAppend(&line, row[c]);
      } else if (number) {
        absl::StrAppend(&line, std::string(width[c] - row[c].size(), ' '), row[c], "  ");
      } else {
        absl::StrAppend(&line, row[c], std::string(width[c] - row[c].size(), ' '), "  ");
      }
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string TensorsTable(const v1::Manifest& manifest) {
  std::vector<std::vector<std::string>> rows = {{"NAME", "DTYPE", "SHAPE", "SIZE", "XXH3"}};
  for (const v1::TensorSpec& t : manifest.tensors()) {
    rows.push_back({t.name(), DTypeWireName(t.dtype()), Shape(t), FormatBytes(t.byte_size()),
                    Xxh3Hex(t.xxh3())});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  // One very long name must not push every row to the right: names wider than the cap get a line
  // of their own, and their row goes on below them, aligned with the others.
  width[0] = std::min(width[0], kMaxTensorNameWidth);
  std::string out;
  for (const auto& row : rows) {
    std::string line = "  ";
    if (row[0].size() > width[0]) {
      absl::StrAppend(&out, line, row[0], "\n");
      line.append(width[0] + 2, ' ');
    } else {
      absl::StrAppend(&line, row[0], std::string(width[0] - row[0].size() + 2, ' '));
    }
    for (size_t c = 1; c < row.size(); ++c) {
      const std::string pad(width[c] - row[c].size(), ' ');
      // SIZE right-aligned (numbers), the rest left-aligned; the last column unpadded.
      if (c == 3) {
        absl::StrAppend(&line, pad, row[c], "  ");
      } else if (c + 1 == row.size()) {
        absl::StrAppend(&line, row[c]);
      } else {
        absl::StrAppend(&line, row[c], pad, "  ");
      }
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string VersionDetailText(const v1::GetVersionResponse& version, absl::TimeZone tz,
                              bool tensors) {
  const v1::VersionInfo& v = version.info();
  std::string out = absl::StrCat("version ", v.version(), ": ", StateText(v));
  if (!v.label().empty()) absl::StrAppend(&out, ", label \"", v.label(), "\"");
  absl::StrAppend(&out, "\n");
  absl::StrAppend(&out, "  created:    ", FormatUnixMs(v.created_unix_ms(), tz), "\n");
  if (v.committed_unix_ms() != 0) {
    absl::StrAppend(&out, "  committed:  ", FormatUnixMs(v.committed_unix_ms(), tz), "\n");
  }
  absl::StrAppend(&out, "  tensors:    ", v.tensor_count(), ", ", FormatBytes(v.total_bytes()),
                  " (", v.total_bytes(), " bytes)\n");
  if (v.state() == v1::VERSION_STATE_STAGING) {
    absl::StrAppend(&out, "  received:   ", FormatBytes(v.received_bytes()), "\n");
  }
  if (!v.transport().empty()) {
    absl::StrAppend(&out, "  transport:  ", v.transport());
    if (v.ipc_bytes() > 0) {
      absl::StrAppend(&out, " (", FormatBytes(v.ipc_bytes()), " copied from GPU memory)");
    }
    absl::StrAppend(&out, "\n");
  }
  std::vector<DTypeTotal> totals = DTypeTotals(version.manifest());
  size_t name_width = 0, count_width = 0;
  for (const DTypeTotal& t : totals) {
    name_width = std::max(name_width, t.dtype.size());
    count_width = std::max(count_width, absl::StrCat(t.tensors).size());
  }
  for (size_t i = 0; i < totals.size(); ++i) {
    const DTypeTotal& t = totals[i];
    std::string count = absl::StrCat(t.tensors);
    absl::StrAppend(&out, i == 0 ? "  dtypes:     " : "              ", t.dtype,
                    std::string(name_width - t.dtype.size(), ' '), "  ",
                    std::string(count_width - count.size(), ' '), count,
                    t.tensors == 1 ? " tensor   " : " tensors  ", FormatBytes(t.bytes), "\n");
  }
  if (tensors) absl::StrAppend(&out, TensorsTable(version.manifest()));
  return out;
}

}  // namespace ckpt::ctl
