// Pulls (docs/cluster.md, "Pulls"): a member copies a committed version from the members that
// hold it (whole or in parts) into its own store, reading from all of them at once over
// Peer.ReadTensors, verified where it lands (the store's commit checks every checksum of the
// proved manifest), then updates its own workers.
#include <algorithm>
#include <map>
#include <set>
#include <thread>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/message_text.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "daemon/update/byte_rate.h"
#include "daemon/update/update_engine.h"
#include "daemon/update/version_parts.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

constexpr uint64_t kReadChunkBytes = uint64_t{1} << 20;
// Positions per ReadTensors request: 8192 varints of up to 4 bytes stay within the Peer
// server's 64 KiB requests whatever the manifest's size.
constexpr size_t kMaxReadTensors = 8192;

}  // namespace

absl::Status UpdateEngine::ServeReadTensors(
    const v1::ReadTensorsRequest& request,
    const std::function<bool(const v1::TensorChunk&)>& write) {
  if (request.version() == 0) return absl::InvalidArgumentError("tensors of version 0");
  ASSIGN_OR_RETURN(std::shared_ptr<VersionStore::ReadLease> lease,
                   store_->Lease(request.version()));
  const v1::Manifest& m = lease->manifest();
  if (request.manifest_tensors() != static_cast<uint32_t>(m.tensors_size())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "version ", request.version(), " here has ", m.tensors_size(), " tensors, not ",
        request.manifest_tensors(), " (it changed since its manifest was read)"));
  }
  if (request.tensors().empty() || static_cast<size_t>(request.tensors_size()) > kMaxReadTensors) {
    return absl::InvalidArgumentError(
        absl::StrCat("a read of ", request.tensors_size(), " tensors (1..", kMaxReadTensors, ")"));
  }
  std::set<uint32_t> seen;
  for (uint32_t t : request.tensors()) {
    if (t >= static_cast<uint32_t>(m.tensors_size())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor #", t, " of ", m.tensors_size()));
    }
    if (!seen.insert(t).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor #", t, " asked for twice"));
    }
  }
  v1::TensorChunk chunk;
  for (uint32_t t : request.tensors()) {
    const uint64_t bytes = m.tensors(static_cast<int>(t)).byte_size();
    const uint8_t* data = lease->data(static_cast<int>(t));
    for (uint64_t off = 0; off < bytes; off += kReadChunkBytes) {
      const uint64_t n = std::min(kReadChunkBytes, bytes - off);
      chunk.set_tensor(t);
      chunk.set_offset(off);
      chunk.set_data(data + off, n);
      // pull_bytes_per_second holds for what this member serves too (all readers together).
      if (!serve_rate_.Take(n, absl::InfiniteFuture(), [&] { return pulls_cancelled_.load(); })) {
        return absl::UnavailableError("this member is stopping");
      }
      if (!write(chunk)) return absl::CancelledError("the reader went away");
    }
  }
  return absl::OkStatus();
}

std::optional<v1::PullProgress> UpdateEngine::LastPull() const {
  absl::MutexLock lock(&pull_mu_);
  std::optional<v1::PullProgress> out = pull_;
  if (out.has_value() && out->ended_unix_ms() == 0) {
    out->set_seconds(
        absl::ToDoubleSeconds(absl::Now() - absl::FromUnixMillis(out->started_unix_ms())));
  }
  return out;
}

void UpdateEngine::PullProgressed(const std::function<void(v1::PullProgress&)>& change) {
  absl::MutexLock lock(&pull_mu_);
  if (pull_.has_value()) change(*pull_);
}

