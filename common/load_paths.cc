#include "common/load_paths.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/message_text.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace ckpt {
namespace {

using Json = nlohmann::json;

constexpr absl::string_view kIndexSuffix = ".index.json";
constexpr absl::string_view kSafetensorsIndexSuffix = ".safetensors.index.json";
constexpr absl::string_view kSafetensorsSuffix = ".safetensors";
// A valid index nests 2 levels (root -> weight_map / metadata); this leaves room for metadata.
constexpr int kMaxIndexDepth = 8;

std::string Errno() { return std::strerror(errno); }

absl::string_view BaseName(absl::string_view path) {
  const size_t slash = path.rfind('/');
  return slash == absl::string_view::npos ? path : path.substr(slash + 1);
}

// The directory part of an absolute path: "/a/b/c" -> "/a/b", "/c" -> "/".
std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? std::string("/") : path.substr(0, slash);
}

std::string Join(const std::string& dir, absl::string_view name) {
  return dir == "/" ? absl::StrCat("/", name) : absl::StrCat(dir, "/", name);
}

// "/a/b///" -> "/a/b"; "/" stays.
std::string StripTrailingSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

absl::Status BadIndex(const std::string& path, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors index ", path, ": ", why));
}

// `handle` (O_PATH) reopened through /proc for reading with `flags`: the link names the open file,
// not the path, so a path swapped meanwhile cannot substitute another file.
absl::StatusOr<ScopedFd> Reopen(const ScopedFd& handle, int flags, const std::string& path) {
  const std::string self = absl::StrCat("/proc/self/fd/", handle.get());
  ScopedFd fd(::open(self.c_str(), flags | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open ", path, ": ", Errno()));
  }
  return fd;
}

absl::StatusOr<struct stat> Stat(const ScopedFd& handle, const std::string& path) {
  struct stat st;
  if (::fstat(handle.get(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot stat ", path, ": ", Errno()));
  }
  return st;
}

// The text of the index behind `handle`, at most kMaxIndexFileBytes.
absl::StatusOr<std::string> ReadIndex(const ScopedFd& handle, const std::string& path) {
  ASSIGN_OR_RETURN(struct stat st, Stat(handle, path));
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("safetensors index ", path, ": not a regular file"));
  }
  auto too_big = [&] {
    return BadIndex(path, absl::StrCat("larger than ", FormatBytes(kMaxIndexFileBytes),
                                       " (an index names files; it is never that large)"));
  };
  if (static_cast<uint64_t>(st.st_size) > kMaxIndexFileBytes) return too_big();
  ASSIGN_OR_RETURN(ScopedFd fd, Reopen(handle, O_RDONLY | O_NONBLOCK, path));
  // Read up to the limit plus one byte whatever fstat said: the file may grow meanwhile.
  std::string text(static_cast<size_t>(st.st_size) + 1, '\0');
  size_t got = 0;
  for (;;) {
    if (got == text.size()) {
      if (text.size() > kMaxIndexFileBytes) return too_big();
      text.resize(std::min<size_t>(text.size() * 2, kMaxIndexFileBytes + 1));
    }
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::FailedPreconditionError(
          absl::StrCat("cannot read safetensors index ", path, ": ", Errno()));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  text.resize(got);
  return text;
}

// The problem with a shard name, or an empty string: it must name a file in the index's directory.
std::string ShardNameProblem(const std::string& name) {
  if (name.empty()) return "is empty";
  if (name.find('\0') != std::string::npos) return "has a NUL byte";
  if (name.find('/') != std::string::npos || name.find("..") != std::string::npos) {
    return "is not a plain file name in the index's directory (no '/' or '..')";
  }
  if (!absl::EndsWith(name, kSafetensorsSuffix)) return "does not end in .safetensors";
  return "";
}

// The deepest nesting of `text` outside strings reaches past kMaxIndexDepth: checked before
// parsing, so that a hostile index cannot make the parser's stacks grow with its size.
bool NestsTooDeep(absl::string_view text) {
  int depth = 0;
  bool in_string = false;
  for (size_t k = 0; k < text.size(); ++k) {
    const char c = text[k];
    if (in_string) {
      if (c == '\\') {
        ++k;  // the escaped character
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxIndexDepth) return true;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return false;
}

absl::StatusOr<std::vector<std::string>> ParseIndexShardsOrThrow(absl::string_view json,
                                                                 const std::string& index_path) {
  if (NestsTooDeep(json)) {
    return BadIndex(index_path, absl::StrCat("nests deeper than ", kMaxIndexDepth, " levels"));
  }
  Json root;
  try {
    root = Json::parse(json.data(), json.data() + json.size());
  } catch (const Json::parse_error& e) {
    // Drops the "[json.exception.parse_error.101] " before "parse error at line 1, column 5: ...".
    absl::string_view what = e.what();
    const size_t bracket = what.find("] ");
    if (!what.empty() && what[0] == '[' && bracket != absl::string_view::npos) {
      what.remove_prefix(bracket + 2);
    }
    return BadIndex(index_path, absl::StrCat("not valid JSON: ", EscapeForMessage(what, 200)));
  } catch (const Json::out_of_range&) {
    return BadIndex(index_path, "has a number too large to represent");
  }
  if (!root.is_object()) {
    return BadIndex(index_path, absl::StrCat("not a JSON object (it is ", root.type_name(), ")"));
  }
  auto map = root.find("weight_map");
  if (map == root.end()) return BadIndex(index_path, "has no \"weight_map\"");
  if (!map->is_object()) {
    return BadIndex(index_path,
                    absl::StrCat("\"weight_map\" is not an object (it is ", map->type_name(), ")"));
  }
  if (map->empty()) return BadIndex(index_path, "\"weight_map\" is empty: it names no shard");
  std::set<std::string> shards;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string()) {
      return BadIndex(index_path,
                      absl::StrCat("\"weight_map\" maps tensor ", QuoteForMessage(it.key()),
                                   " to a JSON ", it.value().type_name(), ", not a file name"));
    }
    const std::string& name = it.value().get_ref<const std::string&>();
    if (std::string problem = ShardNameProblem(name); !problem.empty()) {
      return BadIndex(index_path, absl::StrCat("shard name ", QuoteForMessage(name), " (of tensor ",
                                               QuoteForMessage(it.key()), ") ", problem));
    }
    shards.insert(name);
  }
  return std::vector<std::string>(shards.begin(), shards.end());
}

// Checks that `path`, found through `origin` ("directory D" or "safetensors index I"), is a
// regular file.
absl::Status CheckShard(const std::string& path, const std::string& origin,
                        const PathOpener& open_path) {
  auto handle = open_path(path);
  if (!handle.ok()) return Annotate(handle.status(), origin);
  auto st = Stat(*handle, path);
  if (!st.ok()) return Annotate(st.status(), origin);
  if (!S_ISREG(st->st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(origin, ": ", path, " is not a regular file"));
  }
  return absl::OkStatus();
}

// Appends the shards of the index `index_path` (open as `handle`) to `out`.
absl::Status ExpandIndex(const std::string& index_path, const ScopedFd& handle,
                         const PathOpener& open_path, size_t max_files,
                         std::vector<std::string>* out) {
  ASSIGN_OR_RETURN(std::string text, ReadIndex(handle, index_path));
  ASSIGN_OR_RETURN(std::vector<std::string> names, ParseIndexShards(text, index_path));
  if (out->size() + names.size() > max_files) {
    return BadIndex(index_path, absl::StrCat("names ", names.size(), " shards; at most ", max_files,
                                             " files in one load"));
  }
  const std::string dir = DirName(index_path);
  const std::string origin = absl::StrCat("safetensors index ", index_path);
  for (const std::string& name : names) {
    const std::string shard = Join(dir, name);
    RETURN_IF_ERROR(
        CheckShard(shard, absl::StrCat(origin, " names shard ", QuoteForMessage(name)), open_path));
    out->push_back(shard);
  }
  return absl::OkStatus();
}

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};

// The names of the entries of the directory behind `handle` (no "." and "..").
absl::StatusOr<std::vector<std::string>> ListDirectory(const ScopedFd& handle,
                                                       const std::string& path) {
  ASSIGN_OR_RETURN(ScopedFd fd, Reopen(handle, O_RDONLY | O_DIRECTORY, path));
  std::unique_ptr<DIR, DirCloser> dir(::fdopendir(fd.get()));
  if (dir == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("cannot list ", path, ": ", Errno()));
  }
  fd.release();  // closedir closes it
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const struct dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) {
        return absl::FailedPreconditionError(absl::StrCat("cannot list ", path, ": ", Errno()));
      }
      break;
    }
    const absl::string_view name = entry->d_name;
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Appends what the directory `dir` (open as `handle`) stands for to `out`.
absl::Status ExpandDirectory(const std::string& dir, const ScopedFd& handle,
                             const PathOpener& open_path, size_t max_files,
                             std::vector<std::string>* out) {
  ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(handle, dir));
  std::vector<std::string> indexes, files, others;
  for (const std::string& name : names) {
    if (name[0] == '.') continue;  // hidden: editors' and copiers' leftovers ("._x.safetensors")
    if (absl::EndsWith(name, kSafetensorsIndexSuffix)) {
      indexes.push_back(name);
    } else if (absl::EndsWith(name, kSafetensorsSuffix)) {
      files.push_back(name);
    } else if (absl::EndsWith(name, ".bin") || absl::EndsWith(name, ".pt") ||
               absl::EndsWith(name, ".pth") || absl::EndsWith(name, ".gguf")) {
      others.push_back(name);
    }
  }
  if (!indexes.empty()) {
    std::string index;
    if (std::find(indexes.begin(), indexes.end(), kDefaultIndexName) != indexes.end()) {
      index = kDefaultIndexName;
    } else if (indexes.size() == 1) {
      index = indexes[0];
    } else {
      std::vector<std::string> quoted;
      for (const std::string& i : indexes) quoted.push_back(QuoteForMessage(i));
      return absl::InvalidArgumentError(
          absl::StrCat("directory ", dir, " has ", indexes.size(), " safetensors indexes (",
                       absl::StrJoin(quoted, ", "), ") and no ", kDefaultIndexName,
                       ": give the index to load instead of the directory"));
    }
    const std::string index_path = Join(dir, index);
    ASSIGN_OR_RETURN(ScopedFd index_handle, open_path(index_path));
    return ExpandIndex(index_path, index_handle, open_path, max_files, out);
  }
  if (files.empty()) {
    std::string hint;
    if (!others.empty()) {
      hint = absl::StrCat(" (it has ", others.size(), " other checkpoint file(s), e.g. ",
                          QuoteForMessage(others[0]),
                          ", which are not safetensors: convert them first)");
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "directory ", dir, " has no *.safetensors files and no ", kDefaultIndexName, hint));
  }
  if (out->size() + files.size() > max_files) {
    return absl::InvalidArgumentError(absl::StrCat("directory ", dir, " has ", files.size(),
                                                   " *.safetensors files; at most ", max_files,
                                                   " files in one load"));
  }
  const std::string origin = absl::StrCat("directory ", dir);
  for (const std::string& name : files) {
    const std::string path = Join(dir, name);
    RETURN_IF_ERROR(CheckShard(path, origin, open_path));
    out->push_back(path);
  }
  return absl::OkStatus();
}

}  // namespace

