#include "daemon/update_engine.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <unordered_set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/dtype.h"
#include "common/message_text.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "daemon/filler.h"
#include "daemon/update_plan.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

struct UpdateEngine::WorkerEntry {
  uint64_t id = 0;
  WorkerIdentity identity;
  std::unordered_set<std::string> wanted;  // empty: all
  std::shared_ptr<WorkerChannel> channel;
  absl::Time attached;
  uint64_t loaded_version = 0;
  // Non-zero: an update to this version failed for the worker after part of it was sent.
  uint64_t mixed_version = 0;
  uint64_t last_update_version = 0;
  bool last_update_ok = false;
  std::string last_update_error;

  std::string Describe() const {
    return absl::StrCat(
        "worker pid ", identity.pid, " (", identity.engine.empty() ? "?" : identity.engine,
        identity.gpu_uuid.empty() ? "" : absl::StrCat(", ", identity.gpu_uuid), ")");
  }
};

struct UpdateEngine::Participant {
  std::shared_ptr<WorkerEntry> entry;
  std::string error;  // set once failed
  // Why, for metrics (Counters::worker_failures); "other" when it just did not finish.
  const char* reason = "other";
  bool timed_out = false;
  std::map<uint64_t, absl::Time> outstanding;  // bucket -> when BucketReady was sent
  int buckets_sent = 0;
  bool done_sent = false;
  absl::Time done_sent_at;
  bool loaded = false;
  uint64_t tensors = 0;
  uint64_t bytes = 0;
  bool active() const { return error.empty(); }
};

UpdateEngine::UpdateEngine(BackendKind backend, VersionStore* store, Options options)
    : backend_(backend), store_(store), options_(options) {}

absl::StatusOr<std::unique_ptr<UpdateEngine>> UpdateEngine::Create(
    BackendKind backend, const std::vector<gpu::GpuInfo>& gpus, VersionStore* store,
    Options options) {
  if (options.slots_per_gpu < 1 || options.bucket_bytes == 0 ||
      options.bucket_bytes % kSlotAlignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "update engine: need slots_per_gpu >= 1 and bucket_bytes a positive multiple of ",
        kSlotAlignment, " (got ", options.slots_per_gpu, ", ", options.bucket_bytes, ")"));
  }
  std::unique_ptr<UpdateEngine> e(new UpdateEngine(backend, store, options));
  if (backend == BackendKind::kCuda) {
    if (gpus.empty())
      return absl::FailedPreconditionError("update engine: cuda backend without GPUs");
    e->gpus_ = gpus;
    for (const gpu::GpuInfo& g : gpus) {
      ASSIGN_OR_RETURN(auto set,
                       SlotSet::CreateCuda(g.index, options.slots_per_gpu, options.bucket_bytes));
      e->slots_.push_back(std::move(set));
    }
    ASSIGN_OR_RETURN(auto filler, MakeCudaFiller(e->slots_, options.gpu_timeout));
    e->filler_ = std::move(filler);
  } else {
    ASSIGN_OR_RETURN(auto set, SlotSet::CreateHost(options.slots_per_gpu, options.bucket_bytes));
    e->slots_.push_back(std::move(set));
    e->filler_ = MakeHostFiller(e->slots_[0].get());
  }
  e->auto_thread_ = std::thread([raw = e.get()] { raw->AutoUpdateLoop(); });
  return e;
}

UpdateEngine::~UpdateEngine() {
  Stop("ckpt-engined is shutting down");
  if (auto_thread_.joinable()) auto_thread_.join();
}

uint64_t UpdateEngine::gpu_bytes_per_gpu() const {
  if (backend_ != BackendKind::kCuda) return 0;
  return static_cast<uint64_t>(options_.slots_per_gpu) * options_.bucket_bytes;
}

absl::StatusOr<int> UpdateEngine::GpuForUuid(const std::string& uuid) const {
  if (backend_ != BackendKind::kCuda) return 0;
  std::vector<std::string> known;
  for (size_t i = 0; i < gpus_.size(); ++i) {
    if (gpus_[i].uuid == uuid) return static_cast<int>(i);
    known.push_back(gpus_[i].uuid);
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "this daemon does not drive GPU '", uuid, "'; its GPUs are ", absl::StrJoin(known, ", "),
      " (check the daemon's CUDA_VISIBLE_DEVICES and the worker's GPU)"));
}

