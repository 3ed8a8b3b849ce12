// libFuzzer target: daemon/store/safetensors.h ParseSafetensorsHeader.
//
// The input is the header text (the JSON after the 8-byte length), so seeds are plain JSON files.
// The file size given to the parser is derived from the header itself: the largest data_offsets
// end that a lenient pre-scan finds (nlohmann, exceptions off, anything goes) makes the data
// section exactly as long as the tensors need, so valid headers reach the success path; the sizes
// one byte shorter and one byte longer, a file without a data section and a file shorter than the
// header are tried as well, and must be refused where the format says so.
//
// Invariants (a violation calls __builtin_trap, which libFuzzer reports as a crash):
// - the parser returns (never throws: an escaping exception aborts the process);
// - an error is INVALID_ARGUMENT with a one-line message starting "safetensors file PATH: ";
// - a result has data_start = 8 + header length, file_size and path as given, tensors sorted by
//   offset that pack [data_start, file_size) exactly (no gap, overlap or tail), each byte_size =
//   TensorByteSize(dtype, shape), names unique and never "__metadata__";
// - the same input parses to the same result twice (no hidden state);
// - a header that parses with data size D is refused with D - 1 and D + 1 (when D > 0 for -1).
#include <cstddef>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "daemon/store/safetensors.h"

namespace {

using ckpt::daemon::ParseSafetensorsHeader;
using ckpt::daemon::SafetensorsFile;

const std::string kPath = "fuzz.safetensors";

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// Largest data_offsets end in a header, best effort (0 if the text is not a JSON object).
uint64_t GuessDataSize(absl::string_view text) {
  nlohmann::json root = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                              /*allow_exceptions=*/false);
  uint64_t end = 0;
  if (!root.is_object()) return 0;
  for (const auto& item : root.items()) {
    const auto& v = item.value();
    if (!v.is_object()) continue;
    auto it = v.find("data_offsets");
    if (it == v.end() || !it->is_array() || it->size() != 2) continue;
    const auto& e = (*it)[1];
    if (e.is_number_unsigned()) end = std::max(end, e.get<uint64_t>());
  }
  return end;
}

bool SameFile(const SafetensorsFile& a, const SafetensorsFile& b) {
  if (a.path != b.path || a.file_size != b.file_size || a.data_start != b.data_start ||
      a.metadata != b.metadata || a.tensors.size() != b.tensors.size()) {
    return false;
  }
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const auto& x = a.tensors[i];
    const auto& y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape ||
        x.file_offset != y.file_offset || x.byte_size != y.byte_size) {
      return false;
    }
  }
  return true;
}

void CheckError(const absl::Status& s) {
  Check(!s.ok());
  Check(s.code() == absl::StatusCode::kInvalidArgument);
  Check(absl::StartsWith(s.message(), "safetensors file " + kPath + ": "));
  Check(s.message().find('\n') == absl::string_view::npos);
  Check(s.message().find('\r') == absl::string_view::npos);
}

void CheckFile(const SafetensorsFile& f, absl::string_view header, uint64_t file_size) {
  Check(f.path == kPath);
  Check(f.file_size == file_size);
  Check(f.data_start == 8 + header.size());
  Check(f.data_start <= f.file_size);
  uint64_t end = f.data_start;
  std::set<std::string> names;
  for (const auto& t : f.tensors) {
    Check(t.file_offset == end);  // packed: no gap, no overlap
    Check(t.byte_size <= f.file_size - t.file_offset);
    end = t.file_offset + t.byte_size;
    Check(t.name != "__metadata__");
    Check(names.insert(t.name).second);
    auto expected = ckpt::TensorByteSize(t.dtype, t.shape);
    Check(expected.ok() && *expected == t.byte_size);
    for (int64_t d : t.shape) Check(d >= 0);
  }
  Check(end == f.file_size);  // no tail
}

// Parses with a data section of `data_size` bytes (when that fits in 64 bits); true when it parsed.
bool ParseWith(absl::string_view header, uint64_t data_size, bool expect_refusal) {
  const uint64_t fixed = 8 + header.size();
  if (data_size > std::numeric_limits<uint64_t>::max() - fixed) return false;
  const uint64_t file_size = fixed + data_size;
  absl::StatusOr<SafetensorsFile> r = ParseSafetensorsHeader(header, file_size, kPath);
  if (!r.ok()) {
    CheckError(r.status());
    return false;
  }
  Check(!expect_refusal);
  CheckFile(*r, header, file_size);
  absl::StatusOr<SafetensorsFile> again = ParseSafetensorsHeader(header, file_size, kPath);
  Check(again.ok() && SameFile(*r, *again));
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view header(reinterpret_cast<const char*>(data), size);
  const uint64_t guess = GuessDataSize(header);

  if (ParseWith(header, guess, false)) {
    // The data section must be packed exactly: one byte less is a truncation, one more a tail.
    if (guess > 0) ParseWith(header, guess - 1, true);
    ParseWith(header, guess + 1, true);
  }
  if (guess != 0) ParseWith(header, 0, true);  // some tensor ends past an empty data section

  // A file too short for its own header.
  if (size > 0) {
    absl::StatusOr<SafetensorsFile> r = ParseSafetensorsHeader(header, 8 + size - 1, kPath);
    CheckError(r.status());
  }
  absl::StatusOr<SafetensorsFile> tiny = ParseSafetensorsHeader(header, size % 8, kPath);
  CheckError(tiny.status());
  return 0;
}