bool IsIndexFileName(absl::string_view path) {
  const absl::string_view name = BaseName(path);
  return name.size() > kIndexSuffix.size() && absl::EndsWith(name, kIndexSuffix);
}

absl::StatusOr<std::vector<std::string>> ParseIndexShards(absl::string_view json,
                                                          const std::string& index_path) {
  // nlohmann reports errors as exceptions; none may leave this module.
  try {
    return ParseIndexShardsOrThrow(json, index_path);
  } catch (const std::exception& e) {
    return BadIndex(index_path, absl::StrCat("parsing failed: ", e.what()));
  }
}

absl::StatusOr<ScopedFd> OpenPath(const std::string& path) {
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("path ", QuoteForMessage(path), " has a NUL byte"));
  }
  ScopedFd fd(::open(path.c_str(), O_PATH | O_CLOEXEC));
  if (!fd.valid()) {
    const int err = errno;
    return absl::Status(err == ENOENT                   ? absl::StatusCode::kNotFound
                        : err == EACCES || err == EPERM ? absl::StatusCode::kPermissionDenied
                                                        : absl::StatusCode::kFailedPrecondition,
                        absl::StrCat("cannot open ", path, ": ", std::strerror(err)));
  }
  return fd;
}

absl::StatusOr<std::vector<std::string>> ExpandLoadPaths(const std::vector<std::string>& paths,
                                                         const PathOpener& open_path,
                                                         size_t max_files) {
  std::vector<std::string> out;
  for (const std::string& given : paths) {
    const std::string path = StripTrailingSlashes(given);
    ASSIGN_OR_RETURN(ScopedFd handle, open_path(path));
    ASSIGN_OR_RETURN(struct stat st, Stat(handle, path));
    if (S_ISDIR(st.st_mode)) {
      RETURN_IF_ERROR(ExpandDirectory(path, handle, open_path, max_files, &out));
    } else if (S_ISREG(st.st_mode) && IsIndexFileName(path)) {
      RETURN_IF_ERROR(ExpandIndex(path, handle, open_path, max_files, &out));
    } else {
      out.push_back(given);  // the loader checks it
    }
    if (out.size() > max_files) {
      return absl::InvalidArgumentError(absl::StrCat("LoadFiles: ", out.size(),
                                                     " files (after expanding directories and "
                                                     "indexes); at most ",
                                                     max_files));
    }
  }
  return out;
}

}  // namespace ckpt