uint64_t UpdateEngine::AddWorker(WorkerIdentity identity, std::shared_ptr<WorkerChannel> channel) {
  auto entry = std::make_shared<WorkerEntry>();
  entry->identity = std::move(identity);
  entry->wanted.insert(entry->identity.tensor_names.begin(), entry->identity.tensor_names.end());
  entry->channel = std::move(channel);
  entry->attached = absl::Now();
  absl::MutexLock lock(&mu_);
  entry->id = next_worker_id_++;
  workers_[entry->id] = entry;
  ++events_;
  ++state_events_;
  if (options_.update_on_attach) attach_pending_.insert(entry->identity.pid);
  spdlog::info("{} attached", entry->Describe());
  if (stopping_) entry->channel->Close(stop_reason_);
  return entry->id;
}

void UpdateEngine::Forget(const WorkerEntry& entry, const std::string& why) {
  auto it = workers_.find(entry.id);
  if (it == workers_.end() || it->second.get() != &entry) return;
  spdlog::info("{} removed: {}", entry.Describe(), why);
  workers_.erase(it);
  ++events_;
  ++state_events_;
}

void UpdateEngine::RemoveWorker(uint64_t id, const std::string& why) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  spdlog::info("{} detached: {}", it->second->Describe(), why);
  ++events_;
  ++state_events_;
  if (participants_ != nullptr) {
    for (Participant& p : *participants_) {
      if (p.entry->id == id && p.active() && !p.loaded) {
        p.error = absl::StrCat("detached mid-update: ", why);
        p.reason = "detached";
        p.outstanding.clear();
      }
    }
  }
  workers_.erase(it);
}

void UpdateEngine::OnWorkerMessage(uint64_t id, const v1::WorkerMessage& message) {
  absl::MutexLock lock(&mu_);
  ++events_;
  if (participants_ == nullptr) return;  // a late message of a finished update
  for (Participant& p : *participants_) {
    if (p.entry->id != id || !p.active()) continue;
    if (message.has_ack()) {
      if (message.ack().version() != updating_) return;
      if (!message.ack().error().empty()) {
        p.error = absl::StrCat("failed to load bucket ", message.ack().bucket(), ": ",
                               message.ack().error());
        p.reason = "load_error";
        p.outstanding.clear();
      } else {
        p.outstanding.erase(message.ack().bucket());
      }
    } else if (message.has_loaded()) {
      if (message.loaded().version() != updating_ || !p.done_sent) return;
      if (!message.loaded().error().empty()) {
        p.error = absl::StrCat("failed to finish the version: ", message.loaded().error());
        p.reason = "load_error";
      } else {
        p.loaded = true;
        p.tensors = message.loaded().tensors();
        p.bytes = message.loaded().bytes();
        p.entry->loaded_version = updating_;
        ++state_events_;
      }
    }
    return;
  }
}

