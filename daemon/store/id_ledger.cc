#include "daemon/store/id_ledger.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"

namespace ckpt::daemon {
namespace {

constexpr size_t kMaxFileBytes = 64 << 10;

absl::Status Errno(int error, const std::string& what) { return absl::ErrnoToStatus(error, what); }

absl::Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno(errno, absl::StrCat("writing ", path));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t IdLedger::Digest(const v1::Manifest& manifest) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (const v1::TensorSpec& t : manifest.tensors()) {
    const std::string& name = t.name();
    const uint64_t size = name.size();
    XXH3_64bits_update(state, &size, sizeof(size));
    XXH3_64bits_update(state, name.data(), name.size());
    const int32_t dtype = t.dtype();
    XXH3_64bits_update(state, &dtype, sizeof(dtype));
    const uint64_t dims = static_cast<uint64_t>(t.shape_size());
    XXH3_64bits_update(state, &dims, sizeof(dims));
    for (int64_t d : t.shape()) XXH3_64bits_update(state, &d, sizeof(d));
    const uint64_t sum = t.xxh3();
    XXH3_64bits_update(state, &sum, sizeof(sum));
  }
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

absl::StatusOr<std::unique_ptr<IdLedger>> IdLedger::Open(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return Errno(errno, absl::StrCat("state_dir ", dir));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("state_dir ", dir, " is not a directory"));
  }
  std::unique_ptr<IdLedger> ledger(new IdLedger(dir, absl::StrCat(dir, "/", kFileName)));
  absl::MutexLock lock(&ledger->mu_);
  RETURN_IF_ERROR(ledger->Load());
  // Proves now that the directory is writable, not at the first push.
  RETURN_IF_ERROR(ledger->Write());
  return ledger;
}

absl::Status IdLedger::Load() {
  ScopedFd fd(::open(path_.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return absl::OkStatus();  // a new ledger
    return Errno(errno, absl::StrCat("opening ", path_));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Errno(errno, absl::StrCat("stat of ", path_));
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_,
                     " is not a regular file of at most 64 KiB; move it away (the daemon "
                     "then starts automatic version ids again at 1)"));
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Errno(n < 0 ? errno : EIO, absl::StrCat("reading ", path_));
    got += static_cast<size_t>(n);
  }
  auto bad = [&](const std::string& why) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, " is damaged (", why,
                     "); fix or move it away (automatic version ids then start "
                     "again at 1, so old ids may name new checkpoints)"));
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (!j.contains("format") || j["format"] != 1) return bad("format is not 1");
  if (!j.contains("max_version_id") || !j["max_version_id"].is_number_unsigned()) {
    return bad("max_version_id is not an unsigned integer");
  }
  max_id_ = j["max_version_id"].get<uint64_t>();
  if (max_id_ > (uint64_t{1} << 63) - 1) return bad("max_version_id is above 2^63-1");
  floor_ = max_id_;
  if (j.contains("committed")) {
    if (!j["committed"].is_array() || j["committed"].size() > kMaxCommitted) {
      return bad("committed is not an array of at most 1024 entries");
    }
    for (const auto& e : j["committed"]) {
      uint64_t digest = 0;
      if (!e.is_array() || e.size() != 2 || !e[0].is_number_unsigned() || !e[1].is_string() ||
          !absl::SimpleHexAtoi(e[1].get<std::string>(), &digest)) {
        return bad("a committed entry is not [id, \"hex digest\"]");
      }
      const uint64_t id = e[0].get<uint64_t>();
      if (committed_.count(id) == 0) order_.push_back(id);
      committed_[id] = digest;
    }
  }
  return absl::OkStatus();
}

absl::Status IdLedger::Write() {
  nlohmann::json committed = nlohmann::json::array();
  for (uint64_t id : order_) {
    committed.push_back({id, absl::StrFormat("%016x", committed_.at(id))});
  }
  const std::string text =
      nlohmann::json{{"format", 1}, {"max_version_id", max_id_}, {"committed", committed}}.dump() +
      "\n";
  const std::string tmp = absl::StrCat(path_, ".tmp");
  {
    // A fresh file each time: whatever was left at that name (a link, a FIFO) is replaced, never
    // written through or waited on.
    if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) {
      return Errno(errno, absl::StrCat("removing ", tmp));
    }
    ScopedFd fd(::open(tmp.c_str(),
                       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600));
    if (!fd.valid()) return Errno(errno, absl::StrCat("creating ", tmp));
    RETURN_IF_ERROR(WriteAll(fd.get(), text, tmp));
    if (::fsync(fd.get()) != 0) return Errno(errno, absl::StrCat("fsync of ", tmp));
  }
  if (::rename(tmp.c_str(), path_.c_str()) != 0) {
    return Errno(errno, absl::StrCat("renaming ", tmp, " to ", path_));
  }
  ScopedFd dirfd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd.valid() || ::fsync(dirfd.get()) != 0) {
    return Errno(errno, absl::StrCat("fsync of ", dir_));
  }
  return absl::OkStatus();
}

uint64_t IdLedger::max_id() const {
  absl::MutexLock lock(&mu_);
  return max_id_;
}

uint64_t IdLedger::floor() const {
  absl::MutexLock lock(&mu_);
  return floor_;
}

absl::Status IdLedger::RecordBegun(uint64_t id) {
  absl::MutexLock lock(&mu_);
  if (id <= max_id_) return absl::OkStatus();  // within the ids reserved already
  // Reserve a block, so that the file is written (and fsynced) once per kReserve automatic ids,
  // not at every Begin; after a restart automatic ids continue above the whole block.
  const uint64_t limit = (uint64_t{1} << 63) - 1;
  const uint64_t before = max_id_;
  max_id_ = id > limit - (kReserve - 1) ? limit : id + (kReserve - 1);
  absl::Status s = Write();
  if (!s.ok()) max_id_ = before;
  return s;
}

absl::Status IdLedger::RecordCommitted(uint64_t id, uint64_t digest) {
  absl::MutexLock lock(&mu_);
  if (committed_.count(id) == 0) {
    order_.push_back(id);
    while (order_.size() > kMaxCommitted) {
      committed_.erase(order_.front());
      order_.pop_front();
    }
  }
  committed_[id] = digest;
  max_id_ = std::max(max_id_, id);
  return Write();
}

std::optional<uint64_t> IdLedger::CommittedDigest(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto it = committed_.find(id);
  if (it == committed_.end()) return std::nullopt;
  return it->second;
}

}  // namespace ckpt::daemon
