#include "daemon/update/update_run.h"

#include <algorithm>
#include <set>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "common/message_text.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

absl::StatusOr<UpdatePlan> PlanManifest(uint64_t version, const v1::Manifest& manifest,
                                        const std::function<uint64_t(int)>& host_offset,
                                        uint64_t bucket_bytes, int slot_sets,
                                        const std::vector<uint32_t>* groups) {
  if (groups != nullptr && groups->size() != static_cast<size_t>(manifest.tensors_size())) {
    return absl::InternalError("a group per tensor (a daemon bug)");
  }
  std::vector<PlanTensor> tensors;
  tensors.reserve(manifest.tensors_size());
  for (int i = 0; i < manifest.tensors_size(); ++i) {
    const v1::TensorSpec& spec = manifest.tensors(i);
    const std::vector<int64_t> shape(spec.shape().begin(), spec.shape().end());
    // Manifests were validated (at Begin, or as a cluster member received them): known dtypes,
    // byte_size == elements x element size.
    const uint64_t element =
        static_cast<uint64_t>(std::max(1, DTypeSize(static_cast<DType>(spec.dtype()))));
    tensors.push_back({spec.name(), host_offset ? host_offset(i) : 0, spec.byte_size(),
                       SplitUnit(shape, element, spec.byte_size(), bucket_bytes),
                       groups != nullptr ? (*groups)[static_cast<size_t>(i)] : 0});
  }
  auto plan = PlanUpdate(tensors, bucket_bytes, slot_sets);
  if (!plan.ok()) return Annotate(plan.status(), absl::StrCat("update to version ", version));
  return plan;
}

absl::StatusOr<UpdatePlan> PlanVersion(const VersionStore::ReadLease& lease, uint64_t bucket_bytes,
                                       int slot_sets) {
  return PlanManifest(
      lease.version(), lease.manifest(), [&lease](int i) { return lease.arena_offset(i); },
      bucket_bytes, slot_sets);
}

absl::StatusOr<std::vector<UpdateRun::Participant>> UpdateRun::Select(
    const WorkerRegistry& registry, const v1::UpdateRequest& request, uint64_t version,
    const v1::Manifest& manifest, v1::UpdateResponse* response, bool allow_none) {
  std::vector<Participant> participants;
  std::unordered_set<std::string> names;  // of the version, built when a worker filters
  std::set<int> pids(request.worker_pids().begin(), request.worker_pids().end());
  std::set<int> found;
  for (const auto& [id, worker] : registry.all()) {
    if (!pids.empty() && pids.count(worker->identity.pid) == 0) continue;
    found.insert(worker->identity.pid);
    if (worker->loaded_version == version && !request.force()) {
      v1::WorkerResult* r = response->add_workers();
      r->set_pid(worker->identity.pid);
      r->set_gpu_uuid(worker->identity.gpu_uuid);
      r->set_engine(worker->identity.engine);
      r->set_ok(true);
      r->set_skipped(true);
      continue;
    }
    Participant p;
    p.worker = worker;
    if (!worker->wanted.empty()) {
      // A name the version lacks (a typo, another model) fails this worker before anything is
      // sent, instead of a quiet success with fewer tensors.
      if (names.empty()) {
        for (const auto& t : manifest.tensors()) names.insert(t.name());
      }
      std::vector<std::string> missing;
      for (const std::string& n : worker->identity.tensor_names) {
        if (names.count(n) == 0) missing.push_back(QuoteForMessage(n, 128));
      }
      if (!missing.empty()) {
        const size_t shown = std::min<size_t>(missing.size(), 8);
        p.error = absl::StrCat(
            "it asked for ", missing.size(), " tensor(s) that version ", version,
            " lacks: ", absl::StrJoin(missing.begin(), missing.begin() + shown, ", "),
            missing.size() > shown ? ", ..." : "", " (check the worker's tensor_names)");
        p.reason = "missing_tensors";
      }
    }
    participants.push_back(std::move(p));
  }
  for (int pid : pids) {
    if (found.count(pid) == 0) {
      return absl::NotFoundError(absl::StrCat("no attached worker has pid ", pid));
    }
  }
  if (participants.empty() && response->workers().empty() && !allow_none) {
    return absl::FailedPreconditionError(
        "no worker is attached: start the inference workers (they attach to this daemon's "
        "socket) before asking for an update");
  }
  return participants;
}

