#include "daemon/store/safetensors.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <limits>
#include <nlohmann/json.hpp>
#include <system_error>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/checked_math.h"
#include "common/message_text.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace ckpt::daemon {
namespace {

// nlohmann::json (std::map objects), not ordered_json: ordered_json finds keys by a linear search,
// so a header of n tensors would cost O(n^2). The header's order is recorded by the parse callback.
using Json = nlohmann::json;

constexpr char kMetadataKey[] = "__metadata__";

std::string Errno() { return std::strerror(errno); }

// A name as it appears in messages: quoted, escaped so that the message stays on one line, cut.
std::string Quote(absl::string_view name) { return QuoteForMessage(name); }

// A JSON value as it appears in messages: compact, ASCII, at most ~64 characters. Only small
// values are dumped (dump recurses, and a 100 MB array would cost its size for nothing).
std::string Show(const Json& value) {
  if (value.is_string()) return QuoteForMessage(value.get_ref<const std::string&>(), 61);
  if (value.is_structured()) {
    bool small = value.size() <= 16;
    for (const Json& item : value) small = small && item.is_primitive() && !item.is_string();
    if (!small) {
      return absl::StrCat(value.is_array() ? "an array" : "an object", " of ", value.size(),
                          value.is_array() ? " elements" : " keys");
    }
  }
  std::string s = value.dump(-1, ' ', /*ensure_ascii=*/true, Json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return s;
}

// The deepest nesting a valid header has is 3 (root object -> tensor entry -> shape array); this
// leaves room without letting a deep header reach nlohmann (its dump recurses).
constexpr int kMaxJsonDepth = 8;

// Checks what the safetensors format requires of the header text before any JSON parsing: UTF-8,
// no NUL byte (nlohmann would stop at one and ignore the rest), an object first, and nesting no
// deeper than kMaxJsonDepth. Returns the problem, or an empty string.
std::string CheckHeaderText(absl::string_view text) {
  size_t i = 0;
  while (i < text.size() &&
         (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) {
    ++i;
  }
  if (i == text.size() || text[i] != '{') return "header does not start with a JSON object '{'";
  int depth = 0;
  bool in_string = false;
  for (size_t k = 0; k < text.size(); ++k) {
    const unsigned char c = static_cast<unsigned char>(text[k]);
    if (c == 0) return absl::StrCat("header has a NUL byte at offset ", k);
    if (c >= 0x80) {
      // One UTF-8 sequence: lead byte, then 1-3 continuation bytes; no overlong forms or
      // surrogates (the ranges of RFC 3629).
      int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : -1;
      if (c > 0xF4) extra = -1;
      bool ok = extra > 0 && k + extra < text.size();
      for (int e = 1; ok && e <= extra; ++e) {
        ok = (static_cast<unsigned char>(text[k + e]) & 0xC0) == 0x80;
      }
      if (ok && extra >= 2) {
        const unsigned char c1 = static_cast<unsigned char>(text[k + 1]);
        if (c == 0xE0 && c1 < 0xA0) ok = false;   // overlong
        if (c == 0xED && c1 >= 0xA0) ok = false;  // surrogate
        if (c == 0xF0 && c1 < 0x90) ok = false;   // overlong
        if (c == 0xF4 && c1 >= 0x90) ok = false;  // past U+10FFFF
      }
      if (!ok) return absl::StrCat("header is not valid UTF-8 at offset ", k);
      k += extra;
      continue;
    }
    if (in_string) {
      if (c == '\\') {
        ++k;  // the escaped character (validated by the JSON parser)
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) {
        return absl::StrCat("header nests deeper than ", kMaxJsonDepth,
                            " levels (a safetensors header needs 3)");
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return "";
}

absl::Status BadFile(const std::string& path, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", path, ": ", why));
}

absl::Status BadTensor(const std::string& path, absl::string_view name, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("safetensors file ", path, ": tensor ", Quote(name), ": ", why));
}

std::string SafetensorsDTypeList() {
  std::vector<std::string> names;
  for (int v = 1; v < 64; ++v) {
    if (auto d = DTypeFromWire(v)) names.push_back(DTypeSafetensorsName(*d));
  }
  return absl::StrJoin(names, ", ");
}

// Only the safetensors spellings, exactly: ParseDType also accepts PyTorch names ("float32") and
// any case, which no safetensors writer produces.
absl::StatusOr<DType> ParseSafetensorsDType(const std::string& text) {
  auto dtype = ParseDType(text);
  if (!dtype.ok() || text != DTypeSafetensorsName(*dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype ", Quote(text), " (supported: ", SafetensorsDTypeList(), ")"));
  }
  return *dtype;
}

// Reads up to `size` bytes at `offset`, retrying after EINTR and partial reads; fewer only at end
// of file. Returns the count read, or errno's text.
absl::StatusOr<uint64_t> PreadFull(int fd, void* dest, uint64_t size, uint64_t offset) {
  // Linux moves at most ~2 GiB per call; stay well under it.
  constexpr uint64_t kMaxPerCall = uint64_t{1} << 30;
  char* out = static_cast<char*>(dest);
  uint64_t done = 0;
  while (done < size) {
    size_t want = static_cast<size_t>(std::min(size - done, kMaxPerCall));
    ssize_t n = ::pread(fd, out + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::FailedPreconditionError(Errno());
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  return done;
}

// Records, while nlohmann parses, what its std::map objects forget: the order of keys, and keys
// given twice (the map keeps the last value silently).
class KeyRecorder {
 public:
  bool operator()(int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_.emplace_back();
        break;
      case Json::parse_event_t::key:
        if (depth == 1) top_key_ = parsed.get<std::string>();
        if (!open_.empty()) open_.back().push_back(parsed.get<std::string>());
        break;
      case Json::parse_event_t::object_end:
        if (open_.empty()) break;
        if (!has_duplicate_ && open_.back().size() != parsed.size()) {
          has_duplicate_ = true;
          duplicate_depth_ = depth;
          duplicate_in_ = top_key_;
          std::vector<std::string> keys = open_.back();
          std::sort(keys.begin(), keys.end());
          auto it = std::adjacent_find(keys.begin(), keys.end());
          if (it != keys.end()) duplicate_ = *it;
        }
        if (depth == 0) {
          top_keys_ = std::move(open_.back());
        } else if (depth == 1 && top_key_ == kMetadataKey) {
          metadata_keys_ = open_.back();
        }
        open_.pop_back();
        break;
      default:
        break;
    }
    return true;
  }

  // Top-level keys (tensor names and "__metadata__"), in the header's order.
  const std::vector<std::string>& top_keys() const { return top_keys_; }
  const std::vector<std::string>& metadata_keys() const { return metadata_keys_; }

  // A message for the first key given twice; empty when there is none.
  std::string DuplicateMessage() const {
    if (!has_duplicate_) return "";
    if (duplicate_depth_ == 0) {
      return absl::StrCat("key ", Quote(duplicate_), " appears twice in the header");
    }
    if (duplicate_depth_ == 1) {
      return absl::StrCat(duplicate_in_ == kMetadataKey ? "" : "tensor ", Quote(duplicate_in_),
                          ": key ", Quote(duplicate_), " appears twice");
    }
    return absl::StrCat("under ", Quote(duplicate_in_), ": key ", Quote(duplicate_),
                        " appears twice");
  }

 private:
  std::vector<std::vector<std::string>> open_;  // keys of each object being parsed, outermost first
  std::vector<std::string> top_keys_;
  std::vector<std::string> metadata_keys_;
  std::string top_key_;  // the top-level key whose value is being parsed
  bool has_duplicate_ = false;
  int duplicate_depth_ = 0;
  std::string duplicate_;
  std::string duplicate_in_;
};

absl::StatusOr<std::vector<int64_t>> ParseShape(const Json& shape) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("'shape' must be an array of non-negative integers, got ", Show(shape)));
  };
  if (!shape.is_array()) return bad();
  std::vector<int64_t> dims;
  dims.reserve(shape.size());
  for (const Json& d : shape) {
    if (!d.is_number_unsigned()) return bad();
    uint64_t v = d.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return bad();
    dims.push_back(static_cast<int64_t>(v));
  }
  return dims;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

struct Offsets {
  uint64_t begin;
  uint64_t end;
};

absl::StatusOr<Offsets> ParseOffsets(const Json& offsets) {
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned() || offsets[0].get<uint64_t>() > offsets[1].get<uint64_t>()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'data_offsets' must be [begin, end] with integers 0 <= begin <= end, got ",
                     Show(offsets)));
  }
  return Offsets{offsets[0].get<uint64_t>(), offsets[1].get<uint64_t>()};
}

// One tensor entry of a file whose data section is [data_start, data_start + data_size).
absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& path, const std::string& name,
                                            const Json& entry, uint64_t data_start,
                                            uint64_t data_size) {
  auto bad = [&](absl::string_view why) { return BadTensor(path, name, why); };
  if (!entry.is_object()) {
    return bad(absl::StrCat("entry is not a JSON object (it is ", entry.type_name(), ")"));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) return bad(absl::StrCat("missing '", key, "'"));
  }
  for (const auto& item : entry.items()) {
    if (item.key() != "dtype" && item.key() != "shape" && item.key() != "data_offsets") {
      return bad(absl::StrCat("unknown key ", Quote(item.key()),
                              " (a tensor entry has only dtype, shape and data_offsets)"));
    }
  }
  const Json& dtype_json = entry.at("dtype");
  if (!dtype_json.is_string()) {
    return bad(absl::StrCat("'dtype' must be a string, got ", Show(dtype_json)));
  }
  SafetensorsEntry out;
  out.name = name;
  auto dtype = ParseSafetensorsDType(dtype_json.get<std::string>());
  if (!dtype.ok()) return bad(dtype.status().message());
  out.dtype = *dtype;
  auto shape = ParseShape(entry.at("shape"));
  if (!shape.ok()) return bad(shape.status().message());
  out.shape = *std::move(shape);
  auto offsets = ParseOffsets(entry.at("data_offsets"));
  if (!offsets.ok()) return bad(offsets.status().message());
  if (offsets->end > data_size) {
    return bad(absl::StrCat("data_offsets [", offsets->begin, ", ", offsets->end,
                            "] out of range: the data section has ", data_size,
                            " bytes (file truncated?)"));
  }
  auto expected = TensorByteSize(out.dtype, out.shape);
  if (!expected.ok()) {
    return bad(absl::StrCat("shape ", ShapeText(out.shape), ": ", expected.status().message()));
  }
  out.byte_size = offsets->end - offsets->begin;
  if (out.byte_size != *expected) {
    return bad(absl::StrCat("data_offsets [", offsets->begin, ", ", offsets->end, "] hold ",
                            out.byte_size, " bytes but ", DTypeSafetensorsName(out.dtype), " ",
                            ShapeText(out.shape), " needs ", *expected));
  }
  // data_start <= file size and begin <= end <= data size, so this cannot overflow; checked anyway.
  const std::optional<uint64_t> file_offset = CheckedAdd(data_start, offsets->begin);
  if (!file_offset) return bad("data_offsets overflow the file");
  out.file_offset = *file_offset;
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseMetadata(
    const std::string& path, const Json& metadata, const std::vector<std::string>& keys) {
  auto bad = [&](absl::string_view why) {
    return BadFile(path, absl::StrCat("'__metadata__' ", why));
  };
  if (!metadata.is_object()) {
    return bad(absl::StrCat("must be an object of strings, got ", Show(metadata)));
  }
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(keys.size());
  for (const std::string& key : keys) {
    const Json& value = metadata.at(key);
    if (!value.is_string()) {
      return bad(absl::StrCat("must be an object of strings; ", Quote(key), " is ", Show(value)));
    }
    out.emplace_back(key, value.get<std::string>());
  }
  return out;
}

absl::StatusOr<SafetensorsFile> ParseHeaderOrThrow(absl::string_view header_json,
                                                   uint64_t file_size, const std::string& path) {
  if (header_json.size() > kMaxSafetensorsHeaderBytes) {
    return BadFile(
        path, absl::StrCat("header length ", header_json.size(), " bytes is over the limit of ",
                           FormatBytes(kMaxSafetensorsHeaderBytes)));
  }
  if (file_size < 8 || header_json.size() > file_size - 8) {
    return BadFile(path, absl::StrCat("the header length is larger than the file (",
                                      file_size < 8 ? 0 : file_size - 8,
                                      " bytes after the 8-byte length; truncated?)"));
  }
  if (std::string problem = CheckHeaderText(header_json); !problem.empty()) {
    return BadFile(path, problem);
  }
  SafetensorsFile file;
  file.path = path;
  file.file_size = file_size;
  file.data_start = 8 + header_json.size();
  const uint64_t data_size = file_size - file.data_start;

  KeyRecorder recorder;
  Json root;
  try {
    root = Json::parse(header_json.data(), header_json.data() + header_json.size(),
                       std::ref(recorder));
  } catch (const Json::parse_error& e) {
    // Drops the "[json.exception.parse_error.101] " before "parse error at line 1, column 57: ...".
    absl::string_view what = e.what();
    size_t bracket = what.find("] ");
    if (what.size() > 0 && what[0] == '[' && bracket != absl::string_view::npos) {
      what.remove_prefix(bracket + 2);
    }
    return BadFile(path, absl::StrCat("header is not valid JSON (truncated or corrupt?): ", what));
  } catch (const Json::out_of_range&) {
    // A number outside a double's range (1e400): found by the fuzzer. The library's message
    // quotes the number (file bytes), so it is not passed on.
    return BadFile(path, "header has a number too large to represent");
  }
  if (!root.is_object()) {
    return BadFile(path,
                   absl::StrCat("header is not a JSON object (it is ", root.type_name(), ")"));
  }
  if (std::string dup = recorder.DuplicateMessage(); !dup.empty()) return BadFile(path, dup);

  file.tensors.reserve(recorder.top_keys().size());
  for (const std::string& name : recorder.top_keys()) {
    const Json& value = root.at(name);
    if (name == kMetadataKey) {
      auto metadata = ParseMetadata(path, value, recorder.metadata_keys());
      if (!metadata.ok()) return metadata.status();
      file.metadata = *std::move(metadata);
      continue;
    }
    auto entry = ParseEntry(path, name, value, file.data_start, data_size);
    if (!entry.ok()) return entry.status();
    file.tensors.push_back(*std::move(entry));
  }

  // By (file offset, size), as the reference implementation orders them; stable, so that empty
  // tensors at one offset keep the header's order.
  std::stable_sort(file.tensors.begin(), file.tensors.end(),
                   [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
                     if (a.file_offset != b.file_offset) return a.file_offset < b.file_offset;
                     return a.byte_size < b.byte_size;
                   });
  // The safetensors format packs the data section: sorted by offset, each tensor starts where the
  // one before ends, the first at 0, and the last ends at the end of the file. So two tensors
  // overlap, bytes belong to no tensor (a gap) or bytes follow the last tensor only in a file
  // that no safetensors writer made; each is refused, naming the tensors or the bytes.
  auto range = [&](const SafetensorsEntry& e) {
    const uint64_t b = e.file_offset - file.data_start;
    return absl::StrCat("[", b, ", ", b + e.byte_size, ")");
  };
  uint64_t end = 0;  // of the data so far, relative to the data section
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& t : file.tensors) {
    const uint64_t begin = t.file_offset - file.data_start;
    if (begin < end) {
      return BadFile(path,
                     absl::StrCat("tensors ", Quote(previous->name), " ", range(*previous), " and ",
                                  Quote(t.name), " ", range(t), " overlap in the data section"));
    }
    if (begin > end) {
      return BadFile(
          path, absl::StrCat("bytes [", end, ", ", begin,
                             ") of the data section belong to no tensor (before ", Quote(t.name),
                             "); safetensors packs tensors without gaps"));
    }
    end = begin + t.byte_size;
    if (t.byte_size > 0) previous = &t;
  }
  if (end != data_size) {
    return BadFile(path, absl::StrCat("the data section has ", data_size - end,
                                      " bytes after the last tensor (it has ", data_size,
                                      " bytes; tensors cover ", end, ")"));
  }
  return file;
}