absl::StatusOr<v1::UpdateResponse> UpdateEngine::RunUpdate(const v1::UpdateRequest& request,
                                                           const std::string& trigger) {
  const absl::Time started = absl::Now();
  // Claim the one update slot, pick the participants.
  auto lease = store_->Lease(request.version());
  if (!lease.ok()) return lease.status();
  const uint64_t version = (*lease)->version();
  const v1::Manifest& manifest = (*lease)->manifest();

  std::vector<PlanTensor> tensors;
  tensors.reserve(manifest.tensors_size());
  for (int i = 0; i < manifest.tensors_size(); ++i) {
    const v1::TensorSpec& spec = manifest.tensors(i);
    const std::vector<int64_t> shape(spec.shape().begin(), spec.shape().end());
    // Manifests were validated at Begin: known dtypes, byte_size == elements x element size.
    const uint64_t element =
        static_cast<uint64_t>(std::max(1, DTypeSize(static_cast<DType>(spec.dtype()))));
    tensors.push_back({spec.name(), (*lease)->arena_offset(i), spec.byte_size(),
                       SplitUnit(shape, element, spec.byte_size(), options_.bucket_bytes)});
  }
  auto plan = PlanUpdate(tensors, options_.bucket_bytes, static_cast<int>(slots_.size()));
  if (!plan.ok()) return Annotate(plan.status(), absl::StrCat("update to version ", version));

  std::vector<Participant> participants;
  std::unordered_set<std::string> names;  // of the version, built when a worker filters
  v1::UpdateResponse response;
  response.set_version(version);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError(stop_reason_);
    if (updating_ != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "an update to version ", updating_,
          " is running; one update runs at a time: retry when it ends (ckptctl status)"));
    }
    std::set<int> pids(request.worker_pids().begin(), request.worker_pids().end());
    std::set<int> found;
    for (const auto& [id, entry] : workers_) {
      if (!pids.empty() && pids.count(entry->identity.pid) == 0) continue;
      found.insert(entry->identity.pid);
      if (entry->loaded_version == version && !request.force()) {
        v1::WorkerResult* r = response.add_workers();
        r->set_pid(entry->identity.pid);
        r->set_gpu_uuid(entry->identity.gpu_uuid);
        r->set_engine(entry->identity.engine);
        r->set_ok(true);
        r->set_skipped(true);
        continue;
      }
      Participant p;
      p.entry = entry;
      if (!entry->wanted.empty()) {
        // A name the version lacks (a typo, another model) fails this worker before anything is
        // sent, instead of a quiet success with fewer tensors.
        if (names.empty()) {
          for (const auto& t : manifest.tensors()) names.insert(t.name());
        }
        std::vector<std::string> missing;
        for (const std::string& n : entry->identity.tensor_names) {
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
    if (participants.empty() && response.workers().empty()) {
      return absl::FailedPreconditionError(
          "no worker is attached: start the inference workers (they attach to this daemon's "
          "socket) before asking for an update");
    }
    if (participants.empty()) return response;  // every one holds it already
    updating_ = version;
    participants_ = &participants;
    ++started_serial_;
    v1::UpdateOutcome running;
    running.set_version(version);
    running.set_state("running");
    running.set_trigger(trigger);
    running.set_started_unix_ms(absl::ToUnixMillis(started));
    v1::UpdateProgress* progress = running.mutable_progress();
    progress->set_buckets_total(static_cast<uint32_t>(plan->buckets.size()));
    progress->set_bytes_total(plan->total_tensor_bytes);
    progress->set_workers_total(static_cast<uint32_t>(participants.size()));
    last_outcome_ = running;
    outcomes_[version] = running;
    while (outcomes_.size() > 32) outcomes_.erase(outcomes_.begin());
    running_unrestricted_ = request.worker_pids().empty() && !request.force();
    ++events_;
    ++state_events_;
  }
  spdlog::info("update to version {}: {} buckets of up to {}, {} workers", version,
               plan->buckets.size(), FormatBytes(options_.bucket_bytes), participants.size());

  // The pipeline (see the class comment).
  const int n = static_cast<int>(plan->buckets.size());
  const int k_slots = options_.slots_per_gpu;
  const uint8_t* arena = store_->arena().data();
  // The BucketReady of each bucket with every tensor; filtered per worker when sending.
  auto bucket_message = [&](int k) {
    v1::DaemonMessage m;
    v1::BucketReady* b = m.mutable_bucket();
    b->set_version(version);
    b->set_bucket(k);
    b->set_slot(k % k_slots);
    b->set_last(k == n - 1);
    for (const TensorPlacement& t : plan->buckets[k].tensors) {
      v1::TensorPlacement* tp = b->add_tensors();
      // With its xxh3: workers with verify_checksums check the bytes they read against it.
      *tp->mutable_spec() = manifest.tensors(t.tensor);
      tp->set_slot_offset(t.slot_offset);
      tp->set_tensor_offset(t.tensor_offset);
      tp->set_bytes(t.bytes);
    }
    return m;
  };

  absl::Status failure;  // of the daemon itself (GPU, shutdown)
  absl::Duration wait_slot, fill, load;
  std::vector<absl::Time> notified(n);
  int next_fill = 0, next_notify = 0, released = 0;
  absl::Time fill_candidate_since = absl::Now();
  std::vector<absl::Time> fill_started(n);

  absl::MutexLock lock(&mu_);
  // Marks participants whose oldest outstanding ack is older than ack_timeout as failed.
  auto expire = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = absl::Now();
    for (Participant& p : participants) {
      if (!p.active()) continue;
      std::string why;
      if (!p.outstanding.empty() && now - p.outstanding.begin()->second > options_.ack_timeout) {
        why = absl::StrCat("did not ack bucket ", p.outstanding.begin()->first, " of version ",
                           version, " within ack_timeout ", HumanDuration(options_.ack_timeout));
      } else if (p.done_sent && !p.loaded && now - p.done_sent_at > options_.ack_timeout) {
        why = absl::StrCat("did not report version ", version, " loaded within ack_timeout ",
                           HumanDuration(options_.ack_timeout));
      }
      if (why.empty()) continue;
      p.error = why;
      p.reason = "ack_timeout";
      p.timed_out = true;
      p.outstanding.clear();
      p.entry->channel->Close(absl::StrCat("the daemon gave up on this worker: it ", why));
      // Gone from the registry at once (its stream may take a while to end): the next update must
      // not count it as a participant.
      Forget(*p.entry, absl::StrCat("timed out: it ", why));
    }
  };
  auto all_acked = [&](int k) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const Participant& p : participants) {
      if (p.active() && p.outstanding.count(k) > 0) return false;
    }
    return true;
  };
  auto any_active = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const Participant& p : participants) {
      if (p.active()) return true;
    }
    return false;
  };

  while (failure.ok() && any_active() && released < n) {
    if (stopping_) {
      failure = absl::UnavailableError(
          absl::StrCat("update to version ", version, " cancelled: ", stop_reason_));
      break;
    }
    expire();
    bool progress = false;
    // Release notified buckets whose every active worker acked.
    while (released < next_notify && all_acked(released)) {
      load += absl::Now() - notified[released];
      // Status shows it while the update runs (last_outcome_ is this update's: one runs at a time).
      uint64_t bucket_bytes = 0;
      for (const TensorPlacement& t : plan->buckets[released].tensors) bucket_bytes += t.bytes;
      v1::UpdateProgress* shown = last_outcome_->mutable_progress();
      shown->set_bytes_done(shown->bytes_done() + bucket_bytes);
      ++released;
      shown->set_buckets_done(static_cast<uint32_t>(released));
      progress = true;
    }
    // Fill the next bucket when its slot is free (the bucket k_slots before it released).
    if (next_fill < n && next_fill - k_slots < released) {
      const absl::Time t0 = absl::Now();
      wait_slot += t0 - fill_candidate_since;
      fill_started[next_fill] = t0;
      mu_.Unlock();
      absl::Status s = filler_->Fill(plan->buckets[next_fill], next_fill % k_slots, arena);
      mu_.Lock();
      if (!s.ok()) {
        failure = Annotate(s, absl::StrCat("filling bucket ", next_fill, " of version ", version));
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
        const v1::DaemonMessage full = bucket_message(next_notify);
        for (Participant& p : participants) {
          if (!p.active()) continue;
          v1::DaemonMessage m = full;
          if (!p.entry->wanted.empty()) {
            auto* ts = m.mutable_bucket()->mutable_tensors();
            ts->erase(std::remove_if(ts->begin(), ts->end(),
                                     [&](const v1::TensorPlacement& t) {
                                       return p.entry->wanted.count(t.spec().name()) == 0;
                                     }),
                      ts->end());
            if (ts->empty()) continue;  // nothing it wants in this bucket: no ack needed
          }
          p.outstanding[next_notify] = now;
          ++p.buckets_sent;
          if (!p.entry->channel->Send(std::move(m))) {
            p.error = "its stream closed mid-update";
            p.reason = "stream_closed";
            p.outstanding.clear();
            Forget(*p.entry, p.error);
          }
        }
        notified[next_notify] = now;
        ++next_notify;
        progress = true;
      } else if (absl::Now() - fill_started[next_notify] > options_.gpu_timeout) {
        failure = absl::DeadlineExceededError(
            absl::StrCat("bucket ", next_notify, " of version ", version, " not filled within ",
                         HumanDuration(options_.gpu_timeout), " (GPU copies or NCCL stalled)"));
        break;
      }
    }
    if (progress) continue;
    // Nothing to do now: GPU work in flight is polled often; acks and detaches wake us up.
    const uint64_t seen = events_;
    auto changed = [&]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || events_ != seen; };
    mu_.AwaitWithTimeout(absl::Condition(&changed),
                         next_notify < next_fill ? absl::Microseconds(20) : absl::Milliseconds(50));
  }
  // VersionDone to the workers still going, then wait for their VersionLoaded.
  const absl::Time finish_start = absl::Now();
  if (failure.ok()) {
    for (Participant& p : participants) {
      if (!p.active()) continue;
      v1::DaemonMessage m;
      m.mutable_done()->set_version(version);
      p.done_sent = true;
      p.done_sent_at = absl::Now();
      if (!p.entry->channel->Send(std::move(m))) {
        p.error = "its stream closed mid-update";
        p.reason = "stream_closed";
        Forget(*p.entry, p.error);
      }
    }
    auto finished = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (stopping_) return true;
      for (const Participant& p : participants) {
        if (p.active() && !p.loaded) return false;
      }
      return true;
    };
    while (!finished()) {
      mu_.AwaitWithTimeout(absl::Condition(&finished), absl::Milliseconds(100));
      expire();
    }
    if (stopping_) {
      failure = absl::UnavailableError(
          absl::StrCat("update to version ", version, " cancelled: ", stop_reason_));
    }
  }
  if (next_notify < next_fill || !failure.ok()) {
    // Slots may still be written by GPU work of this update: let it end before they are reused.
    mu_.Unlock();
    absl::Status drained = filler_->Drain(absl::Now() + options_.gpu_timeout);
    mu_.Lock();
    if (!drained.ok())
      spdlog::error("update to version {}: {}", version, std::string(drained.message()));
  }
  participants_ = nullptr;
  updating_ = 0;

  const absl::Time end = absl::Now();
  response.set_seconds(absl::ToDoubleSeconds(end - started));
  response.set_bytes(plan->total_tensor_bytes);
  response.set_buckets(n);
  response.set_wait_slot_seconds(absl::ToDoubleSeconds(wait_slot));
  response.set_fill_seconds(absl::ToDoubleSeconds(fill));
  response.set_load_seconds(absl::ToDoubleSeconds(load));
  response.set_finish_seconds(absl::ToDoubleSeconds(end - finish_start));
  std::vector<std::string> failed;
  bool timed_out = false;
  for (const Participant& p : participants) {
    v1::WorkerResult* r = response.add_workers();
    r->set_pid(p.entry->identity.pid);
    r->set_gpu_uuid(p.entry->identity.gpu_uuid);
    r->set_engine(p.entry->identity.engine);
    r->set_ok(p.active() && p.loaded);
    r->set_error(p.error);
    r->set_tensors(p.tensors);
    r->set_bytes(p.bytes);
    if (!r->ok() && r->error().empty()) r->set_error("did not finish");
    WorkerEntry& e = *p.entry;
    e.last_update_version = version;
    e.last_update_ok = r->ok();
    e.last_update_error = r->error();
    if (r->ok()) {
      e.mixed_version = 0;
    } else if (p.buckets_sent > 0) {
      e.mixed_version = version;  // it was sent part of the version: it may have loaded some
    }
    if (!r->ok()) {
      failed.push_back(absl::StrCat(p.entry->Describe(), ": ", r->error(),
                                    p.buckets_sent > 0 ? " (mixed weights)" : ""));
      timed_out = timed_out || p.timed_out;
      ++counters_.worker_failures[p.reason];
    }
  }
  if (!failure.ok()) {
    spdlog::error("update to version {} failed: {}", version, std::string(failure.message()));
    FinishOutcome(failure, response);
    return failure;
  }
  if (!failed.empty()) {
    const std::string message =
        absl::StrCat("update to version ", version, ": ", failed.size(), " of ",
                     participants.size(), " workers failed (", absl::StrJoin(failed, "; "), "); ",
                     participants.size() - failed.size(), " loaded it");
    spdlog::error("{}", message);
    absl::Status s = timed_out ? absl::DeadlineExceededError(message) : absl::AbortedError(message);
    FinishOutcome(s, response);
    return s;
  }
  FinishOutcome(response, response);
  spdlog::info(
      "update to version {}: {} to {} workers in {} ({:.2f} GB/s)", version,
      FormatBytes(plan->total_tensor_bytes), participants.size(), HumanDuration(end - started),
      plan->total_tensor_bytes / 1e9 / std::max(1e-9, absl::ToDoubleSeconds(end - started)));
  return response;
}