UpdateRun::UpdateRun(absl::Mutex& mu, uint64_t version,
                     std::shared_ptr<const v1::Manifest> manifest,
                     std::shared_ptr<VersionStore::ReadLease> lease, UpdatePlan plan,
                     std::vector<Participant> participants, BucketFiller* filler,
                     WorkerRegistry* registry, Options options)
    : mu_(mu),
      version_(version),
      manifest_(std::move(manifest)),
      lease_(std::move(lease)),
      plan_(std::move(plan)),
      filler_(filler),
      registry_(registry),
      options_(options),
      participants_(std::move(participants)) {}

v1::DaemonMessage UpdateRun::BucketMessage(int k) const {
  const v1::Manifest& manifest = *manifest_;
  const int n = static_cast<int>(plan_.buckets.size());
  v1::DaemonMessage m;
  v1::BucketReady* b = m.mutable_bucket();
  b->set_version(version_);
  b->set_bucket(k);
  b->set_slot(k % options_.slots);
  b->set_last(k == n - 1);
  for (const TensorPlacement& t : plan_.buckets[static_cast<size_t>(order_[k])].tensors) {
    v1::TensorPlacement* tp = b->add_tensors();
    // With its xxh3: workers with verify_checksums check the bytes they read against it.
    *tp->mutable_spec() = manifest.tensors(t.tensor);
    if (const uint64_t xxh3 = filler_->Xxh3(t.tensor); xxh3 != 0)
      tp->mutable_spec()->set_xxh3(xxh3);
    // Converted tensors (FP8) have none: said, so that a worker tells them from an old daemon's.
    if (tp->spec().xxh3() == 0) tp->set_no_checksum(true);
    tp->set_slot_offset(t.slot_offset);
    tp->set_tensor_offset(t.tensor_offset);
    tp->set_bytes(t.bytes);
  }
  return m;
}

void UpdateRun::OnAck(uint64_t worker, const v1::BucketAck& ack) {
  ++events_;
  if (ack.version() != version_) return;  // a late message of an earlier update
  for (Participant& p : participants_) {
    if (p.worker->id != worker || !p.active()) continue;
    if (!ack.error().empty()) {
      p.error = absl::StrCat("failed to load bucket ", ack.bucket(), ": ", ack.error());
      p.reason = "load_error";
      p.outstanding.clear();
    } else {
      p.outstanding.erase(ack.bucket());
    }
    return;
  }
}

void UpdateRun::OnLoaded(uint64_t worker, const v1::VersionLoaded& loaded) {
  ++events_;
  if (loaded.version() != version_) return;
  for (Participant& p : participants_) {
    if (p.worker->id != worker || !p.active()) continue;
    if (!p.done_sent) return;
    if (!loaded.error().empty()) {
      p.error = absl::StrCat("failed to finish the version: ", loaded.error());
      p.reason = "load_error";
    } else {
      p.loaded = true;
      p.tensors = loaded.tensors();
      p.bytes = loaded.bytes();
      p.worker->loaded_version = version_;
      registry_->NoteChange();
    }
    return;
  }
}

void UpdateRun::OnDetached(uint64_t worker, const std::string& why) {
  ++events_;
  for (Participant& p : participants_) {
    if (p.worker->id == worker && p.active() && !p.loaded) {
      p.error = absl::StrCat("detached mid-update: ", why);
      p.reason = "detached";
      p.outstanding.clear();
    }
  }
}

void UpdateRun::OnPaused(uint64_t worker, const v1::Paused& paused) {
  ++events_;
  if (paused.version() != version_) return;
  for (Participant& p : participants_) {
    if (p.worker->id != worker || !p.active() || !p.pause_sent || p.paused) continue;
    if (!paused.error().empty()) {
      p.error = absl::StrCat("could not pause: ", EscapeForMessage(paused.error(), 400));
      p.reason = "pause_error";
    } else {
      p.paused = true;
    }
    return;
  }
}