absl::StatusOr<v1::PullResponse> UpdateEngine::PullVersion(const v1::PullRequest& request,
                                                           absl::Time deadline,
                                                           const std::function<bool()>& cancelled,
                                                           const std::string& trigger) {
  if (pulls_cancelled_) return absl::UnavailableError("the daemon is stopping");
  const absl::Time started = absl::Now();
  {
    absl::MutexLock lock(&pull_mu_);
    if (pull_running_) {
      const uint64_t v = pull_.has_value() ? pull_->version() : 0;
      return absl::FailedPreconditionError(absl::StrCat(
          "a pull is running here (", v == 0 ? "choosing its version" : absl::StrCat("version ", v),
          ", started by ", pull_.has_value() ? pull_->trigger() : trigger,
          "); ckptctl cluster shows its progress"));
    }
    // The record of the last pull stays until this one has chosen a version to pull (RunPull).
    pull_running_ = true;
  }
  absl::StatusOr<v1::PullResponse> result = RunPull(request, deadline, cancelled, trigger, started);
  absl::MutexLock lock(&pull_mu_);
  pull_running_ = false;
  if (pull_.has_value() && pull_->ended_unix_ms() == 0) {
    const absl::Time ended = absl::Now();
    pull_->set_ended_unix_ms(absl::ToUnixMillis(ended));
    pull_->set_seconds(absl::ToDoubleSeconds(ended - started));
    if (result.ok()) {
      pull_->set_phase("succeeded");
    } else {
      pull_->set_phase("failed");
      pull_->set_code(absl::StatusCodeToString(result.status().code()));
      pull_->set_error(std::string(result.status().message()));
    }
  }
  return result;
}

