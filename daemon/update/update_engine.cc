#include "daemon/update/update_engine.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <set>
#include <system_error>
#include <unordered_set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/dtype.h"
#include "common/message_text.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "daemon/update/update_plan.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

// The filler of an overlapped update (a version still being pushed, PushFeed): a bucket goes out
// once every tensor in it is in and verified. Buckets joined by a split tensor (a piece continues
// from one bucket into the next) form a group that goes out whole, back to back and in order
// (workers put a split tensor together from consecutive pieces); of the groups ready, the lowest
// goes first. The fills themselves are the local store's (LocalFiller). A push that fails, whose
// version is aborted (Trainer.Abort, Drop, staging_timeout), or that brings nothing new for
// `stall` while the update waits for it, fails the update; the last sets `*stalled`.
class StagingFiller final : public BucketFiller {
 public:
  StagingFiller(TransferBackend* transfer, const uint8_t* arena, const UpdatePlan& plan,
                std::shared_ptr<PushFeed> feed, std::shared_ptr<VersionStore::ReadLease> lease,
                absl::Duration stall, std::shared_ptr<std::atomic<bool>> stalled)
      : local_(transfer, arena),
        feed_(std::move(feed)),
        lease_(std::move(lease)),
        stall_(stall),
        stalled_(std::move(stalled)),
        groups_of_(feed_->size()) {
    for (size_t b = 0; b < plan.buckets.size(); ++b) {
      const std::vector<TensorPlacement>& placed = plan.buckets[b].tensors;
      const bool continues = b > 0 && !placed.empty() && placed.front().tensor_offset > 0;
      if (!continues) groups_.push_back({static_cast<int>(b), static_cast<int>(b), 0});
      const int g = static_cast<int>(groups_.size()) - 1;
      groups_.back().last = static_cast<int>(b);
      for (const TensorPlacement& t : placed) {
        const size_t i = static_cast<size_t>(t.tensor);
        if (i >= groups_of_.size()) continue;  // not a tensor of the version: never sent
        std::vector<int>& of = groups_of_[i];
        if (!of.empty() && of.back() == g) continue;
        of.push_back(g);
        ++groups_[static_cast<size_t>(g)].missing;
      }
    }
    for (size_t g = 0; g < groups_.size(); ++g) {
      if (groups_[g].missing == 0) ready_.insert(static_cast<int>(g));
    }
  }

  absl::Status Fill(const Bucket& bucket, int k, int slot) override {
    return local_.Fill(bucket, k, slot);
  }
  absl::StatusOr<bool> Filled(int slot) override { return local_.Filled(slot); }
  absl::Status Drain(absl::Time deadline) override { return local_.Drain(deadline); }

  absl::StatusOr<int> NextBucket(int) override {
    RETURN_IF_ERROR(Absorb());
    if (next_in_group_ >= 0) {
      const int b = next_in_group_;
      next_in_group_ = b < groups_[static_cast<size_t>(current_)].last ? b + 1 : -1;
      return b;
    }
    if (ready_.empty()) {
      RETURN_IF_ERROR(Stalled());
      return -1;
    }
    current_ = *ready_.begin();
    ready_.erase(ready_.begin());
    const Group& g = groups_[static_cast<size_t>(current_)];
    next_in_group_ = g.first < g.last ? g.first + 1 : -1;
    return g.first;
  }
  // Whether a bucket could go out now (NextBucket takes it); an error as NextBucket's.
  absl::StatusOr<bool> AnyReady() {
    RETURN_IF_ERROR(Absorb());
    return !ready_.empty();
  }
  absl::StatusOr<bool> Committed() override {
    ASSIGN_OR_RETURN(bool committed, feed_->Committed());
    if (committed) return true;
    RETURN_IF_ERROR(Absorb());
    RETURN_IF_ERROR(Stalled());
    return false;
  }
  uint64_t Xxh3(int tensor) const override {
    return tensor < 0 ? 0 : feed_->Xxh3(static_cast<size_t>(tensor));
  }

