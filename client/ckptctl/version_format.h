// Renders versions for `ckptctl versions` / `ckptctl show` and for the C ABI's JSON answers:
// JSON (stable field names, numbers as numbers, checksums as 16 hex digits) or text for people.
#ifndef CKPT_CLIENT_CKPTCTL_VERSION_FORMAT_H_
#define CKPT_CLIENT_CKPTCTL_VERSION_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "proto/admin.pb.h"
#include "proto/common.pb.h"

namespace ckpt::ctl {

// "staging", "committed", "retired", "unspecified".
std::string StateName(v1::VersionState state);

// "bfloat16", "float8_e4m3fn", ... (common/dtype.h names); "dtype(99)" for an unknown wire number.
std::string DTypeWireName(int dtype);

// 16 lower-case hex digits (JSON numbers above 2^53 lose precision in many parsers).
std::string Xxh3Hex(uint64_t xxh3);

// The VersionInfo fields under their proto names; `state` as StateName.
nlohmann::json VersionInfoJson(const v1::VersionInfo& info);

// {"versions": [VersionInfoJson, ...]} in the daemon's order.
nlohmann::json VersionsJson(const v1::ListVersionsResponse& versions);

struct DTypeTotal {
  std::string dtype;
  uint64_t tensors = 0;
  uint64_t bytes = 0;
};

// Tensors and bytes per dtype of a manifest, largest byte total first (ties: by name).
std::vector<DTypeTotal> DTypeTotals(const v1::Manifest& manifest);

// VersionInfoJson's fields plus "dtypes": {"bfloat16": {"tensors": n, "bytes": b}, ...} and
// "tensors": [{"name", "dtype", "shape", "byte_size", "xxh3"}, ...] in manifest order.
nlohmann::json VersionDetailJson(const v1::GetVersionResponse& version);

// "2026-11-23 10:42:01" in `tz`; "-" for 0.
std::string FormatUnixMs(int64_t unix_ms, absl::TimeZone tz);

// A table: VERSION STATE TENSORS SIZE CREATED LABEL, one row per version ("no versions" if none).
// STAGING rows show the share received, e.g. "staging (40%)".
std::string VersionsText(const v1::ListVersionsResponse& versions, absl::TimeZone tz);

// The widest NAME column of TensorsTable; longer names get a line of their own.
inline constexpr size_t kMaxTensorNameWidth = 60;

// The manifest's tensors as a table with a header: NAME DTYPE SHAPE SIZE XXH3, one row per tensor
// in manifest order, each line indented by two spaces, columns as wide as their widest entry
// (SIZE right-aligned). A name longer than kMaxTensorNameWidth stands on a line of its own and
// its row continues on the next line, aligned with the others.
std::string TensorsTable(const v1::Manifest& manifest);

// A summary: state, label, times, tensor count and bytes, per-dtype totals; with `tensors`, also
// TensorsTable.
std::string VersionDetailText(const v1::GetVersionResponse& version, absl::TimeZone tz,
                              bool tensors);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_VERSION_FORMAT_H_
