// HostCopy: what a member that did not hold a version keeps of it from a cluster update (docs/
// cluster.md, "Host copies"). As each bucket lands in this member's slot, its tensors' bytes are
// copied into a STAGING version of the member's own store (the same id and manifest); when every
// bucket came, the copy commits like a push (every checksum verified), so a worker that restarts
// here is served locally and corruption on the wire is detected where the bytes landed.
//
// A copy is begun only when it fits in the store's free bytes (it never pushes out a version held
// here) and the id is one this store may commit (above every id committed here); otherwise the
// update goes on without one (the reason logged). A copy that fails (a checksum, a drop of the
// staging version) is aborted; the update itself is unaffected.
//
// Thread-safety: Take is called by the update's filler thread, the rest by the member's update
// thread before and after the run.
#ifndef CKPT_DAEMON_UPDATE_HOST_COPY_H_
#define CKPT_DAEMON_UPDATE_HOST_COPY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/store/version_store.h"
#include "daemon/update/update_plan.h"
#include "proto/common.pb.h"

namespace ckpt::daemon {

class HostCopy {
 public:
  // A copy of `version` (`manifest`, in `buckets` buckets) from `from`; nullptr with `*why_not`
  // when none is kept.
  static std::unique_ptr<HostCopy> Begin(VersionStore* store, uint64_t version,
                                         const v1::Manifest& manifest, size_t buckets,
                                         const std::string& from, std::string* why_not);
  ~HostCopy();  // aborts the staging version unless it committed
  HostCopy(const HostCopy&) = delete;
  HostCopy& operator=(const HostCopy&) = delete;

  // Copies `bucket`'s tensors out of the slot bytes at `slot`. After an error the copy is dead
  // (later calls do nothing; Commit refuses).
  absl::Status Take(const Bucket& bucket, const uint8_t* slot);
  // Once every bucket was taken: commits (checksums verified). The store's commit listener is not
  // told (the cluster update already brings the version to this member's workers).
  absl::StatusOr<v1::VersionInfo> Commit();

  uint64_t version() const { return version_; }
  uint64_t bytes() const { return bytes_; }

 private:
  HostCopy(VersionStore* store, uint64_t version, std::string token, size_t buckets, uint64_t bytes)
      : store_(store),
        version_(version),
        token_(std::move(token)),
        buckets_(buckets),
        bytes_(bytes) {}

  VersionStore* const store_;
  const uint64_t version_;
  const std::string token_;
  const size_t buckets_;
  const uint64_t bytes_;
  std::unique_ptr<VersionStore::WriteLease> lease_;
  std::vector<uint64_t> sizes_;  // byte_size of each tensor (manifest order)
  size_t taken_ = 0;
  std::string failed_;
  bool committed_ = false;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_HOST_COPY_H_
