#include "daemon/cluster/rendezvous.h"

#include <algorithm>
#include <stdexcept>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/message_text.h"

namespace ckpt::daemon {

void RendezvousStore::Open(const std::string& id) {
  absl::MutexLock lock(&mu_);
  open_.insert(id);
}

void RendezvousStore::Close(const std::string& id) {
  absl::MutexLock lock(&mu_);
  open_.erase(id);
  const std::string prefix = id + "/";
  for (auto it = values_.lower_bound(prefix);
       it != values_.end() && absl::StartsWith(it->first, prefix);) {
    it = values_.erase(it);
  }
}

absl::Status RendezvousStore::CheckKey(const std::string& key) const {
  if (key.empty() || key.size() > kMaxRendezvousKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous key of ", key.size(), " bytes (1..", kMaxRendezvousKeyBytes, ")"));
  }
  const size_t slash = key.find('/');
  if (slash == std::string::npos || open_.count(key.substr(0, slash)) == 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "rendezvous key ", QuoteForMessage(key, 64),
        " names no communicator being created here (it ended, or another member coordinates)"));
  }
  return absl::OkStatus();
}

absl::Status RendezvousStore::Set(const std::string& key, const std::string& value) {
  if (value.size() > kMaxRendezvousValueBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rendezvous value of ", value.size(), " bytes (at most ", kMaxRendezvousValueBytes, ")"));
  }
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  auto it = values_.find(key);
  if (it != values_.end()) {
    if (it->second == value) return absl::OkStatus();  // a retried call
    return absl::AlreadyExistsError(
        absl::StrCat("rendezvous key ", QuoteForMessage(key, 64), " is set already"));
  }
  if (values_.size() >= kMaxRendezvousKeys) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the rendezvous store holds ", values_.size(), " keys, its most"));
  }
  values_.emplace(key, value);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> RendezvousStore::Get(const std::vector<std::string>& keys,
                                                              absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  for (const std::string& k : keys) {
    if (absl::Status s = CheckKey(k); !s.ok()) return s;
  }
  auto all_set = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    for (const std::string& k : keys) {
      if (values_.count(k) == 0) return false;
    }
    return true;
  };
  if (!mu_.AwaitWithDeadline(absl::Condition(&all_set), deadline)) {
    std::vector<std::string> missing;
    for (const std::string& k : keys) {
      if (values_.count(k) == 0) missing.push_back(QuoteForMessage(k, 64));
      if (missing.size() == 4) break;
    }
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous: not every rank arrived (no ", absl::StrJoin(missing, ", "), ")"));
  }
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const std::string& k : keys) out.push_back(values_.at(k));
  return out;
}

absl::StatusOr<v1::RendezvousResponse> RendezvousStore::Serve(
    const v1::RendezvousRequest& request) {
  v1::RendezvousResponse response;
  if (request.set()) {
    if (absl::Status s = Set(request.key(), request.value()); !s.ok()) return s;
    return response;
  }
  if (request.keys().empty() || request.keys_size() > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous get of ", request.keys_size(), " keys (1..1024)"));
  }
  const absl::Duration wait = std::min(absl::Milliseconds(request.wait_ms()), kMaxRendezvousWait);
  auto values = Get({request.keys().begin(), request.keys().end()}, absl::Now() + wait);
  if (!values.ok()) return values.status();
  size_t total = 0;
  for (const std::string& v : *values) total += v.size();
  if (total > kMaxRendezvousValueBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("rendezvous get of ", total, " bytes: ask for fewer keys at once"));
  }
  for (std::string& v : *values) response.add_values(std::move(v));
  return response;
}

RendezvousClient::RendezvousClient(std::string prefix, Call call, absl::Duration timeout)
    : prefix_(std::move(prefix)), call_(std::move(call)), timeout_(timeout) {}

void RendezvousClient::set(const std::string& key, const std::vector<char>& data) {
  v1::RendezvousRequest request;
  request.set_set(true);
  request.set_key(prefix_ + key);
  request.set_value(std::string(data.begin(), data.end()));
  auto r = call_(request);
  if (!r.ok()) throw std::runtime_error(std::string(r.status().message()));
}

std::vector<std::string> RendezvousClient::GetAll(const std::vector<std::string>& keys,
                                                  absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  v1::RendezvousRequest request;
  for (const std::string& k : keys) request.add_keys(prefix_ + k);
  // In calls of at most kMaxRendezvousWait, until the deadline.
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    request.set_wait_ms(static_cast<uint32_t>(
        std::max<int64_t>(1, absl::ToInt64Milliseconds(std::min(left, kMaxRendezvousWait)))));
    auto r = call_(request);
    if (r.ok()) {
      if (r->values_size() != static_cast<int>(keys.size())) {
        throw std::runtime_error("rendezvous: an answer with the wrong number of values");
      }
      return {r->values().begin(), r->values().end()};
    }
    if (!absl::IsDeadlineExceeded(r.status()) || absl::Now() >= deadline) {
      throw std::runtime_error(std::string(r.status().message()));
    }
  }
}

std::vector<char> RendezvousClient::get(const std::string& key) {
  const std::string v = GetAll({key}, timeout_).front();
  return std::vector<char>(v.begin(), v.end());
}

void RendezvousClient::wait(const std::vector<std::string>& keys) { GetAll(keys, timeout_); }

void RendezvousClient::wait(const std::vector<std::string>& keys,
                            const std::chrono::milliseconds& timeout) {
  GetAll(keys, std::min(timeout_, absl::FromChrono(timeout)));
}

}  // namespace ckpt::daemon