void UpdateEngine::FinishOutcome(const absl::StatusOr<v1::UpdateResponse>& result,
                                 const v1::UpdateResponse& report) {
  if (!last_outcome_.has_value()) return;
  v1::UpdateOutcome& o = *last_outcome_;
  o.set_state(result.ok() ? "succeeded" : "failed");
  o.set_ended_unix_ms(absl::ToUnixMillis(absl::Now()));
  v1::UpdateProgress* progress = o.mutable_progress();
  progress->set_workers_done(0);
  progress->set_workers_failed(0);
  for (const v1::WorkerResult& w : report.workers()) {
    if (!w.ok()) {
      progress->set_workers_failed(progress->workers_failed() + 1);
    } else if (!w.skipped()) {
      progress->set_workers_done(progress->workers_done() + 1);
    }
  }
  progress->set_elapsed_seconds(static_cast<double>(o.ended_unix_ms() - o.started_unix_ms()) /
                                1000.0);
  if (!result.ok()) {
    o.set_code(absl::StatusCodeToString(result.status().code()));
    o.set_error(std::string(result.status().message()));
  }
  *o.mutable_result() = report;
  outcomes_[o.version()] = o;
  last_result_ = result;
  ++state_events_;
  // Metrics.
  (result.ok() ? counters_.succeeded : counters_.failed) += 1;
  counters_.bytes += report.bytes();
  counters_.wait_slot_seconds += report.wait_slot_seconds();
  counters_.fill_seconds += report.fill_seconds();
  counters_.load_seconds += report.load_seconds();
  counters_.finish_seconds += report.finish_seconds();
  const double seconds = static_cast<double>(o.ended_unix_ms() - o.started_unix_ms()) / 1000.0;
  const std::vector<double>& bounds = UpdateSecondsBounds();
  if (counters_.seconds_buckets.empty()) counters_.seconds_buckets.assign(bounds.size() + 1, 0);
  size_t b = 0;
  while (b < bounds.size() && seconds > bounds[b]) ++b;
  ++counters_.seconds_buckets[b];
  counters_.seconds_sum += seconds;
  ++finished_serial_;
  ++events_;
}