// Splits [0, total) work into pieces of at most `piece_bytes`, smaller when there would be fewer
// than 4 pieces per thread (a 64 MiB file on 8 threads would otherwise keep 4 of them idle).
uint64_t EffectivePieceBytes(uint64_t total, int threads, uint64_t piece_bytes) {
  if (threads <= 1) return piece_bytes;
  const uint64_t balanced = total / (static_cast<uint64_t>(threads) * 4);
  if (balanced >= piece_bytes) return piece_bytes;
  const uint64_t floor = std::min<uint64_t>(piece_bytes, uint64_t{1} << 20);
  uint64_t p = std::max(balanced, floor);
  // Whole pages, so that pieces of a page-aligned range stay page-aligned.
  if (p > 4096) p = p / 4096 * 4096;
  return p;
}

// What a file that is not safetensors looks like, from its first bytes, for messages: "it starts
// with '{': a JSON file, ...". Only fixed signatures are named; the file's own bytes are never
// quoted (a secret file's first bytes must not come back in an error). Empty when unrecognized.
std::string DescribeNotSafetensors(const unsigned char* head, size_t n) {
  auto starts = [&](absl::string_view magic) {
    return n >= magic.size() && std::memcmp(head, magic.data(), magic.size()) == 0;
  };
  size_t i = 0;
  while (i < n && (head[i] == ' ' || head[i] == '\t' || head[i] == '\n' || head[i] == '\r')) ++i;
  if (i < n && (head[i] == '{' || head[i] == '[')) {
    return absl::StrCat("it starts with '", std::string(1, static_cast<char>(head[i])),
                        "': a JSON file, not safetensors? (an index file is accepted as such only "
                        "by name *.index.json)");
  }
  if (i < n && head[i] == '<') {
    return "it starts with '<': an HTML or XML page (a failed download?)";
  }
  if (starts("version ")) {
    return "it starts with 'version ': a Git LFS pointer file? (the weights were not "
           "downloaded: git lfs pull)";
  }
  if (starts("PK\x03\x04")) {
    return "it is a zip archive (a PyTorch .bin/.pt checkpoint?), not safetensors";
  }
  if (n >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5) {
    return "it is a Python pickle (a PyTorch .bin checkpoint?), not safetensors";
  }
  if (starts("GGUF")) return "it is a GGUF file, not safetensors";
  if (starts("\x89HDF")) return "it is an HDF5 file (Keras .h5?), not safetensors";
  if (starts("\x93NUMPY")) return "it is a NumPy .npy file, not safetensors";
  if (starts("\x1f\x8b")) return "it is gzip-compressed, not safetensors";
  bool text = n > 0;
  for (size_t k = 0; k < n; ++k) {
    text = text && (head[k] == '\t' || head[k] == '\n' || head[k] == '\r' ||
                    (head[k] >= 0x20 && head[k] < 0x7f));
  }
  if (text) return "it starts with text, not with a safetensors header length";
  return "";
}

}  // namespace