 private:
  struct Group {
    int first = 0, last = 0;  // buckets of the plan
    int missing = 0;          // its tensors not ready yet
  };
  // Takes in the tensors that became ready since the last call; the push's failure, or its
  // version's abort.
  absl::Status Absorb() {
    std::vector<size_t> newly;
    RETURN_IF_ERROR(feed_->ReadySince(&cursor_, &newly));
    for (size_t i : newly) {
      if (i >= groups_of_.size()) continue;
      for (int g : groups_of_[i]) {
        if (--groups_[static_cast<size_t>(g)].missing == 0) ready_.insert(g);
      }
    }
    if (lease_->dropped() && !feed_->Ended()) {
      return absl::AbortedError(absl::StrCat("version ", feed_->version(),
                                             " was aborted (Trainer.Abort, Drop, or no activity "
                                             "for staging_timeout)"));
    }
    return absl::OkStatus();
  }
  // DEADLINE_EXCEEDED once the feed has not changed for stall_ while the update waits on it.
  absl::Status Stalled() {
    const uint64_t changes = feed_->changes();
    const absl::Time now = absl::Now();
    if (changes != seen_changes_ || seen_at_ == absl::InfinitePast()) {
      seen_changes_ = changes;
      seen_at_ = now;
      return absl::OkStatus();
    }
    if (now - seen_at_ < stall_) return absl::OkStatus();
    stalled_->store(true);
    return absl::DeadlineExceededError(absl::StrCat(
        "its push brought nothing new for ", absl::FormatDuration(stall_),
        " (ack_timeout) while the update waited for it; the version is sent again once committed"));
  }

  LocalFiller local_;
  const std::shared_ptr<PushFeed> feed_;
  const std::shared_ptr<VersionStore::ReadLease> lease_;
  const absl::Duration stall_;
  const std::shared_ptr<std::atomic<bool>> stalled_;
  std::vector<Group> groups_;
  std::vector<std::vector<int>> groups_of_;  // tensor -> the groups it lies in
  std::set<int> ready_;                      // groups ready, not sent yet
  size_t cursor_ = 0;                        // into the feed's ready tensors
  int current_ = -1;                         // the group going out
  int next_in_group_ = -1;                   // its next bucket (-1: none left)
  uint64_t seen_changes_ = 0;                // the feed's changes when last looked at
  absl::Time seen_at_ = absl::InfinitePast();
};

}  // namespace

UpdateEngine::UpdateEngine(std::unique_ptr<TransferBackend> transfer, VersionStore* store,
                           Options options)
    : transfer_(std::move(transfer)), store_(store), options_(options) {}

absl::StatusOr<std::unique_ptr<UpdateEngine>> UpdateEngine::Create(
    BackendKind backend, const std::vector<gpu::GpuInfo>& gpus, VersionStore* store,
    Options options) {
  TransferBackend::Options slots;
  slots.slots_per_gpu = options.slots_per_gpu;
  slots.bucket_bytes = options.bucket_bytes;
  slots.gpu_timeout = options.gpu_timeout;
  auto transfer = TransferBackend::Create(backend, gpus, slots);
  if (!transfer.ok()) return Annotate(transfer.status(), "update engine");
  std::unique_ptr<UpdateEngine> e(new UpdateEngine(*std::move(transfer), store, options));
  e->auto_thread_ = std::thread([raw = e.get()] { raw->AutoUpdateLoop(); });
  return e;
}

UpdateEngine::~UpdateEngine() {
  Stop("ckpt-engined is shutting down");
  if (auto_thread_.joinable()) auto_thread_.join();
  if (join_thread_.joinable()) join_thread_.join();
  std::thread overlap;
  {
    absl::MutexLock lock(&mu_);
    overlap = std::move(overlap_thread_);
  }
  if (overlap.joinable()) overlap.join();
}

uint64_t UpdateEngine::AddWorker(WorkerIdentity identity, std::shared_ptr<WorkerChannel> channel) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<WorkerRecord> worker = registry_.Add(std::move(identity), std::move(channel));
  if (options_.update_on_attach) attach_pending_.insert(worker->identity.pid);
  if (stopping_) worker->channel->Close(stop_reason_);
  return worker->id;
}

void UpdateEngine::RemoveWorker(uint64_t id, const std::string& why) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<WorkerRecord> worker = registry_.Remove(id);
  if (worker == nullptr) return;  // forgotten already (the daemon gave up on it)
  spdlog::info("{} detached: {}", worker->Describe(), why);
  if (running_ != nullptr) running_->OnDetached(id, why);
}

