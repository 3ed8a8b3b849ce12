#include "daemon/update/host_copy.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/units.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

std::unique_ptr<HostCopy> HostCopy::Begin(VersionStore* store, uint64_t version,
                                          const v1::Manifest& manifest, size_t buckets,
                                          const std::string& from, std::string* why_not) {
  uint64_t bytes = 0;
  for (const v1::TensorSpec& t : manifest.tensors()) bytes += t.byte_size();  // validated: no wrap
  // Only into free memory (never pushing out a version held here), without waiting for warm-up.
  auto begun = store->Begin(manifest, version, absl::StrCat("cluster copy from ", from), "cluster",
                            /*verify_checksums=*/true, absl::Now() + absl::Seconds(1),
                            /*may_retire=*/false, /*transport=*/"cluster");
  if (!begun.ok()) {
    *why_not = std::string(begun.status().message());
    return nullptr;
  }
  std::unique_ptr<HostCopy> copy(
      new HostCopy(store, begun->version, begun->upload_token, buckets, bytes));
  auto lease = store->OpenWriter(begun->version, begun->upload_token);
  if (!lease.ok()) {
    *why_not = std::string(lease.status().message());
    return nullptr;  // the destructor aborts the staging version
  }
  copy->lease_ = *std::move(lease);
  copy->sizes_.reserve(manifest.tensors_size());
  for (const v1::TensorSpec& t : manifest.tensors()) copy->sizes_.push_back(t.byte_size());
  return copy;
}

HostCopy::~HostCopy() {
  lease_.reset();
  if (committed_) return;
  absl::Status s =
      store_->Abort(version_, token_,
                    failed_.empty() ? "the cluster update did not bring every bucket" : failed_);
  if (!s.ok() && !absl::IsNotFound(s)) {
    spdlog::warn("cluster copy of version {}: aborting it: {}", version_, std::string(s.message()));
  }
}

absl::Status HostCopy::Take(const Bucket& bucket, const uint8_t* slot) {
  if (!failed_.empty() || lease_ == nullptr) return absl::OkStatus();
  for (const TensorPlacement& t : bucket.tensors) {
    const size_t i = static_cast<size_t>(t.tensor);
    // The plan comes from this manifest; checked anyway: a wrong placement must not write past a
    // tensor's range.
    if (i >= sizes_.size() || t.tensor_offset > sizes_[i] ||
        t.bytes > sizes_[i] - t.tensor_offset) {
      failed_ = absl::StrCat("a placement of tensor ", t.tensor, " lies outside it");
      return absl::InternalError(failed_);
    }
    std::memcpy(lease_->data(static_cast<int>(i)) + t.tensor_offset, slot + t.slot_offset, t.bytes);
  }
  if (!lease_->Touch()) {
    failed_ = "its staging version was aborted or dropped";
    lease_.reset();
    return absl::AbortedError(failed_);
  }
  ++taken_;
  return absl::OkStatus();
}

absl::StatusOr<v1::VersionInfo> HostCopy::Commit() {
  if (!failed_.empty()) return absl::AbortedError(failed_);
  if (taken_ != buckets_) {
    failed_ = absl::StrCat(taken_, " of ", buckets_, " buckets arrived");
    return absl::AbortedError(failed_);
  }
  absl::Status marked = lease_->MarkAllReceived();
  lease_.reset();  // Commit waits for writers
  if (!marked.ok()) {
    failed_ = std::string(marked.message());
    return marked;
  }
  auto info = store_->Commit(version_, token_, /*notify=*/false);
  if (!info.ok()) {
    failed_ = std::string(info.status().message());
    return info.status();
  }
  committed_ = true;
  return info;
}

}  // namespace ckpt::daemon