absl::StatusOr<SafetensorsFile> ParseSafetensorsHeader(absl::string_view header_json,
                                                       uint64_t file_size,
                                                       const std::string& path) {
  // nlohmann reports errors as exceptions; they stop here. Type errors cannot happen (every access
  // is checked first) and allocation failures are unlikely under the header size limit, but no
  // exception may leave this module.
  try {
    return ParseHeaderOrThrow(header_json, file_size, path);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("safetensors file ", path, ": parsing the header failed: ", e.what()));
  }
}

absl::StatusOr<SafetensorsFile> ReadSafetensorsHeaderFd(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read safetensors file ", path, ": ", Errno()));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read safetensors file ", path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return BadFile(
        path, absl::StrCat("file is ", file_size, " bytes, shorter than the 8-byte header length"));
  }
  unsigned char len_bytes[8];
  auto got = PreadFull(fd, len_bytes, 8, 0);
  if (!got.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read safetensors file ", path, ": ", got.status().message()));
  }
  if (*got < 8) return BadFile(path, "file ended inside the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  // The length's value is never put in a message: for a file that is not safetensors, those are
  // its first 8 bytes. What the file looks like is said instead, when that is recognizable.
  const std::string looks = DescribeNotSafetensors(len_bytes, 8);
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return BadFile(path, absl::StrCat("not a safetensors file",
                                      looks.empty() ? "?" : absl::StrCat(": ", looks),
                                      " (its first 8 bytes, read as the header length, are over "
                                      "the limit of ",
                                      FormatBytes(kMaxSafetensorsHeaderBytes), ")"));
  }
  if (header_len > file_size - 8) {
    if (!looks.empty()) {
      return BadFile(path, absl::StrCat("not a safetensors file: ", looks,
                                        " (its first 8 bytes, read as the header length, are "
                                        "more than the file holds)"));
    }
    return BadFile(path, absl::StrCat("the header length is larger than the file (", file_size - 8,
                                      " bytes after the 8-byte length; truncated?)"));
  }
  std::string header(header_len, '\0');
  got = PreadFull(fd, header.data(), header_len, 8);
  if (!got.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read safetensors file ", path, ": ", got.status().message()));
  }
  if (*got < header_len) {
    return BadFile(path, "file ended inside the header (truncated while being read?)");
  }
  return ParseSafetensorsHeader(header, file_size, path);
}