absl::StatusOr<v1::UpdateResponse> UpdateEngine::Update(const v1::UpdateRequest& request,
                                                        absl::Time deadline,
                                                        const std::string& trigger,
                                                        const std::function<bool()>& cancelled) {
  if (request.previous()) {
    if (request.version() != 0 || request.worker_pids_size() > 0 || request.force()) {
      return absl::InvalidArgumentError(
          "an update with previous resends each worker's own last version: it takes no version, "
          "worker pids or force");
    }
    return ResendPrevious(deadline);
  }
  // Resolved before taking the engine's lock (the store is never called under it).
  const uint64_t wanted =
      request.version() != 0 ? request.version() : store_->GetUsage().latest_committed;
  {
    absl::MutexLock lock(&mu_);
    // Join only an update that goes to every attached worker unforced, as this request would:
    // one restricted to some workers (update_on_attach, previous, worker_pids) or forced would
    // answer for others.
    if (updating_ != 0 && running_unrestricted_ && !request.force() &&
        request.worker_pids().empty() && wanted == updating_) {
      {
        // The same version is being sent: wait for that update and answer with its outcome.
        const uint64_t joined = started_serial_;
        spdlog::info("update to version {} requested while it runs: joining it", wanted);
        auto ended = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || finished_serial_ >= joined;
        };
        // In slices, so that a caller that went away stops waiting.
        for (;;) {
          const absl::Time slice = std::min(deadline, absl::Now() + absl::Seconds(1));
          if (mu_.AwaitWithDeadline(absl::Condition(&ended), slice)) break;
          if (cancelled && cancelled()) return absl::CancelledError("the caller went away");
          if (absl::Now() >= deadline) {
            return absl::DeadlineExceededError(absl::StrCat("joined the running update to version ",
                                                            wanted, "; it did not end in time"));
          }
        }
        if (finished_serial_ == joined) return last_result_;
        if (stopping_) return absl::UnavailableError(stop_reason_);
        return absl::AbortedError(
            absl::StrCat("joined the update to version ", wanted,
                         "; another update ended after it, see ckptctl status"));
      }
    }
  }
  auto result = RunUpdate(request, trigger);
  // Only after an update that ran and failed for workers (not a refused request).
  const bool worker_failure =
      absl::IsAborted(result.status()) || absl::IsDeadlineExceeded(result.status());
  if (worker_failure && options_.resend_previous_on_failure && trigger != "previous") {
    bool mixed = false;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, e] : workers_) mixed = mixed || e->mixed_version != 0;
    }
    if (mixed) {
      auto recovered = ResendPrevious(deadline);
      if (recovered.ok()) {
        spdlog::warn(
            "on_update_failure=previous: workers with mixed weights got their last version "
            "again");
      } else {
        spdlog::error("on_update_failure=previous: {}", std::string(recovered.status().message()));
      }
    }
  }
  return result;
}