void UpdateEngine::OnWorkerMessage(uint64_t id, const v1::WorkerMessage& message) {
  absl::MutexLock lock(&mu_);
  if (running_ == nullptr) return;  // a late message of a finished update
  if (message.has_ack()) {
    running_->OnAck(id, message.ack());
  } else if (message.has_loaded()) {
    running_->OnLoaded(id, message.loaded());
  } else if (message.has_paused()) {
    running_->OnPaused(id, message.paused());
  }
}

absl::StatusOr<v1::UpdateResponse> UpdateEngine::RunUpdate(const v1::UpdateRequest& request,
                                                           const std::string& trigger) {
  const absl::Time started = absl::Now();
  // A request naming workers (worker_pids; update_on_attach and previous too) is for this
  // member's own workers: it runs here alone. Any other goes to every member that is up.
  std::vector<v1::ClusterMember> others;
  bool cuda_alone = false;  // other members are up, but this backend updates alone
  Cluster* const cluster = cluster_.load();
  if (cluster != nullptr && request.worker_pids().empty()) {
    for (v1::ClusterMember& m : cluster->Members()) {
      if (m.state() == "up") others.push_back(std::move(m));
    }
    if (!others.empty() && transfer_->kind() != BackendKind::kHost) {
      // Cluster updates on the cuda backend (NCCL ranks per GPU of every member) are not built:
      // this member's own workers are updated, as when it is alone, and the log says so.
      spdlog::warn(
          "update to version {}: {} other member(s) are up, but cluster updates with the {} "
          "backend are not built yet: only this member's workers are updated (ask each member)",
          request.version(), others.size(), std::string(BackendName(transfer_->kind())));
      others.clear();
      cuda_alone = true;
    }
  }
  auto lease = store_->Lease(request.version());
  if (!lease.ok()) {
    if (absl::IsNotFound(lease.status()) && request.version() != 0) {
      // Versions are pushed whole to one member, which coordinates their updates.
      for (const v1::ClusterMember& m : others) {
        if (std::find(m.versions().begin(), m.versions().end(), request.version()) !=
            m.versions().end()) {
          return absl::NotFoundError(absl::StrCat(
              lease.status().message(), "; member '", m.node_name(), "' holds version ",
              request.version(), ": ask it (the member holding a version coordinates its update)"));
        }
      }
    }
    return lease.status();
  }
  if (!(*lease)->complete() && others.empty()) {
    if (cuda_alone) {
      return absl::FailedPreconditionError(absl::StrCat(
          "version ", (*lease)->version(),
          " is pushed in parts and this daemon holds some of them: "
          "composing it from other members' parts needs cluster updates, which are not built for "
          "the ",
          BackendName(transfer_->kind()), " backend yet (push every part to each member)"));
    }
    // Pushed in parts, not every one here: the others must be held by members that are up.
    std::vector<uint32_t> missing;
    const std::vector<uint32_t>& held = (*lease)->parts();
    for (uint32_t i = 0; i < (*lease)->part_count(); ++i) {
      if (!std::binary_search(held.begin(), held.end(), i)) missing.push_back(i);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("version ", (*lease)->version(), " is pushed in ", (*lease)->part_count(),
                     " parts; this daemon holds ", held.size() == 1 ? "part " : "parts ",
                     absl::StrJoin(held, ", "), " and no member that is up holds the others (",
                     missing.size() == 1 ? "part " : "parts ",
                     absl::StrJoin(missing.begin(),
                                   missing.begin() + std::min<size_t>(missing.size(), 16), ", "),
                     missing.size() > 16 ? ", ..." : "",
                     "): push them (to any member) before asking for the update"));
  }
  ASSIGN_OR_RETURN(Fp8Choice fp8, Fp8For(request));
  if (!others.empty()) {
    if (fp8.rules.has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "update to version ", (*lease)->version(), ": FP8 conversion in cluster updates (",
          others.size() + 1,
          " members up) is not built yet (docs/conversion.md); ask without conversion, or for "
          "this member's workers alone (worker pids)"));
    }
    return RunClusterUpdate(request, trigger, *std::move(lease), std::move(others));
  }
  Prepared p;
  p.version = (*lease)->version();
  p.fp8_rules = fp8.rules;
  std::optional<Conversion> conversion;
  if (fp8.rules.has_value()) {
    auto converted = ConvertManifest((*lease)->manifest(), *fp8.rules);
    if (!converted.ok()) {
      return Annotate(converted.status(), absl::StrCat("update to version ", p.version));
    }
    if (converted->converted > 0) {
      conversion = *std::move(converted);
    } else if (fp8.asked) {
      return absl::FailedPreconditionError(
          absl::StrCat("update to version ", p.version,
                       ": FP8 conversion asked for, but no 2-D bfloat16 "
                       "tensor of it matches the patterns (",
                       absl::StrJoin(fp8.rules->include, ", "), ")"));
    } else {
      spdlog::warn(
          "update to version {}: fp8_by_default, but no 2-D bfloat16 tensor matches "
          "fp8_weights: sent as it is",
          p.version);
    }
  }
  if (conversion.has_value()) {
    const VersionStore::ReadLease& held = **lease;
    auto planned = PlanUpdate(
        ConvertedPlanTensors(
            *conversion, [&held](int i) { return held.arena_offset(i); }, options_.bucket_bytes),
        options_.bucket_bytes, transfer_->slot_set_count());
    if (!planned.ok()) {
      return Annotate(planned.status(), absl::StrCat("update to version ", p.version));
    }
    p.plan = *std::move(planned);
    p.fp8 = true;
    p.fp8_scale_bytes = conversion->scale_bytes;
    p.response.set_fp8_tensors(conversion->converted);
    p.response.set_fp8_source_bytes(conversion->source_bytes);
    p.response.set_fp8_bytes(conversion->converted_bytes);
    spdlog::info(
        "update to version {}: {} weights as FP8 ({} in the store, {} sent); {} more matched "
        "the patterns but are not 2-D bfloat16, sent as they are",
        p.version, conversion->converted, FormatBytes(conversion->source_bytes),
        FormatBytes(conversion->converted_bytes), conversion->skipped);
    p.manifest = std::make_shared<const v1::Manifest>(std::move(conversion->manifest));
  } else {
    ASSIGN_OR_RETURN(p.plan,
                     PlanVersion(**lease, options_.bucket_bytes, transfer_->slot_set_count()));
    p.manifest = std::shared_ptr<const v1::Manifest>(*lease, &(*lease)->manifest());
  }
  p.filler = std::make_unique<LocalFiller>(transfer_.get(), store_->arena().data());
  p.lease = *std::move(lease);
  p.response.set_version(p.version);
  p.unrestricted = request.worker_pids().empty() && !request.force();
  p.consistent = request.consistent();
  absl::MutexLock lock(&mu_);
  // Claim the one update slot, pick the participants.
  RETURN_IF_ERROR(SlotFreeLocked());
  ASSIGN_OR_RETURN(p.participants,
                   UpdateRun::Select(registry_, request, p.version, *p.manifest, &p.response));
  if (p.participants.empty()) return p.response;  // every one holds it already
  if (p.fp8) {
    // The slot is claimed by no one else (one update at a time): its buffers are this update's.
    std::vector<std::string> names;
    names.reserve(static_cast<size_t>(p.manifest->tensors_size()));
    for (const v1::TensorSpec& t : p.manifest->tensors()) names.push_back(t.name());
    RETURN_IF_ERROR(transfer_->BeginConversion(p.fp8_scale_bytes, std::move(names)));
  }
  return RunLocked(std::move(p), trigger, started);
}

