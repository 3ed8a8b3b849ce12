#include "daemon/store/file_loader.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/load_paths.h"
#include "common/message_text.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "daemon/store/safetensors.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

absl::Status CheckLoadPaths(const std::vector<std::string>& paths) {
  if (paths.empty()) return absl::InvalidArgumentError("LoadFiles: no files given");
  if (paths.size() > kMaxLoadFiles) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoadFiles: ", paths.size(), " files given; at most ", kMaxLoadFiles));
  }
  for (const std::string& path : paths) {
    if (path.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("LoadFiles: path ", QuoteForMessage(path), " has a NUL byte"));
    }
    if (path.size() > kMaxLoadPathBytes) {
      return absl::InvalidArgumentError(absl::StrCat("LoadFiles: path of ", path.size(),
                                                     " bytes (at most ", kMaxLoadPathBytes,
                                                     "): ", QuoteForMessage(path, 64)));
    }
    if (path.empty() || path[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("LoadFiles: path ", QuoteForMessage(path),
                       " is not absolute (the daemon does not resolve paths against its own "
                       "working directory; clients make paths absolute)"));
    }
  }
  return absl::OkStatus();
}

void LoadProgress::EnterStage(v1::LoadStage stage) {
  absl::MutexLock lock(&mu_);
  stage_.store(stage);
  begun_.push_back(Current());
}

void LoadProgress::Finish() {
  absl::MutexLock lock(&mu_);
  finished_ = true;
}

LoadProgress::Snapshot LoadProgress::Current() const {
  Snapshot s;
  s.stage = static_cast<v1::LoadStage>(stage_.load());
  s.files_total = files_total_.load();
  s.headers_read = headers_read_.load();
  s.files_done = files_done_.load();
  s.bytes_total = bytes_total_.load();
  s.bytes_done = bytes_done_.load();
  return s;
}

std::vector<LoadProgress::Snapshot> LoadProgress::Take(absl::Duration timeout, bool* finished) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_ || !begun_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  std::vector<Snapshot> out = std::move(begun_);
  begun_.clear();
  out.push_back(Current());
  *finished = finished_;
  return out;
}

absl::StatusOr<v1::VersionInfo> LoadSafetensorsFiles(
    VersionStore& store, const std::vector<std::string>& paths, uint64_t version,
    const std::string& label, const std::string& client, int threads, absl::Time deadline,
    const std::vector<std::string>& allowed_dirs, const LoadControl& control) {
  RETURN_IF_ERROR(CheckLoadPaths(paths));
  // Directories and indexes are looked at only where the files may be opened: below
  // allowed_dirs, without a symlink or ".." leading out (for the directory, the index and every
  // shard it names).
  PathOpener open_path = OpenPath;
  if (!allowed_dirs.empty()) {
    open_path = [&allowed_dirs](const std::string& path) {
      return OpenPathBeneath(allowed_dirs, path);
    };
  }
  ASSIGN_OR_RETURN(std::vector<std::string> expanded,
                   ExpandLoadPaths(paths, open_path, kMaxLoadFiles));
  RETURN_IF_ERROR(CheckLoadPaths(expanded));
  std::vector<LoadFile> files;
  for (const std::string& path : expanded) {
    ASSIGN_OR_RETURN(ScopedFd fd, allowed_dirs.empty()
                                      ? OpenRegularFile(path)
                                      : OpenRegularFileBeneath(allowed_dirs, path));
    files.push_back(LoadFile{path, std::move(fd)});
  }
  return LoadSafetensorsFds(store, std::move(files), version, label, client, threads, deadline,
                            control);
}