absl::StatusOr<v1::UpdateResponse> UpdateEngine::ResendPrevious(absl::Time deadline) {
  std::map<uint64_t, std::vector<int>> groups;  // last complete version -> pids
  std::vector<std::string> lost;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : workers_) {
      if (e->mixed_version == 0) continue;
      if (e->loaded_version == 0) {
        lost.push_back(absl::StrCat(e->Describe(), " (no complete version loaded before)"));
      } else {
        groups[e->loaded_version].push_back(e->identity.pid);
      }
    }
  }
  if (groups.empty() && lost.empty()) {
    return absl::FailedPreconditionError("no attached worker has mixed weights");
  }
  v1::UpdateResponse all;
  std::vector<std::string> problems = lost;
  for (const auto& [version, pids] : groups) {
    v1::UpdateRequest request;
    request.set_version(version);
    request.set_force(true);
    for (int pid : pids) request.add_worker_pids(pid);
    spdlog::info("resending version {} to {} worker(s) with mixed weights", version, pids.size());
    auto r = Update(request, deadline, "previous");
    if (r.ok()) {
      all.set_version(version);
      for (const auto& w : r->workers()) *all.add_workers() = w;
      all.set_bytes(all.bytes() + r->bytes());
      all.set_seconds(all.seconds() + r->seconds());
      all.set_buckets(all.buckets() + r->buckets());
    } else if (absl::IsNotFound(r.status())) {
      problems.push_back(absl::StrCat("version ", version, " (for ", pids.size(),
                                      " worker(s)) is no longer in the store: push it again; ",
                                      r.status().message()));
    } else {
      // RunUpdate's errors mostly begin with "update to version N: " already: say it once.
      const absl::string_view message = r.status().message();
      problems.push_back(absl::StartsWith(message, absl::StrCat("update to version ", version))
                             ? std::string(message)
                             : absl::StrCat("resending version ", version, ": ", message));
    }
  }
  if (!problems.empty()) {
    return absl::AbortedError(
        absl::StrCat("workers with mixed weights not restored: ", absl::StrJoin(problems, "; ")));
  }
  return all;
}