namespace {

// The second half of opening a file safely: `handle` is an O_PATH descriptor of `path`.
absl::StatusOr<ScopedFd> ReopenIfRegular(ScopedFd handle, const std::string& path) {
  struct stat st;
  if (::fstat(handle.get(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open ", path, ": ", Errno()));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", path, ": not a regular file"));
  }
  // The file checked above, opened for reading: the /proc link names the open file itself, not
  // the path, so a path swapped meanwhile cannot substitute another file.
  const std::string self = absl::StrCat("/proc/self/fd/", handle.get());
  ScopedFd fd(::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open ", path, ": ", Errno()));
  }
  return fd;
}

}  // namespace

absl::StatusOr<ScopedFd> OpenRegularFile(const std::string& path) {
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("path ", QuoteForMessage(path), " has a NUL byte"));
  }
  ScopedFd handle(::open(path.c_str(), O_PATH | O_CLOEXEC));
  if (!handle.valid()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open ", path, ": ", Errno()));
  }
  return ReopenIfRegular(std::move(handle), path);
}

absl::StatusOr<ScopedFd> OpenPathBeneath(const std::vector<std::string>& dirs,
                                         const std::string& path) {
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("path ", QuoteForMessage(path), " has a NUL byte"));
  }
  for (const std::string& dir : dirs) {
    std::string rel;
    if (path == dir) {
      rel = ".";  // the directory itself (a model directory given as load_files_dirs)
    } else if (absl::StartsWith(path, dir + "/") && path.size() > dir.size() + 1) {
      rel = path.substr(dir.size() + 1);
    } else {
      continue;
    }
    ScopedFd dir_fd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir_fd.valid()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open load_files_dirs entry ", dir, ": ", Errno()));
    }
    struct open_how how {};
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    ScopedFd handle(
        static_cast<int>(::syscall(SYS_openat2, dir_fd.get(), rel.c_str(), &how, sizeof(how))));
    if (!handle.valid()) {
      if (errno == EXDEV || errno == ELOOP) {
        return absl::PermissionDeniedError(
            absl::StrCat(path, " resolves to a place outside load_files_dirs ", dir));
      }
      return absl::FailedPreconditionError(absl::StrCat("cannot open ", path, ": ", Errno()));
    }
    return handle;
  }
  return absl::PermissionDeniedError(
      absl::StrCat("path ", QuoteForMessage(path), " is not under the daemon's load_files_dirs"));
}