absl::Status CheckPassedFile(const LoadFile& file) {
  struct stat st;
  if (::fstat(file.fd.get(), &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("file ", file.path, ": fstat of its descriptor: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("file ", file.path, ": not a regular file"));
  }
  const int flags = ::fcntl(file.fd.get(), F_GETFL);
  if (flags < 0 || (flags & O_PATH) != 0 || (flags & O_ACCMODE) == O_WRONLY) {
    return absl::FailedPreconditionError(
        absl::StrCat("file ", file.path, ": its descriptor is not open for reading"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::VersionInfo> LoadSafetensorsFds(
    VersionStore& store, std::vector<LoadFile> opened, uint64_t version, const std::string& label,
    const std::string& client, int threads, absl::Time deadline, const LoadControl& control) {
  std::vector<std::string> paths;
  for (const LoadFile& f : opened) paths.push_back(f.path);
  RETURN_IF_ERROR(CheckLoadPaths(paths));
  absl::Time start = absl::Now();
  LoadProgress* const progress = control.progress;
  if (progress != nullptr) {
    progress->SetFilesTotal(opened.size());
    progress->EnterStage(v1::LOAD_STAGE_HEADERS);
  }
  // Header and data come from the same open file, so a file replaced meanwhile cannot mix.
  std::vector<ScopedFd> fds;
  std::vector<SafetensorsFile> files;
  v1::Manifest manifest;
  std::unordered_map<std::string, std::string> owner;  // tensor name -> file
  for (LoadFile& opened_file : opened) {
    RETURN_IF_ERROR(CheckPassedFile(opened_file));
    const std::string& path = opened_file.path;
    ScopedFd fd = std::move(opened_file.fd);
    ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensorsHeaderFd(fd.get(), path));
    for (const SafetensorsEntry& e : file.tensors) {
      auto [it, fresh] = owner.emplace(e.name, path);
      if (!fresh) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", QuoteForMessage(e.name),
                                                       " is in both ", it->second, " and ", path));
      }
      v1::TensorSpec* spec = manifest.add_tensors();
      spec->set_name(e.name);
      spec->set_dtype(static_cast<v1::DType>(e.dtype));
      for (int64_t d : e.shape) spec->add_shape(d);
      spec->set_byte_size(e.byte_size);
    }
    fds.push_back(std::move(fd));
    files.push_back(std::move(file));
    if (progress != nullptr) progress->AddHeaderRead();
  }

  ASSIGN_OR_RETURN(VersionStore::Begun begun,
                   store.Begin(manifest, version, label, client, /*verify_checksums=*/false));
  auto abort_with = [&](absl::Status s) {
    // NOT_FOUND: it was aborted or dropped meanwhile; nothing to undo.
    (void)store.Abort(begun.version, begun.upload_token, absl::StrCat("LoadFiles: ", s.message()));
    return s;
  };
  // The lease keeps the version's memory ours while the reads land in it, whatever happens to the
  // version meanwhile (Drop, the staging reaper, shutdown); each piece read marks activity.
  auto lease = store.OpenWriter(begun.version, begun.upload_token);
  if (!lease.ok()) return abort_with(lease.status());
  std::vector<ReadRange> ranges;
  ranges.reserve(manifest.tensors_size());
  // Per range its file, and per file the bytes still to read: a file is done when they reach 0.
  std::vector<size_t> range_file;
  std::vector<std::atomic<uint64_t>> file_left(files.size());
  uint64_t total = 0;
  int t = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    uint64_t in_file = 0;
    for (const SafetensorsEntry& e : files[f].tensors) {
      ReadRange r;
      r.fd = fds[f].get();
      r.file_offset = e.file_offset;
      r.size = e.byte_size;
      r.dest = (*lease)->data(t++);
      r.what = absl::StrCat("file ", files[f].path, " tensor ", QuoteForMessage(e.name));
      ranges.push_back(std::move(r));
      range_file.push_back(f);
      in_file += e.byte_size;
    }
    file_left[f].store(in_file);
    total += in_file;
  }
  if (progress != nullptr) {
    progress->SetBytesTotal(total);
    progress->EnterStage(v1::LOAD_STAGE_READING);
    for (size_t f = 0; f < files.size(); ++f) {
      if (file_left[f].load() == 0) progress->AddFileDone();
    }
  }
  std::function<void(size_t, uint64_t)> on_read;
  if (progress != nullptr) {
    on_read = [&](size_t range, uint64_t bytes) {
      progress->AddBytes(bytes);
      if (file_left[range_file[range]].fetch_sub(bytes) == bytes) progress->AddFileDone();
    };
  }
  VersionStore::WriteLease* writer = lease->get();
  std::atomic<bool> caller_gone{false};
  auto keep_going = [writer, &control, &caller_gone] {
    if (control.cancelled && control.cancelled()) {
      caller_gone.store(true);
      return false;
    }
    return writer->Touch();
  };
  absl::Status read =
      ReadRangesParallel(ranges, threads, deadline, uint64_t{16} << 20, keep_going, on_read);
  if (caller_gone.load() && absl::IsAborted(read)) {
    read = absl::CancelledError(absl::StrCat("LoadFiles cancelled: the caller went away while ",
                                             FormatBytes(total), " were read from ", files.size(),
                                             " file(s); the version is aborted"));
  }
  if (read.ok()) read = writer->MarkAllReceived();
  lease->reset();  // Commit waits for writers
  if (!read.ok()) return abort_with(read);
  if (progress != nullptr) progress->EnterStage(v1::LOAD_STAGE_COMMITTING);
  absl::Time read_done = absl::Now();
  auto info = store.Commit(begun.version, begun.upload_token);
  if (!info.ok()) return abort_with(info.status());
  double read_s = absl::ToDoubleSeconds(read_done - start);
  spdlog::info("LoadFiles: version {} from {} file(s), {} in {:.2f} s ({:.2f} GB/s read)",
               begun.version, paths.size(), FormatBytes(info->total_bytes()),
               absl::ToDoubleSeconds(absl::Now() - start),
               read_s > 0 ? info->total_bytes() / read_s / 1e9 : 0.0);
  return info;
}

}  // namespace ckpt::daemon