absl::StatusOr<v1::WaitLoadedResponse> UpdateEngine::WaitLoaded(
    uint64_t version, absl::Time deadline, const std::function<bool()>& cancelled) {
  const uint64_t latest = store_->GetUsage().latest_committed;
  if (version == 0) {
    version = latest;
    if (version == 0) return absl::FailedPreconditionError("no version is committed yet");
  } else if (version > latest && absl::IsNotFound(store_->Get(version).status())) {
    // Neither committed nor staging: no update of it can come (a typo, another daemon's id).
    return absl::NotFoundError(absl::StrCat(
        "version ", version, " was never committed here (the newest is ", latest, ")"));
  }
  v1::WaitLoadedResponse response;
  response.set_version(version);
  absl::MutexLock lock(&mu_);
  if (waiters_ >= kMaxWaiters) {
    return absl::ResourceExhaustedError(absl::StrCat(
        waiters_, " WaitLoaded calls are waiting already, the most the daemon serves at once"));
  }
  ++waiters_;
  struct Leave {
    int* n;
    ~Leave() { --*n; }
  } leave{&waiters_};
  for (;;) {
    if (stopping_) return absl::UnavailableError(stop_reason_);
    response.clear_workers();
    std::vector<std::string> lacking;
    for (const auto& [id, e] : workers_) {
      *response.add_workers() = StatusOf(*e);
      if (e->loaded_version < version || e->mixed_version != 0) {
        lacking.push_back(absl::StrCat(
            e->Describe(), " has ",
            e->loaded_version == 0 ? std::string("none")
                                   : absl::StrCat("version ", e->loaded_version),
            e->mixed_version != 0 ? absl::StrCat(" mixed with ", e->mixed_version) : ""));
      }
    }
    auto outcome = outcomes_.find(version);
    if (outcome != outcomes_.end()) {
      *response.mutable_update() = outcome->second;
      // A worker this version's last update failed for and that is gone from the registry (timed
      // out, detached) may still run with mixed weights: the version is not loaded everywhere.
      if (outcome->second.state() == "failed") {
        for (const v1::WorkerResult& r : outcome->second.result().workers()) {
          if (r.ok()) continue;
          bool attached = false;
          for (const auto& [id, e] : workers_) attached = attached || e->identity.pid == r.pid();
          if (!attached) {
            lacking.push_back(absl::StrCat("worker pid ", r.pid(), " failed (", r.error(),
                                           ") and is no longer attached"));
          }
        }
      }
    }
    if (!workers_.empty() && lacking.empty()) {
      response.set_loaded(true);
      response.set_summary(absl::StrCat("version ", version, " loaded by ", workers_.size(),
                                        workers_.size() == 1 ? " worker" : " workers"));
      return response;
    }
    const bool pending = updating_ == version || auto_pending_ == version;
    if (!pending && outcome != outcomes_.end() && outcome->second.state() == "failed") {
      response.set_loaded(false);
      // The update's own error names the version already ("update to version 7: ..."): say it once.
      const absl::string_view error = absl::StripPrefix(
          outcome->second.error(), absl::StrCat("update to version ", version, ": "));
      response.set_summary(absl::StrCat("update to version ", version, " failed: ", error,
                                        lacking.empty() ? "" : "; now ",
                                        absl::StrJoin(lacking, "; ")));
      return response;
    }
    // Woken by changes of the workers' state (attach, detach, loaded, an update's start or end),
    // not by every ack; in slices, so that a caller that went away stops waiting.
    const uint64_t seen = state_events_;
    auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || state_events_ != seen;
    };
    const absl::Time slice = std::min(deadline, absl::Now() + absl::Seconds(1));
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), slice)) {
      if (cancelled && cancelled()) return absl::CancelledError("the caller went away");
      if (absl::Now() < deadline) continue;
      return absl::DeadlineExceededError(absl::StrCat(
          "version ", version, " is not loaded by every worker yet: ",
          workers_.empty() ? std::string("no worker is attached") : absl::StrJoin(lacking, "; "),
          updating_ != 0 ? absl::StrCat(" (an update to version ", updating_, " runs)") : ""));
    }
  }
}

const std::vector<double>& UpdateEngine::UpdateSecondsBounds() {
  static const std::vector<double> bounds = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
  return bounds;
}

UpdateEngine::Counters UpdateEngine::GetCounters() const {
  absl::MutexLock lock(&mu_);
  Counters c = counters_;
  if (c.seconds_buckets.empty()) c.seconds_buckets.assign(UpdateSecondsBounds().size() + 1, 0);
  return c;
}