absl::StatusOr<ScopedFd> OpenRegularFileBeneath(const std::vector<std::string>& dirs,
                                                const std::string& path) {
  ASSIGN_OR_RETURN(ScopedFd handle, OpenPathBeneath(dirs, path));
  return ReopenIfRegular(std::move(handle), path);
}

absl::StatusOr<SafetensorsFile> ReadSafetensorsHeader(const std::string& path) {
  ASSIGN_OR_RETURN(ScopedFd fd, OpenRegularFile(path));
  return ReadSafetensorsHeaderFd(fd.get(), path);
}

absl::Status ReadRangesParallel(const std::vector<ReadRange>& ranges, int threads,
                                absl::Time deadline, uint64_t piece_bytes,
                                const std::function<bool()>& keep_going,
                                const std::function<void(size_t, uint64_t)>& on_read) {
  if (threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("read threads must be >= 1, got ", threads));
  }
  if (piece_bytes == 0) return absl::InvalidArgumentError("read piece size must be > 0");
  uint64_t total = 0;
  for (const ReadRange& r : ranges) {
    if (r.size == 0) continue;
    if (r.fd < 0) return absl::InvalidArgumentError(absl::StrCat(r.what, ": no file descriptor"));
    if (r.dest == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(r.what, ": no destination"));
    }
    if (r.file_offset > static_cast<uint64_t>(std::numeric_limits<off_t>::max()) - r.size) {
      return absl::InvalidArgumentError(
          absl::StrCat(r.what, ": range at ", r.file_offset, " of ", r.size, " bytes overflows"));
    }
    total += r.size;
  }
  if (total == 0) return absl::OkStatus();

  struct Piece {
    const ReadRange* range;
    uint64_t offset;  // within the range
    uint64_t size;
  };
  const uint64_t piece = EffectivePieceBytes(total, threads, piece_bytes);
  std::vector<Piece> pieces;
  for (const ReadRange& r : ranges) {
    for (uint64_t off = 0; off < r.size; off += piece) {
      pieces.push_back({&r, off, std::min(piece, r.size - off)});
    }
  }

  struct Shared {
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> done{0};
    absl::Mutex mu;
    absl::Status error ABSL_GUARDED_BY(mu);

    void Fail(absl::Status s) {
      absl::MutexLock lock(&mu);
      if (error.ok()) error = std::move(s);
      stop.store(true, std::memory_order_relaxed);
    }
  } shared;

  auto work = [&] {
    while (!shared.stop.load(std::memory_order_relaxed)) {
      const size_t i = shared.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= pieces.size()) return;
      const Piece& p = pieces[i];
      const ReadRange& r = *p.range;
      if (keep_going && !keep_going()) {
        shared.Fail(absl::AbortedError(
            absl::StrCat("reading stopped after ", FormatBytes(shared.done.load()), " of ",
                         FormatBytes(total), ": the version was aborted meanwhile")));
        return;
      }
      if (absl::Now() >= deadline) {
        shared.Fail(absl::DeadlineExceededError(absl::StrCat(
            "deadline exceeded reading ", ranges.size(), " ranges (", FormatBytes(total),
            ") after ", FormatBytes(shared.done.load()), "; next was ", r.what)));
        return;
      }
      const uint64_t at = r.file_offset + p.offset;
      auto got = PreadFull(r.fd, static_cast<char*>(r.dest) + p.offset, p.size, at);
      if (!got.ok()) {
        shared.Fail(absl::FailedPreconditionError(
            absl::StrCat(r.what, ": read failed at offset ", at, ": ", got.status().message())));
        return;
      }
      if (*got < p.size) {
        shared.Fail(absl::OutOfRangeError(absl::StrCat(
            r.what, ": unexpected end of file at offset ", at + *got, " (the range is [",
            r.file_offset, ", ", r.file_offset + r.size, "); file truncated?)")));
        return;
      }
      shared.done.fetch_add(p.size, std::memory_order_relaxed);
      if (on_read) on_read(static_cast<size_t>(p.range - ranges.data()), p.size);
    }
  };

  const size_t n = std::min(static_cast<size_t>(threads), pieces.size());
  std::vector<std::thread> workers;
  workers.reserve(n - 1);
  for (size_t k = 1; k < n; ++k) {
    try {
      workers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones running (and this one) read everything
    }
  }
  work();
  for (std::thread& t : workers) t.join();
  absl::MutexLock lock(&shared.mu);
  return shared.error;
}

}  // namespace ckpt::daemon