absl::StatusOr<UpdateEngine::Fp8Choice> UpdateEngine::Fp8For(
    const v1::UpdateRequest& request) const {
  constexpr int kMaxPatterns = 256;
  Fp8Choice choice;
  if (request.fp8_weights_size() > kMaxPatterns || request.fp8_exclude_size() > kMaxPatterns) {
    return absl::InvalidArgumentError(
        absl::StrCat("an update with more than ", kMaxPatterns, " FP8 name patterns"));
  }
  if (!request.fp8_weights().empty() || !request.fp8_exclude().empty()) {
    if (request.convert() == v1::CONVERSION_NONE) {
      return absl::InvalidArgumentError("an update with FP8 name patterns and conversion none");
    }
    if (request.fp8_weights().empty()) {
      return absl::InvalidArgumentError("an update with fp8_exclude but no fp8_weights");
    }
    Fp8Rules rules;
    rules.include.assign(request.fp8_weights().begin(), request.fp8_weights().end());
    rules.exclude.assign(request.fp8_exclude().begin(), request.fp8_exclude().end());
    choice.rules = std::move(rules);
    choice.asked = true;
    return choice;
  }
  switch (request.convert()) {
    case v1::CONVERSION_NONE:
      return choice;
    case v1::CONVERSION_FP8:
      if (options_.fp8.empty()) {
        return absl::FailedPreconditionError(
            "FP8 conversion asked for, but fp8_weights is not configured (name the tensors to "
            "convert in the config, or with the update: ckptctl update --fp8-weights PATTERN)");
      }
      choice.rules = options_.fp8;
      choice.asked = true;
      return choice;
    default:
      if (options_.fp8_by_default && !options_.fp8.empty()) choice.rules = options_.fp8;
      return choice;
  }
}