absl::StatusOr<v1::PullResponse> UpdateEngine::RunPull(const v1::PullRequest& request,
                                                       absl::Time deadline,
                                                       const std::function<bool()>& cancelled,
                                                       const std::string& trigger,
                                                       absl::Time started) {
  // Without a caller's deadline, at most an hour.
  deadline = std::min(deadline, absl::Now() + absl::Hours(1));
  auto stop = [&] { return pulls_cancelled_.load() || (cancelled && cancelled()); };
  Cluster* const cluster = cluster_.load();
  if (cluster == nullptr) {
    return absl::FailedPreconditionError("a pull copies from other members: not in a cluster");
  }
  std::vector<v1::ClusterMember> up;
  for (v1::ClusterMember& m : cluster->Members()) {
    if (m.state() == "up" && m.protocol_version() >= kPeerPartsVersion) up.push_back(std::move(m));
  }
  // Which version: the one asked for, or the newest held whole or in every part by members up.
  uint64_t version = request.version();
  if (version == 0) {
    std::map<uint64_t, std::pair<uint32_t, std::set<uint32_t>>> parts;  // id -> count, held
    std::set<uint64_t> whole;
    for (const v1::ClusterMember& m : up) {
      for (const v1::HeldVersion& h : m.held()) {
        if (h.part_count() == 0) {
          whole.insert(h.version());
        } else {
          auto& e = parts[h.version()];
          e.first = h.part_count();
          e.second.insert(h.parts().begin(), h.parts().end());
        }
      }
    }
    for (const auto& [id, e] : parts) {
      if (e.second.size() == e.first) whole.insert(id);
    }
    if (whole.empty()) {
      return absl::FailedPreconditionError(
          "no member that is up holds a whole version (or every part of one) to pull");
    }
    version = *whole.rbegin();
  }
  if (auto mine = store_->Lease(version); mine.ok()) {
    if ((*mine)->complete()) {
      return absl::AlreadyExistsError(absl::StrCat("version ", version, " is held here already"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "this member holds parts of version ", version,
        ": pulling the other parts into it is not built (push them to this member, or ask "
        "a member that holds every part for the update)"));
  }
  {
    // From here on the pull is shown (Status.pull, ckptctl cluster).
    absl::MutexLock lock(&pull_mu_);
    pull_.emplace();
    pull_->set_version(version);
    pull_->set_trigger(trigger);
    pull_->set_phase("listing");
    pull_->set_started_unix_ms(absl::ToUnixMillis(started));
  }
  // What each member that is up holds of it.
  std::vector<PartHolding> holdings;
  for (const v1::ClusterMember& m : up) {
    bool holds = false;
    for (const v1::HeldVersion& h : m.held()) holds = holds || h.version() == version;
    if (!holds) continue;
    auto h = FetchHolding(m.node_name(), version,
                          std::max(absl::ZeroDuration(), deadline - absl::Now()));
    if (!h.ok()) {
      spdlog::warn("pull of version {}: {}; not a source", version,
                   std::string(h.status().message()));
      continue;
    }
    h->instance = m.instance();
    holdings.push_back(*std::move(h));
  }
  if (holdings.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no member that is up holds version ", version, " (ckptctl versions)"));
  }
  ASSIGN_OR_RETURN(ComposedVersion composed, ComposeParts(version, holdings));
  const v1::Manifest& manifest = composed.manifest;
  const int n = manifest.tensors_size();
  // Each tensor's position in each holding's manifest.
  std::vector<std::unordered_map<std::string, uint32_t>> position(holdings.size());
  for (size_t k = 0; k < holdings.size(); ++k) {
    for (int i = 0; i < holdings[k].manifest.tensors_size(); ++i) {
      position[k][holdings[k].manifest.tensors(i).name()] = static_cast<uint32_t>(i);
    }
  }
  std::vector<std::string> names;
  for (const PartHolding& h : holdings) names.push_back(h.member);
  auto begun =
      store_->Begin(manifest, version, absl::StrCat("pulled from ", absl::StrJoin(names, ", ")),
                    "cluster pull", /*verify_checksums=*/true, deadline,
                    /*may_retire=*/true, /*transport=*/"pulled");
  if (!begun.ok()) return Annotate(begun.status(), absl::StrCat("pull of version ", version));
  const std::string token = begun->upload_token;
  uint64_t total = 0;
  uint32_t empty_tensors = 0;
  for (const v1::TensorSpec& t : manifest.tensors()) {
    total += t.byte_size();
    empty_tensors += t.byte_size() == 0 ? 1 : 0;
  }
  PullProgressed([&](v1::PullProgress& p) {
    p.set_phase("reading");
    p.set_total_bytes(total);
    p.set_tensor_count(static_cast<uint32_t>(n));
    p.set_tensors_received(empty_tensors);
    for (const PartHolding& h : holdings) p.add_sources()->set_member(h.member);
  });
  spdlog::info("pull of version {}: {} tensors, {} from {}", version, n, FormatBytes(total),
               absl::StrJoin(names, ", "));

  // Rounds: every tensor not yet in goes to the usable holder with the fewest bytes so far
  // (largest first); each holder reads its share on a thread of its own. A holder that fails is
  // not used again; its unfinished tensors go to the others in the next round.
  std::vector<char> done(static_cast<size_t>(n), 0);
  for (int t = 0; t < n; ++t) done[static_cast<size_t>(t)] = manifest.tensors(t).byte_size() == 0;
  std::vector<char> failed(holdings.size(), 0);
  std::vector<std::string> failures;
  std::vector<uint64_t> sent(holdings.size(), 0);
  ByteRate limit(options_.pull_bytes_per_second);
  absl::Status result;
  for (;;) {
    std::vector<int> order;
    for (int t = 0; t < n; ++t) {
      if (!done[static_cast<size_t>(t)]) order.push_back(t);
    }
    if (order.empty()) break;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return manifest.tensors(a).byte_size() > manifest.tensors(b).byte_size();
    });
    std::vector<std::vector<int>> share(holdings.size());
    std::vector<uint64_t> load(holdings.size(), 0);
    std::vector<std::string> orphans;
    for (int t : order) {
      int best = -1;
      for (int k : composed.holders[static_cast<size_t>(t)]) {
        if (failed[static_cast<size_t>(k)]) continue;
        if (best < 0 || load[static_cast<size_t>(k)] < load[static_cast<size_t>(best)]) best = k;
      }
      if (best < 0) {
        orphans.push_back(manifest.tensors(t).name());
        continue;
      }
      share[static_cast<size_t>(best)].push_back(t);
      load[static_cast<size_t>(best)] += manifest.tensors(t).byte_size();
    }
    if (!orphans.empty()) {
      std::vector<std::string> shown;
      for (size_t i = 0; i < orphans.size() && i < 8; ++i) {
        shown.push_back(QuoteForMessage(orphans[i], 128));
      }
      result = absl::UnavailableError(
          absl::StrCat("pull of version ", version, ": ", orphans.size(), " tensors (",
                       absl::StrJoin(shown, ", "), orphans.size() > 8 ? ", ..." : "",
                       ") have no holder left: ", absl::StrJoin(failures, "; ")));
      break;
    }
    std::vector<absl::Status> status(holdings.size());
    std::vector<std::thread> readers;
    for (size_t k = 0; k < holdings.size(); ++k) {
      if (share[k].empty()) continue;
      readers.emplace_back([&, k] {
        const PartHolding& h = holdings[k];
        for (size_t from = 0; from < share[k].size() && status[k].ok(); from += kMaxReadTensors) {
          v1::ReadTensorsRequest r;
          r.set_version(version);
          r.set_manifest_tensors(static_cast<uint32_t>(h.manifest.tensors_size()));
          const size_t to = std::min(share[k].size(), from + kMaxReadTensors);
          std::unordered_map<uint32_t, int> asked;  // holder's position -> composed index
          for (size_t j = from; j < to; ++j) {
            const int t = share[k][j];
            const uint32_t at = position[k].at(manifest.tensors(t).name());
            r.add_tensors(at);
            asked[at] = t;
          }
          std::vector<uint64_t> got(static_cast<size_t>(n), 0);
          // A holder silent this long counts as failed (its tensors go to the others); a
          // rate-limited pull's chunks come at least this often.
          const absl::Duration idle = std::max(absl::Seconds(30), 4 * cluster->timeout());
          status[k] = cluster->CallReadTensors(
              h.member, r, deadline, idle, stop, [&](const v1::TensorChunk& c) -> absl::Status {
                auto it = asked.find(c.tensor());
                if (it == asked.end()) {
                  return absl::InvalidArgumentError(
                      absl::StrCat("member '", h.member, "' sent a tensor that was not asked for"));
                }
                const v1::TensorSpec& spec = manifest.tensors(it->second);
                uint64_t& have = got[static_cast<size_t>(it->second)];
                if (c.offset() != have || c.data().empty() ||
                    c.data().size() > spec.byte_size() - have) {
                  return absl::InvalidArgumentError(absl::StrCat(
                      "member '", h.member, "' sent bytes out of order or past the end of ",
                      QuoteForMessage(spec.name(), 128)));
                }
                if (!limit.Take(c.data().size(), deadline, stop)) {
                  return absl::UnavailableError("the pull was stopped");
                }
                RETURN_IF_ERROR(store_->WriteChunk(version, token, spec.name(), c.offset(),
                                                   c.data().data(), c.data().size()));
                have += c.data().size();
                sent[k] += c.data().size();
                const bool whole = have == spec.byte_size();
                if (whole) done[static_cast<size_t>(it->second)] = 1;
                PullProgressed([&](v1::PullProgress& p) {
                  p.set_received_bytes(p.received_bytes() + c.data().size());
                  v1::PullSource* source = p.mutable_sources(static_cast<int>(k));
                  source->set_received_bytes(source->received_bytes() + c.data().size());
                  if (whole) p.set_tensors_received(p.tensors_received() + 1);
                });
                return absl::OkStatus();
              });
          // Ended with OK but short: a failure like any other (the tensors go to the others).
          for (size_t j = from; status[k].ok() && j < to; ++j) {
            const int t = share[k][j];
            if (got[static_cast<size_t>(t)] != manifest.tensors(t).byte_size() &&
                manifest.tensors(t).byte_size() != 0) {
              status[k] = absl::DataLossError(
                  absl::StrCat("member '", h.member, "' ended before sending all of ",
                               QuoteForMessage(manifest.tensors(t).name(), 128)));
            }
          }
          if (!status[k].ok()) {
            // What it sent of tensors it did not finish is read again from another holder.
            uint64_t partial = 0;
            for (size_t j = from; j < to; ++j) {
              const int t = share[k][j];
              if (!done[static_cast<size_t>(t)]) partial += got[static_cast<size_t>(t)];
            }
            PullProgressed([&](v1::PullProgress& p) {
              p.set_received_bytes(p.received_bytes() - std::min(p.received_bytes(), partial));
              p.mutable_sources(static_cast<int>(k))->set_error(std::string(status[k].message()));
            });
          }
        }
      });
    }
    for (std::thread& t : readers) t.join();
    bool any_failed = false;
    for (size_t k = 0; k < holdings.size(); ++k) {
      if (status[k].ok()) continue;
      any_failed = true;
      failed[k] = 1;
      failures.push_back(std::string(status[k].message()));
      spdlog::warn("pull of version {}: {}; its tensors go to the other holders", version,
                   std::string(status[k].message()));
    }
    if (!any_failed) break;
    if (stop()) {
      result = absl::UnavailableError(absl::StrCat("pull of version ", version, ": stopped"));
      break;
    }
    if (absl::Now() >= deadline) {
      result = absl::DeadlineExceededError(
          absl::StrCat("pull of version ", version, ": the deadline passed"));
      break;
    }
  }
  if (result.ok()) {
    for (int t = 0; t < n; ++t) {
      if (!done[static_cast<size_t>(t)]) {
        result = absl::InternalError(
            absl::StrCat("pull of version ", version, ": a tensor not received (a daemon bug)"));
      }
    }
  }
  if (!result.ok()) {
    (void)store_->Abort(version, token, std::string(result.message()));
    spdlog::error("{}", std::string(result.message()));
    return result;
  }
  // Verified here: every byte against the proved manifest's checksums. The pull's own update
  // (below) serves this member's workers, not auto_update (it would go to every member).
  PullProgressed([](v1::PullProgress& p) { p.set_phase("verifying"); });
  auto info = store_->Commit(version, token, /*notify=*/false);
  if (!info.ok()) {
    (void)store_->Abort(version, token, std::string(info.status().message()));
    return Annotate(info.status(), absl::StrCat("pull of version ", version));
  }
  v1::PullResponse response;
  *response.mutable_info() = *info;
  for (size_t k = 0; k < holdings.size(); ++k) {
    response.add_sources(holdings[k].member);
    response.add_source_bytes(sent[k]);
  }
  spdlog::info("pull of version {}: {} in {} (checksums verified)", version,
               FormatBytes(info->total_bytes()), HumanDuration(absl::Now() - started));
  if (request.update()) {
    v1::UpdateRequest u;
    u.set_version(version);
    for (const v1::WorkerStatus& w : Workers()) u.add_worker_pids(w.pid());
    if (u.worker_pids_size() > 0) {
      PullProgressed([](v1::PullProgress& p) { p.set_phase("updating"); });
      auto updated = Update(u, deadline, "pull", nullptr);
      if (!updated.ok()) {
        return Annotate(updated.status(), absl::StrCat("version ", version,
                                                       " was pulled; updating this daemon's "
                                                       "workers"));
      }
      *response.mutable_update() = *std::move(updated);
    }
  }
  response.set_seconds(absl::ToDoubleSeconds(absl::Now() - started));
  return response;
}

