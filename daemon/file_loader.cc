#include "daemon/file_loader.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "daemon/safetensors.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

absl::StatusOr<v1::VersionInfo> LoadSafetensorsFiles(VersionStore& store,
                                                     const std::vector<std::string>& paths,
                                                     uint64_t version, const std::string& label,
                                                     int threads, absl::Time deadline) {
  if (paths.empty()) return absl::InvalidArgumentError("LoadFiles: no files given");
  absl::Time start = absl::Now();
  // Header and data come from the same open file, so a file replaced meanwhile cannot mix.
  std::vector<ScopedFd> fds;
  std::vector<SafetensorsFile> files;
  v1::Manifest manifest;
  std::unordered_map<std::string, std::string> owner;  // tensor name -> file
  for (const std::string& path : paths) {
    ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
    }
    ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensorsHeaderFd(fd.get(), path));
    for (const SafetensorsEntry& e : file.tensors) {
      auto [it, fresh] = owner.emplace(e.name, path);
      if (!fresh) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", e.name, "' is in both ", it->second, " and ", path));
      }
      v1::TensorSpec* spec = manifest.add_tensors();
      spec->set_name(e.name);
      spec->set_dtype(static_cast<v1::DType>(e.dtype));
      for (int64_t d : e.shape) spec->add_shape(d);
      spec->set_byte_size(e.byte_size);
    }
    fds.push_back(std::move(fd));
    files.push_back(std::move(file));
  }

  ASSIGN_OR_RETURN(VersionStore::Begun begun,
                   store.Begin(manifest, version, label, /*verify_checksums=*/false));
  auto abort_with = [&](absl::Status s) {
    (void)store.Abort(begun.version, begun.upload_token, absl::StrCat("LoadFiles: ", s.message()));
    return s;
  };
  auto addresses = store.TensorAddresses(begun.version, begun.upload_token);
  if (!addresses.ok()) return abort_with(addresses.status());
  std::vector<ReadRange> ranges;
  ranges.reserve(manifest.tensors_size());
  size_t t = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    for (const SafetensorsEntry& e : files[f].tensors) {
      ReadRange r;
      r.fd = fds[f].get();
      r.file_offset = e.file_offset;
      r.size = e.byte_size;
      r.dest = (*addresses)[t++];
      r.what = absl::StrCat("file ", files[f].path, " tensor '", e.name, "'");
      ranges.push_back(std::move(r));
    }
  }
  if (absl::Status s = ReadRangesParallel(ranges, threads, deadline); !s.ok()) {
    return abort_with(s);
  }
  absl::Time read_done = absl::Now();
  if (absl::Status s = store.MarkAllReceived(begun.version, begun.upload_token); !s.ok()) {
    return abort_with(s);
  }
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