absl::Status UpdateEngine::SlotFreeLocked() const {
  if (stopping_) return absl::UnavailableError(stop_reason_);
  if (updating_ != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "an update to version ", updating_,
        " is running; one update runs at a time: retry when it ends (ckptctl status)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::UpdateResponse> UpdateEngine::RunLocked(Prepared p, const std::string& trigger,
                                                           absl::Time started, bool keep_slot) {
  const uint64_t version = p.version;
  if (stopping_) {
    if (!keep_slot) updating_ = 0;
    return absl::UnavailableError(stop_reason_);
  }
  v1::UpdateResponse response = std::move(p.response);
  const size_t count = p.participants.size();
  UpdateRun::Options run_options;
  run_options.slots = options_.slots_per_gpu;
  run_options.ack_timeout = options_.ack_timeout;
  run_options.gpu_timeout = options_.gpu_timeout;
  run_options.every_bucket = p.every_bucket;
  run_options.consistent = p.consistent;
  running_ = std::make_unique<UpdateRun>(mu_, version, std::move(p.manifest), std::move(p.lease),
                                         std::move(p.plan), std::move(p.participants),
                                         p.filler.get(), &registry_, run_options);
  updating_ = version;
  ++started_serial_;
  v1::UpdateOutcome running;
  running.set_version(version);
  running.set_state("running");
  running.set_trigger(trigger);
  running.set_started_unix_ms(absl::ToUnixMillis(started));
  v1::UpdateProgress* progress = running.mutable_progress();
  progress->set_buckets_total(static_cast<uint32_t>(running_->plan().buckets.size()));
  progress->set_bytes_total(running_->plan().total_tensor_bytes);
  progress->set_workers_total(static_cast<uint32_t>(count));
  last_outcome_ = running;
  outcomes_[version] = running;
  while (outcomes_.size() > 32) outcomes_.erase(outcomes_.begin());
  running_unrestricted_ = p.unrestricted;
  running_consistent_ = p.consistent;
  running_fp8_ = p.fp8;
  running_fp8_rules_ = p.fp8_rules;
  registry_.NoteChange();
  spdlog::info("update to version {}: {} buckets of up to {}, {} workers", version,
               running_->plan().buckets.size(), FormatBytes(options_.bucket_bytes), count);

  UpdateRun::Result result = running_->Execute(&response, &counters_.worker_failures);
  // The buckets and bytes it released stay in the outcome; the run goes before the outcome is
  // recorded, and its lease with it.
  if (last_outcome_.has_value()) running_->Progress(last_outcome_->mutable_progress());
  const uint64_t total_bytes = running_->plan().total_tensor_bytes;
  running_.reset();
  p.filler.reset();
  if (!keep_slot) updating_ = 0;
  running_unrestricted_ = false;
  running_consistent_ = false;
  running_fp8_ = false;
  running_fp8_rules_.reset();
  // Execute's response seconds run from its own start; the whole update from the request.
  response.set_seconds(absl::ToDoubleSeconds(absl::Now() - started));
  if (p.paused != nullptr) {
    *p.paused = std::move(result.paused);
  } else if (!result.paused.empty()) {
    const bool loaded = result.failure.ok() && result.failed.empty();
    UpdateRun::Resume(result.paused, version, loaded,
                      loaded                ? std::string()
                      : result.failure.ok() ? absl::StrJoin(result.failed, "; ")
                                            : std::string(result.failure.message()));
    spdlog::info("update to version {}: {} paused workers resume ({})", version,
                 result.paused.size(), loaded ? "loaded" : "the update failed");
  }

  if (!result.failure.ok()) {
    spdlog::error("update to version {} failed: {}", version,
                  std::string(result.failure.message()));
    FinishOutcome(result.failure, response);
    return result.failure;
  }
  if (!result.failed.empty()) {
    const std::string message =
        absl::StrCat("update to version ", version, ": ", result.failed.size(), " of ", count,
                     " workers failed (", absl::StrJoin(result.failed, "; "), "); ",
                     count - result.failed.size(), " loaded it");
    spdlog::error("{}", message);
    absl::Status s =
        result.timed_out ? absl::DeadlineExceededError(message) : absl::AbortedError(message);
    FinishOutcome(s, response);
    return s;
  }
  FinishOutcome(response, response);
  const double seconds = response.seconds();
  spdlog::info("update to version {}: {} to {} workers in {} ({:.2f} GB/s)", version,
               FormatBytes(total_bytes), count, HumanDuration(absl::Seconds(seconds)),
               total_bytes / 1e9 / std::max(1e-9, seconds));
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
  registry_.NoteChange();
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
}

absl::StatusOr<v1::UpdateResponse> UpdateEngine::Update(const v1::UpdateRequest& request,
                                                        absl::Time deadline,
                                                        const std::string& trigger,
                                                        const std::function<bool()>& cancelled) {
  if (request.previous()) {
    if (request.version() != 0 || request.worker_pids_size() > 0 || request.force() ||
        request.consistent()) {
      return absl::InvalidArgumentError(
          "an update with previous resends each worker's own last version: it takes no version, "
          "worker pids, force or consistent");
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
    // answer for others. Its conversion too: the same FP8 rules, and a request that asked for FP8
    // itself only an update that converts (alone it would be refused); a malformed request runs
    // alone, and is refused there.
    auto fp8 = Fp8For(request);
    const bool same_conversion =
        fp8.ok() && fp8->rules == running_fp8_rules_ && (!fp8->asked || running_fp8_);
    if (updating_ != 0 && running_unrestricted_ && !request.force() &&
        request.worker_pids().empty() && wanted == updating_ &&
        (!request.consistent() || running_consistent_) && same_conversion) {
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
  if (worker_failure) RecoverMixed(result, trigger, deadline);
  return result;
}

void UpdateEngine::RecoverMixed(const absl::StatusOr<v1::UpdateResponse>& result,
                                const std::string& trigger, absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
  }
  if (!result.ok() && options_.resend_previous_on_failure && trigger != "previous") {
    bool mixed = false;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, e] : registry_.all()) mixed = mixed || e->mixed_version != 0;
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
}

absl::StatusOr<v1::UpdateResponse> UpdateEngine::ResendPrevious(absl::Time deadline) {
  std::map<uint64_t, std::vector<int>> groups;  // last complete version -> pids
  std::vector<std::string> lost;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : registry_.all()) {
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
    for (const auto& [id, e] : registry_.all()) {
      *response.add_workers() = e->Status();
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
          for (const auto& [id, e] : registry_.all())
            attached = attached || e->identity.pid == r.pid();
          if (!attached) {
            lacking.push_back(absl::StrCat("worker pid ", r.pid(), " failed (", r.error(),
                                           ") and is no longer attached"));
          }
        }
      }
    }
    if (!registry_.empty() && lacking.empty()) {
      response.set_loaded(true);
      response.set_summary(absl::StrCat("version ", version, " loaded by ", registry_.size(),
                                        registry_.size() == 1 ? " worker" : " workers"));
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
    const uint64_t seen = registry_.changes();
    auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || registry_.changes() != seen;
    };
    const absl::Time slice = std::min(deadline, absl::Now() + absl::Seconds(1));
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), slice)) {
      if (cancelled && cancelled()) return absl::CancelledError("the caller went away");
      if (absl::Now() < deadline) continue;
      return absl::DeadlineExceededError(absl::StrCat(
          "version ", version, " is not loaded by every worker yet: ",
          registry_.empty() ? std::string("no worker is attached") : absl::StrJoin(lacking, "; "),
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
  if (out.has_value() && out->state() == "running" && running_ != nullptr) {
    // The progress is counted here, when asked, not on every ack.
    v1::UpdateProgress* progress = out->mutable_progress();
    running_->Progress(progress);
    progress->set_elapsed_seconds(
        absl::ToDoubleSeconds(absl::Now() - absl::FromUnixMillis(out->started_unix_ms())));
  }
  return out;
}

uint64_t UpdateEngine::NewestLoadedLocked() const {
  uint64_t newest = 0;
  for (const auto& [id, w] : registry_.all()) newest = std::max(newest, w->loaded_version);
  return newest;
}

void UpdateEngine::RequestAutoUpdate(uint64_t version) {
  absl::MutexLock lock(&mu_);
  if (const uint64_t newest = NewestLoadedLocked(); newest > version) {
    spdlog::info(
        "auto_update: version {} committed, but a worker holds the newer version {}; not "
        "sent",
        version, newest);
    return;
  }
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
      any_workers = !registry_.empty();
    }
    v1::UpdateRequest request;
    std::string trigger;
    if (version == 0) {
      // update_on_attach: the newest committed version to the workers that just attached.
      if (store_->GetUsage().latest_committed == 0) continue;  // nothing to send yet
      {
        absl::MutexLock lock(&mu_);
        for (const auto& [id, e] : registry_.all()) {
          if (attached.count(e->identity.pid) > 0) request.add_worker_pids(e->identity.pid);
        }
      }
      if (request.worker_pids().empty()) continue;  // they left already
      trigger = "attach";
    } else {
      Cluster* const cluster = cluster_.load();
      if (!any_workers && cluster != nullptr) {
        // The other members' workers take part in a cluster update.
        for (const v1::ClusterMember& m : cluster->Members()) {
          any_workers = any_workers || (m.state() == "up" && m.workers() > 0);
        }
      }
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

bool UpdateEngine::StartOverlapped(std::shared_ptr<VersionStore::ReadLease> lease,
                                   std::shared_ptr<const v1::Manifest> manifest,
                                   std::shared_ptr<PushFeed> feed, const std::string& trigger) {
  if (lease == nullptr || manifest == nullptr || feed == nullptr ||
      static_cast<size_t>(manifest->tensors_size()) != feed->size()) {
    return false;
  }
  // FP8 conversion plans the version's final manifest in order (scales after their weights): the
  // update follows the commit instead.
  if (options_.fp8_by_default && !options_.fp8.empty()) return false;
  // One node first: a cluster update plans over every member (docs/cluster.md).
  if (Cluster* const cluster = cluster_.load(); cluster != nullptr) {
    for (const v1::ClusterMember& m : cluster->Members()) {
      if (m.state() == "up") return false;
    }
  }
  std::thread previous;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || registry_.empty() || overlap_feed_ != nullptr) return false;
    previous = std::move(overlap_thread_);  // ended: it cleared overlap_feed_ as its last step
    try {
      overlap_thread_ =
          std::thread([this, lease = std::move(lease), manifest, feed, trigger]() mutable {
            RunOverlapped(std::move(lease), std::move(manifest), std::move(feed), trigger);
          });
    } catch (const std::system_error& e) {
      spdlog::error("version {}: no thread for its overlapped update ({})", feed->version(),
                    e.what());
      overlap_thread_ = std::move(previous);
      return false;
    }
    overlap_feed_ = feed;
  }
  if (previous.joinable()) previous.join();
  return true;
}

void UpdateEngine::WakeRun() {
  absl::MutexLock lock(&mu_);
  if (running_ != nullptr) running_->Wake();
}

void UpdateEngine::RunOverlapped(std::shared_ptr<VersionStore::ReadLease> lease,
                                 std::shared_ptr<const v1::Manifest> manifest,
                                 std::shared_ptr<PushFeed> feed, const std::string& trigger) {
  const absl::Time started = absl::Now();
  const uint64_t version = feed->version();
  // Whatever happens, the next overlapped update may start once this one is done.
  struct Release {
    UpdateEngine* engine;
    PushFeed* feed;
    ~Release() {
      feed->SetListener({});
      absl::MutexLock lock(&engine->mu_);
      engine->overlap_feed_ = nullptr;
    }
  } release{this, feed.get()};
  auto stopping = [this] {
    absl::MutexLock lock(&mu_);
    return stopping_;
  };
  // Waits until the push ends; true once it committed (false: failed, or the engine stops).
  auto await_end = [&] {
    for (;;) {
      bool timed_out = false;
      const bool committed = feed->AwaitEnd(absl::Now() + absl::Milliseconds(200), &timed_out);
      if (!timed_out) return committed;
      if (stopping()) return false;
    }
  };
  // Not overlapped after all: the version goes to the workers once it is committed.
  auto after_commit = [&](const std::string& why) {
    spdlog::info("version {}: not sent while it is pushed ({}); sent once committed", version, why);
    if (await_end()) RequestAutoUpdate(version);
  };

  auto plan = PlanManifest(
      version, *manifest, [&lease](int i) { return lease->arena_offset(i); }, options_.bucket_bytes,
      transfer_->slot_set_count());
  if (!plan.ok()) {
    after_commit(std::string(plan.status().message()));
    return;
  }
  auto stalled = std::make_shared<std::atomic<bool>>(false);
  auto filler = std::make_unique<StagingFiller>(transfer_.get(), store_->arena().data(), *plan,
                                                feed, lease, options_.ack_timeout, stalled);
  // The listener takes mu_: it is set and cleared (Release) with mu_ not held, and the feed calls
  // it with none of its own data locks held.
  feed->SetListener([this] { WakeRun(); });
  // The update slot is claimed only once a bucket can go: until then other updates may run.
  for (;;) {
    const uint64_t seen = feed->changes();
    absl::StatusOr<bool> ready = filler->AnyReady();
    if (!ready.ok()) return;  // the push failed, or its version was aborted: nothing was sent
    if (*ready) break;
    if (stopping()) return;
    feed->AwaitChange(seen, absl::Now() + absl::Milliseconds(200));
  }

  Prepared p;
  p.version = version;
  p.plan = *std::move(plan);
  p.manifest = manifest;
  p.lease = lease;
  p.filler = std::move(filler);
  p.response.set_version(version);
  p.unrestricted = true;  // every attached worker, unforced: an Update of this version joins it
  absl::StatusOr<v1::UpdateResponse> result = absl::UnknownError("not run");
  std::string not_run;  // why it did not run (then it goes after the commit)
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    v1::UpdateRequest request;
    request.set_version(version);
    const uint64_t newest_loaded = NewestLoadedLocked();
    if (version <= auto_highest_ || version < newest_loaded) {
      // A newer version went (or goes) to the workers meanwhile: they never go back to this one.
      spdlog::info("version {}: not sent (workers hold or were sent the newer version {})", version,
                   std::max(auto_highest_, newest_loaded));
      return;
    }
    if (absl::Status free = SlotFreeLocked(); !free.ok()) {
      not_run = std::string(free.message());
    } else if (auto participants =
                   UpdateRun::Select(registry_, request, version, *manifest, &p.response);
               !participants.ok() || participants->empty()) {
      not_run = participants.ok() ? std::string("every worker holds it")
                                  : std::string(participants.status().message());
    } else {
      p.participants = *std::move(participants);
      // Later auto_update requests for older versions are not sent (RequestAutoUpdate).
      auto_highest_ = std::max(auto_highest_, version);
      result = RunLocked(std::move(p), trigger, started);
    }
  }
  if (!not_run.empty()) {
    after_commit(not_run);
    return;
  }
  if (result.ok()) return;
  RecoverMixed(result, trigger, absl::InfiniteFuture());
  if (stalled->load()) {
    // The push still goes on, too slowly to hold the update slot: the whole version follows its
    // commit instead (as auto_update sends one).
    {
      absl::MutexLock lock(&mu_);
      if (auto_highest_ == version) auto_highest_ = version - 1;
    }
    after_commit("its push stalled");
  }
}

void UpdateEngine::Stop(const std::string& reason) {
  std::shared_ptr<PushFeed> overlapping;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    stop_reason_ = reason;
    pulls_cancelled_ = true;
    if (running_ != nullptr) running_->Cancel(reason);
    for (const auto& [id, worker] : registry_.all()) worker->channel->Close(reason);
    overlapping = overlap_feed_;
  }
  // Outside the lock: the feed calls its listener, which takes it.
  if (overlapping != nullptr) overlapping->Fail(absl::UnavailableError(reason));
}

std::vector<v1::WorkerStatus> UpdateEngine::Workers() const {
  absl::MutexLock lock(&mu_);
  return registry_.Statuses();
}

uint64_t UpdateEngine::updating_version() const {
  absl::MutexLock lock(&mu_);
  return updating_;
}

}  // namespace ckpt::daemon