absl::Status UpdateRun::PauseAll() {
  for (const Participant& p : participants_) {
    if (p.active() && !p.worker->identity.pausable) {
      return absl::FailedPreconditionError(absl::StrCat(
          "a consistent update to version ", version_, " needs every participant to pause, and ",
          p.worker->Describe(), " cannot (it attached without a pause hook); nothing was sent"));
    }
  }
  v1::DaemonMessage pause;
  pause.mutable_pause()->set_version(version_);
  SendAndAwait(pause, &Participant::pause_sent, &Participant::pause_sent_at, &Participant::paused);
  if (cancelled_) {
    return absl::UnavailableError(
        absl::StrCat("update to version ", version_, " cancelled: ", cancel_reason_));
  }
  std::vector<std::string> failed;
  for (const Participant& p : participants_) {
    if (p.pause_sent && !p.paused) {
      failed.push_back(absl::StrCat(p.worker->Describe(), ": ", p.error));
    }
  }
  if (!failed.empty()) {
    return absl::AbortedError(absl::StrCat("a consistent update to version ", version_, ": ",
                                           absl::StrJoin(failed, "; "),
                                           "; nothing was sent and every paused worker resumes"));
  }
  return absl::OkStatus();
}

void UpdateRun::SendAndAwait(const v1::DaemonMessage& message, bool Participant::*sent,
                             absl::Time Participant::*sent_at, bool Participant::*answered) {
  for (Participant& p : participants_) {
    if (!p.active()) continue;
    p.*sent = true;
    p.*sent_at = absl::Now();
    SendTo(p, message);
  }
  auto settled = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cancelled_) return true;
    for (const Participant& p : participants_) {
      if (p.active() && !(p.*answered)) return false;
    }
    return true;
  };
  while (!settled()) {
    mu_.AwaitWithTimeout(absl::Condition(&settled), absl::Milliseconds(100));
    Expire();
  }
}

void UpdateRun::Resume(const std::vector<std::shared_ptr<WorkerRecord>>& paused, uint64_t version,
                       bool loaded, const std::string& error) {
  for (const auto& w : paused) {
    v1::DaemonMessage m;
    m.mutable_resume()->set_version(version);
    m.mutable_resume()->set_loaded(loaded);
    m.mutable_resume()->set_error(error.substr(0, 2000));
    w->channel->Send(std::move(m));  // a closed stream needs no resume
  }
}

void UpdateRun::Cancel(const std::string& reason) {
  if (cancelled_) return;
  cancelled_ = true;
  cancel_reason_ = reason;
  ++events_;
}

void UpdateRun::Progress(v1::UpdateProgress* progress) const {
  progress->set_buckets_done(static_cast<uint32_t>(released_));
  progress->set_bytes_done(bytes_released_);
  progress->set_workers_done(0);
  progress->set_workers_failed(0);
  for (const Participant& p : participants_) {
    if (!p.active()) {
      progress->set_workers_failed(progress->workers_failed() + 1);
    } else if (p.loaded) {
      progress->set_workers_done(progress->workers_done() + 1);
    }
  }
}

void UpdateRun::Expire() {
  // Marks participants whose oldest outstanding ack is older than ack_timeout as failed.
  const absl::Time now = absl::Now();
  for (Participant& p : participants_) {
    if (!p.active()) continue;
    std::string why;
    if (!p.outstanding.empty() && now - p.outstanding.begin()->second > options_.ack_timeout) {
      why = absl::StrCat("did not ack bucket ", p.outstanding.begin()->first, " of version ",
                         version_, " within ack_timeout ", HumanDuration(options_.ack_timeout));
    } else if (p.done_sent && !p.loaded && now - p.done_sent_at > options_.ack_timeout) {
      why = absl::StrCat("did not report version ", version_, " loaded within ack_timeout ",
                         HumanDuration(options_.ack_timeout));
    } else if (p.pause_sent && !p.paused && now - p.pause_sent_at > options_.ack_timeout) {
      why = absl::StrCat("did not pause for version ", version_, " within ack_timeout ",
                         HumanDuration(options_.ack_timeout));
    }
    if (why.empty()) continue;
    p.error = why;
    p.reason = "ack_timeout";
    p.timed_out = true;
    p.outstanding.clear();
    p.worker->channel->Close(absl::StrCat("the daemon gave up on this worker: it ", why));
    // Gone from the registry at once (its stream may take a while to end): the next update must
    // not count it as a participant.
    registry_->Forget(*p.worker, absl::StrCat("timed out: it ", why));
  }
}