std::optional<v1::UpdateOutcome> UpdateEngine::LastUpdate() const {
  absl::MutexLock lock(&mu_);
  std::optional<v1::UpdateOutcome> out = last_outcome_;
  if (out.has_value() && out->state() == "running" && participants_ != nullptr) {
    // The workers' part of the progress is counted here, when asked, not on every ack.
    v1::UpdateProgress* progress = out->mutable_progress();
    for (const Participant& p : *participants_) {
      if (!p.active()) {
        progress->set_workers_failed(progress->workers_failed() + 1);
      } else if (p.loaded) {
        progress->set_workers_done(progress->workers_done() + 1);
      }
    }
    progress->set_elapsed_seconds(
        absl::ToDoubleSeconds(absl::Now() - absl::FromUnixMillis(out->started_unix_ms())));
  }
  return out;
}

void UpdateEngine::RequestAutoUpdate(uint64_t version) {
  absl::MutexLock lock(&mu_);
  if (version <= auto_highest_) {
    // A push that began before a newer one committed after it: workers never go back to it.
    spdlog::info("auto_update: version {} committed after the newer version {}; not sent", version,
                 auto_highest_);
    return;
  }
  auto_highest_ = version;
  auto_pending_ = std::max(auto_pending_, version);
}

void UpdateEngine::AutoUpdateLoop() {
  for (;;) {
    uint64_t version = 0;
    std::set<int> attached;
    bool any_workers = false;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || ((auto_pending_ != 0 || !attach_pending_.empty()) && updating_ == 0);
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      attached = std::exchange(attach_pending_, {});
      version = std::exchange(auto_pending_, 0);
      any_workers = !workers_.empty();
    }
    v1::UpdateRequest request;
    std::string trigger;
    if (version == 0) {
      // update_on_attach: the newest committed version to the workers that just attached.
      if (store_->GetUsage().latest_committed == 0) continue;  // nothing to send yet
      {
        absl::MutexLock lock(&mu_);
        for (const auto& [id, e] : workers_) {
          if (attached.count(e->identity.pid) > 0) request.add_worker_pids(e->identity.pid);
        }
      }
      if (request.worker_pids().empty()) continue;  // they left already
      trigger = "attach";
    } else {
      if (!any_workers) {
        spdlog::info("auto_update: version {} committed, no worker attached", version);
        continue;
      }
      request.set_version(version);
      trigger = "auto_update";
    }
    auto result = Update(request, absl::InfiniteFuture(), trigger);
    if (result.ok()) continue;
    bool queued_again = false;
    if (absl::IsFailedPrecondition(result.status())) {
      // Another update took the slot between the wake-up and the start: go after it.
      absl::MutexLock lock(&mu_);
      if (updating_ != 0 && !stopping_) {
        if (version != 0) {
          auto_pending_ = std::max(auto_pending_, version);
        } else {
          attach_pending_.insert(request.worker_pids().begin(), request.worker_pids().end());
        }
        queued_again = true;
      }
    }
    if (queued_again) {
      spdlog::info("{}: another update runs; queued again after it", trigger);
    } else {
      spdlog::warn("{}{}: {}", trigger,
                   version != 0 ? absl::StrCat(" to version ", version) : std::string(),
                   std::string(result.status().message()));
    }
  }
}

void UpdateEngine::Stop(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  stopping_ = true;
  stop_reason_ = reason;
  for (const auto& [id, entry] : workers_) entry->channel->Close(reason);
}

std::vector<v1::WorkerStatus> UpdateEngine::Workers() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::WorkerStatus> out;
  for (const auto& [id, e] : workers_) out.push_back(StatusOf(*e));
  return out;
}

v1::WorkerStatus UpdateEngine::StatusOf(const WorkerEntry& e) const {
  v1::WorkerStatus w;
  w.set_pid(e.identity.pid);
  w.set_uid(e.identity.uid);
  w.set_engine(e.identity.engine);
  w.set_gpu_uuid(e.identity.gpu_uuid);
  w.set_loaded_version(e.loaded_version);
  w.set_attached_unix_ms(absl::ToUnixMillis(e.attached));
  w.set_tensor_filter(static_cast<uint32_t>(e.wanted.size()));
  w.set_mixed_version(e.mixed_version);
  w.set_last_update_version(e.last_update_version);
  w.set_last_update_ok(e.last_update_ok);
  w.set_last_update_error(e.last_update_error);
  return w;
}

uint64_t UpdateEngine::updating_version() const {
  absl::MutexLock lock(&mu_);
  return updating_;
}

}  // namespace ckpt::daemon
