#include "daemon/update/push_feed.h"

#include <algorithm>
#include <utility>

namespace ckpt::daemon {

PushFeed::PushFeed(uint64_t version, size_t tensors)
    : version_(version), ready_(tensors, false), xxh3_(tensors, 0) {}

void PushFeed::MarkReady(size_t i, uint64_t xxh3) {
  {
    absl::MutexLock lock(&mu_);
    if (i >= ready_.size() || ready_[i] || !failure_.ok()) return;
    ready_[i] = true;
    xxh3_[i] = xxh3;
    order_.push_back(i);
    ++changes_;
  }
  Notify();
}

void PushFeed::MarkCommitted(const std::vector<uint64_t>& xxh3) {
  {
    absl::MutexLock lock(&mu_);
    if (committed_ || !failure_.ok()) return;
    for (size_t i = 0; i < ready_.size(); ++i) {
      if (ready_[i]) continue;
      if (i < xxh3.size()) xxh3_[i] = xxh3[i];
      ready_[i] = true;
      order_.push_back(i);
    }
    committed_ = true;
    ++changes_;
  }
  Notify();
}

void PushFeed::Fail(absl::Status why) {
  if (why.ok()) why = absl::UnknownError("the push failed");
  {
    absl::MutexLock lock(&mu_);
    if (committed_ || !failure_.ok()) return;
    failure_ = std::move(why);
    ++changes_;
  }
  Notify();
}

absl::Status PushFeed::ReadySince(size_t* cursor, std::vector<size_t>* out) const {
  absl::ReaderMutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  for (size_t k = *cursor; k < order_.size(); ++k) out->push_back(order_[k]);
  *cursor = std::max(*cursor, order_.size());
  return absl::OkStatus();
}

absl::StatusOr<bool> PushFeed::Committed() const {
  absl::ReaderMutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  return committed_;
}

bool PushFeed::Ended() const {
  absl::ReaderMutexLock lock(&mu_);
  return committed_ || !failure_.ok();
}

uint64_t PushFeed::Xxh3(size_t i) const {
  absl::ReaderMutexLock lock(&mu_);
  return i < ready_.size() && ready_[i] ? xxh3_[i] : 0;
}

bool PushFeed::AwaitEnd(absl::Time deadline, bool* timed_out) const {
  absl::MutexLock lock(&mu_);
  auto ended = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return committed_ || !failure_.ok(); };
  *timed_out = !mu_.AwaitWithDeadline(absl::Condition(&ended), deadline);
  return committed_;
}

uint64_t PushFeed::changes() const {
  absl::ReaderMutexLock lock(&mu_);
  return changes_;
}

void PushFeed::AwaitChange(uint64_t seen, absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  auto changed = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return changes_ != seen; };
  (void)mu_.AwaitWithDeadline(absl::Condition(&changed), deadline);
}

void PushFeed::SetListener(std::function<void()> listener) {
  absl::MutexLock lock(&listener_mu_);
  listener_ = std::move(listener);
}

void PushFeed::Notify() {
  absl::MutexLock lock(&listener_mu_);
  if (listener_) listener_();
}

}  // namespace ckpt::daemon
