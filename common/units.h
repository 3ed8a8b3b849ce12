// Parsing and printing of byte sizes and durations as operators write them in configs and flags.
#ifndef CKPT_COMMON_UNITS_H_
#define CKPT_COMMON_UNITS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace ckpt {

// "1073741824", "512MiB", "64GiB", "1.5GiB", "2GB" (SI: 10^9), "4k" (KiB). Units: B, K/KiB, M/MiB,
// G/GiB, T/TiB (powers of 1024) and KB, MB, GB, TB (powers of 1000), case-insensitive, spaces
// allowed between number and unit. Errors: INVALID_ARGUMENT naming the text; values over 2^64 - 1
// are refused.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

// "0 B", "512 B", "1.5 KiB", "64.0 GiB": binary units, one decimal above 1 KiB.
std::string FormatBytes(uint64_t bytes);

// "5s", "250ms", "2m", "1h", "1.5s", "10us"; a bare number is seconds. Negative durations are
// refused.
absl::StatusOr<absl::Duration> ParseDuration(absl::string_view text);

// "3m12s", "1h02m", "850ms", "4.2s": compact, for humans.
std::string HumanDuration(absl::Duration d);

}  // namespace ckpt

#endif  // CKPT_COMMON_UNITS_H_