void UpdateEngine::MaybePullOnJoin() {
  if (!options_.pull_on_join || join_done_ || join_running_ || pulls_cancelled_) return;
  Cluster* const cluster = cluster_.load();
  if (cluster == nullptr) return;
  const VersionStore::Usage usage = store_->GetUsage();
  if (absl::Now() - engine_started_ > kJoinWindow || usage.committed > 0 || usage.staging > 0) {
    join_done_ = true;  // it holds (or gets) versions of its own: nothing to join
    return;
  }
  const std::optional<bool> late = cluster->JoinedLate();
  if (!late.has_value()) return;  // no member seen up yet
  if (!*late) {
    join_done_ = true;  // it started with the others: nothing to catch up
    return;
  }
  bool held = false;
  for (const v1::ClusterMember& m : cluster->Members()) {
    if (m.state() != "up" || m.protocol_version() < kPeerPartsVersion) continue;
    if (m.updating_version() != 0) {
      spdlog::info(
          "cluster: joining: member '{}' is updating to version {}; the pull waits for "
          "it to end",
          m.node_name(), m.updating_version());
      return;
    }
    held = held || m.held_size() > 0;
  }
  if (!held) return;
  if (join_thread_.joinable()) join_thread_.join();  // a try that ended
  join_running_ = true;
  join_thread_ = std::thread([this] {
    v1::PullRequest request;
    request.set_update(true);
    auto pulled = PullVersion(request, absl::Now() + absl::Minutes(30), nullptr, "join");
    if (pulled.ok()) {
      spdlog::info("cluster: joined: pulled version {} and sent it to {} workers here",
                   pulled->info().version(), pulled->update().workers_size());
      join_done_ = true;
    } else if (absl::IsAlreadyExists(pulled.status())) {
      join_done_ = true;
    } else {
      spdlog::warn("cluster: joining: {} (tried again next round)",
                   std::string(pulled.status().message()));
    }
    join_running_ = false;
  });
}

}  // namespace ckpt::daemon
