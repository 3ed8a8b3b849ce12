#include "common/units.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace ckpt {
namespace {

// Splits "1.5 GiB" into "1.5" and "gib" (lower case, spaces dropped).
void SplitNumberAndUnit(absl::string_view text, std::string* number, std::string* unit) {
  text = absl::StripAsciiWhitespace(text);
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.' ||
                             text[i] == '-' || text[i] == '+')) {
    ++i;
  }
  *number = std::string(text.substr(0, i));
  *unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text.substr(i)));
}

}  // namespace

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  std::string number, unit;
  SplitNumberAndUnit(text, &number, &unit);
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("invalid byte size '", text, "': ", why));
  };
  if (number.empty()) return bad("expected a number such as 1073741824, 512MiB or 64GiB");
  double multiplier;
  if (unit.empty() || unit == "b") {
    multiplier = 1;
  } else if (unit == "k" || unit == "kib") {
    multiplier = 1024.0;
  } else if (unit == "m" || unit == "mib") {
    multiplier = 1024.0 * 1024;
  } else if (unit == "g" || unit == "gib") {
    multiplier = 1024.0 * 1024 * 1024;
  } else if (unit == "t" || unit == "tib") {
    multiplier = 1024.0 * 1024 * 1024 * 1024;
  } else if (unit == "kb") {
    multiplier = 1e3;
  } else if (unit == "mb") {
    multiplier = 1e6;
  } else if (unit == "gb") {
    multiplier = 1e9;
  } else if (unit == "tb") {
    multiplier = 1e12;
  } else {
    return bad(
        absl::StrCat("unknown unit '", unit, "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"));
  }
  if (multiplier == 1 && number.find('.') == std::string::npos) {
    uint64_t v;
    if (number[0] == '-' || !absl::SimpleAtoi(number, &v)) return bad("not a non-negative integer");
    return v;
  }
  double v;
  if (!absl::SimpleAtod(number, &v) || !std::isfinite(v)) return bad("not a number");
  if (v < 0) return bad("negative");
  double bytes = std::round(v * multiplier);
  if (bytes >= 18446744073709551616.0) return bad("too large");
  return static_cast<uint64_t>(bytes);
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, kUnits[u]);
}

absl::StatusOr<absl::Duration> ParseDuration(absl::string_view text) {
  std::string number, unit;
  SplitNumberAndUnit(text, &number, &unit);
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("invalid duration '", text, "': ", why));
  };
  double v;
  if (number.empty() || !absl::SimpleAtod(number, &v) || !std::isfinite(v)) {
    return bad("expected a number with a unit such as 5s, 250ms or 2m");
  }
  if (v < 0) return bad("negative");
  if (unit.empty() || unit == "s") return absl::Seconds(v);
  if (unit == "ms") return absl::Milliseconds(v);
  if (unit == "us") return absl::Microseconds(v);
  if (unit == "m" || unit == "min") return absl::Minutes(v);
  if (unit == "h") return absl::Hours(v);
  return bad(absl::StrCat("unknown unit '", unit, "' (use us, ms, s, m or h)"));
}

std::string HumanDuration(absl::Duration d) {
  if (d < absl::ZeroDuration()) return absl::StrCat("-", HumanDuration(-d));
  if (d < absl::Seconds(1)) return absl::StrFormat("%.0fms", absl::ToDoubleMilliseconds(d));
  if (d < absl::Minutes(1)) return absl::StrFormat("%.1fs", absl::ToDoubleSeconds(d));
  int64_t s = absl::ToInt64Seconds(d);
  if (d < absl::Hours(1)) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (d < absl::Hours(24)) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  return absl::StrFormat("%dd%02dh", s / 86400, (s / 3600) % 24);
}

}  // namespace ckpt