bool UpdateRun::AllAcked(int k) const {
  for (const Participant& p : participants_) {
    if (p.active() && p.outstanding.count(k) > 0) return false;
  }
  return true;
}

bool UpdateRun::AnyActive() const {
  for (const Participant& p : participants_) {
    if (p.active()) return true;
  }
  return false;
}

void UpdateRun::SendTo(Participant& p, v1::DaemonMessage m) {
  if (p.worker->channel->Send(std::move(m))) return;
  p.error = "its stream closed mid-update";
  p.reason = "stream_closed";
  p.outstanding.clear();
  registry_->Forget(*p.worker, p.error);
}

UpdateRun::Result UpdateRun::Execute(v1::UpdateResponse* response,
                                     std::map<std::string, uint64_t>* failure_reasons) {
  const absl::Time started = absl::Now();
  const int n = static_cast<int>(plan_.buckets.size());
  const int k_slots = options_.slots;
  absl::Status failure;  // of the daemon itself (GPU, shutdown)
  absl::Duration wait_slot, fill, load;
  std::vector<absl::Time> notified(n);
  std::vector<absl::Time> fill_started(n);
  int next_fill = 0, next_notify = 0;
  absl::Time fill_candidate_since = absl::Now();
  auto cancelled = [&] {
    return absl::UnavailableError(
        absl::StrCat("update to version ", version_, " cancelled: ", cancel_reason_));
  };

  order_.assign(static_cast<size_t>(n), -1);
  if (options_.consistent) failure = PauseAll();
  while (failure.ok() && (AnyActive() || options_.every_bucket) && released_ < n) {
    if (cancelled_) {
      failure = cancelled();
      break;
    }
    Expire();
    bool progress = false;
    // Release notified buckets whose every active worker acked.
    while (released_ < next_notify && AllAcked(released_)) {
      load += absl::Now() - notified[released_];
      for (const TensorPlacement& t :
           plan_.buckets[static_cast<size_t>(order_[released_])].tensors) {
        bytes_released_ += t.bytes;
      }
      ++released_;
      progress = true;
    }
    // Fill the next bucket when its slot is free (the bucket k_slots before it released).
    // (A version still being pushed: once its tensors are in.)
    absl::StatusOr<int> which = -1;
    if (next_fill < n && next_fill - k_slots < released_) which = filler_->NextBucket(next_fill);
    if (!which.ok()) {
      failure =
          Annotate(which.status(), absl::StrCat("version ", version_, ": the push failed with ",
                                                next_notify, " of ", n, " buckets sent"));
      break;
    }
    if (*which >= 0) {
      const absl::Time t0 = absl::Now();
      wait_slot += t0 - fill_candidate_since;
      fill_started[next_fill] = t0;
      order_[next_fill] = *which;
      mu_.Unlock();
      absl::Status s =
          filler_->Fill(plan_.buckets[static_cast<size_t>(*which)], next_fill, next_fill % k_slots);
      mu_.Lock();
      if (!s.ok()) {
        failure = Annotate(s, absl::StrCat("filling bucket ", next_fill, " of version ", version_));
        break;
      }
      ++next_fill;
      fill_candidate_since = absl::Now();
      progress = true;
    }
    // Tell the workers about the oldest filled bucket.
    if (next_notify < next_fill) {
      auto filled = filler_->Filled(next_notify % k_slots);
      if (!filled.ok()) {
        failure = Annotate(filled.status(), absl::StrCat("bucket ", next_notify));
        break;
      }
      if (*filled) {
        const absl::Time now = absl::Now();
        fill += now - fill_started[next_notify];
        const v1::DaemonMessage full = BucketMessage(next_notify);
        for (Participant& p : participants_) {
          if (!p.active()) continue;
          v1::DaemonMessage m = full;
          if (!p.worker->wanted.empty()) {
            auto* ts = m.mutable_bucket()->mutable_tensors();
            ts->erase(std::remove_if(ts->begin(), ts->end(),
                                     [&](const v1::TensorPlacement& t) {
                                       return p.worker->wanted.count(t.spec().name()) == 0;
                                     }),
                      ts->end());
            if (ts->empty()) continue;  // nothing it wants in this bucket: no ack needed
          }
          p.outstanding[next_notify] = now;
          ++p.buckets_sent;
          SendTo(p, std::move(m));
        }
        notified[next_notify] = now;
        ++next_notify;
        progress = true;
      } else if (absl::Now() - fill_started[next_notify] > options_.gpu_timeout) {
        failure = absl::DeadlineExceededError(
            absl::StrCat("bucket ", next_notify, " of version ", version_, " not filled within ",
                         HumanDuration(options_.gpu_timeout), " (GPU copies or NCCL stalled)"));
        break;
      }
    }
    if (progress) continue;
    // Nothing to do now: GPU work in flight is polled often; acks and detaches wake us up.
    const uint64_t seen = events_;
    auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return events_ != seen; };
    mu_.AwaitWithTimeout(absl::Condition(&changed),
                         next_notify < next_fill ? absl::Microseconds(20) : absl::Milliseconds(50));
  }
  // A version still being pushed: VersionDone only once it committed (a push that fails now
  // leaves every worker without it).
  while (failure.ok() && released_ == n && (AnyActive() || options_.every_bucket)) {
    absl::StatusOr<bool> committed = filler_->Committed();
    if (!committed.ok()) {
      failure = Annotate(committed.status(), absl::StrCat("version ", version_,
                                                          ": the push failed after every bucket "
                                                          "was sent, before its commit"));
      break;
    }
    if (*committed) break;
    if (cancelled_) {
      failure = cancelled();
      break;
    }
    const uint64_t seen = events_;
    auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return events_ != seen; };
    mu_.AwaitWithTimeout(absl::Condition(&changed), absl::Milliseconds(50));
  }
  // VersionDone to the workers still going, then wait for their VersionLoaded.
  const absl::Time finish_start = absl::Now();
  if (failure.ok()) {
    v1::DaemonMessage done;
    done.mutable_done()->set_version(version_);
    SendAndAwait(done, &Participant::done_sent, &Participant::done_sent_at, &Participant::loaded);
    if (cancelled_) failure = cancelled();
  }
  if (next_notify < next_fill || !failure.ok()) {
    // Slots may still be written by GPU work of this update: let it end before they are reused.
    mu_.Unlock();
    absl::Status drained = filler_->Drain(absl::Now() + options_.gpu_timeout);
    mu_.Lock();
    if (!drained.ok()) {
      spdlog::error("update to version {}: {}", version_, std::string(drained.message()));
    }
  }

  const absl::Time end = absl::Now();
  response->set_seconds(absl::ToDoubleSeconds(end - started));
  response->set_bytes(plan_.total_tensor_bytes);
  response->set_buckets(n);
  response->set_wait_slot_seconds(absl::ToDoubleSeconds(wait_slot));
  response->set_fill_seconds(absl::ToDoubleSeconds(fill));
  response->set_load_seconds(absl::ToDoubleSeconds(load));
  response->set_finish_seconds(absl::ToDoubleSeconds(end - finish_start));
  Result result;
  result.failure = failure;
  for (const Participant& p : participants_) {
    if (p.paused) result.paused.push_back(p.worker);
  }
  for (const Participant& p : participants_) {
    v1::WorkerResult* r = response->add_workers();
    r->set_pid(p.worker->identity.pid);
    r->set_gpu_uuid(p.worker->identity.gpu_uuid);
    r->set_engine(p.worker->identity.engine);
    r->set_ok(p.active() && p.loaded);
    r->set_error(p.error);
    r->set_tensors(p.tensors);
    r->set_bytes(p.bytes);
    if (!r->ok() && r->error().empty()) r->set_error("did not finish");
    WorkerRecord& w = *p.worker;
    w.last_update_version = version_;
    w.last_update_ok = r->ok();
    w.last_update_error = r->error();
    if (r->ok()) {
      w.mixed_version = 0;
    } else if (p.buckets_sent > 0) {
      w.mixed_version = version_;  // it was sent part of the version: it may have loaded some
    }
    if (!r->ok()) {
      result.failed.push_back(absl::StrCat(p.worker->Describe(), ": ", r->error(),
                                           p.buckets_sent > 0 ? " (mixed weights)" : ""));
      result.timed_out = result.timed_out || p.timed_out;
      ++(*failure_reasons)[p.reason];
    }
  }
  return result;
}

}  // namespace ckpt::daemon
