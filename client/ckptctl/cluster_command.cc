#include "client/ckptctl/cluster_command.h"

#include <algorithm>
#include <iostream>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/units.h"

namespace ckpt::ctl {

CLI::App* AddClusterCommand(CLI::App* app, ClusterArgs* args) {
  CLI::App* cmd = app->add_subcommand("cluster", "show the cluster's members");
  cmd->add_flag("--json", args->json, "print JSON");
  return cmd;
}

namespace {

nlohmann::json HeldJson(const v1::ClusterMember& m) {
  nlohmann::json held = nlohmann::json::array();
  for (const v1::HeldVersion& h : m.held()) {
    held.push_back({{"version", h.version()},
                    {"part_count", h.part_count()},
                    {"parts", std::vector<uint32_t>(h.parts().begin(), h.parts().end())},
                    {"tensor_count", h.tensor_count()},
                    {"total_bytes", h.total_bytes()}});
  }
  return held;
}

// Per version held by any member: who holds it (whole, or which parts), and the parts no member
// holds.
struct ClusterVersion {
  uint32_t part_count = 0;
  std::vector<std::pair<const v1::ClusterMember*, const v1::HeldVersion*>> holders;
};

std::map<uint64_t, ClusterVersion> ByVersion(const v1::StatusResponse& s) {
  std::map<uint64_t, ClusterVersion> out;
  for (const v1::ClusterMember& m : s.cluster_members()) {
    for (const v1::HeldVersion& h : m.held()) {
      ClusterVersion& v = out[h.version()];
      v.part_count = std::max(v.part_count, h.part_count());
      v.holders.emplace_back(&m, &h);
    }
  }
  for (auto& [version, v] : out) {
    std::stable_sort(v.holders.begin(), v.holders.end(), [](const auto& a, const auto& b) {
      return a.first->node_name() < b.first->node_name();
    });
  }
  return out;
}

// The parts of `v` that no member that is up (or this one) holds.
std::vector<uint32_t> MissingParts(const ClusterVersion& v) {
  std::set<uint32_t> held;
  for (const auto& [m, h] : v.holders) {
    if (m->state() != "self" && m->state() != "up") continue;
    if (h->part_count() == 0) return {};
    held.insert(h->parts().begin(), h->parts().end());
  }
  std::vector<uint32_t> missing;
  for (uint32_t p = 0; p < v.part_count; ++p) {
    if (held.count(p) == 0) missing.push_back(p);
  }
  return missing;
}

std::string Percent(uint64_t done, uint64_t total) {
  if (total == 0) return "100%";
  const double f = std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
  return absl::StrFormat("%d%%", static_cast<int>(f * 100));
}

}  // namespace

nlohmann::json PullJson(const v1::PullProgress& p) {
  nlohmann::json sources = nlohmann::json::array();
  for (const v1::PullSource& src : p.sources()) {
    sources.push_back({{"member", src.member()},
                       {"received_bytes", src.received_bytes()},
                       {"error", src.error()}});
  }
  return {{"version", p.version()},
          {"trigger", p.trigger()},
          {"phase", p.phase()},
          {"started_unix_ms", p.started_unix_ms()},
          {"ended_unix_ms", p.ended_unix_ms()},
          {"seconds", p.seconds()},
          {"total_bytes", p.total_bytes()},
          {"received_bytes", p.received_bytes()},
          {"tensor_count", p.tensor_count()},
          {"tensors_received", p.tensors_received()},
          {"sources", std::move(sources)},
          {"code", p.code()},
          {"error", p.error()}};
}

std::string PullText(const v1::PullProgress& p) {
  const bool running = p.ended_unix_ms() == 0;
  std::string out = absl::StrCat(running ? "pull" : "last pull", ": version ", p.version(), " (",
                                 p.trigger(), ") ", p.phase());
  if (p.total_bytes() > 0 || p.tensor_count() > 0) {
    absl::StrAppend(&out, ", ", FormatBytes(p.received_bytes()), " of ",
                    FormatBytes(p.total_bytes()), " (",
                    Percent(p.received_bytes(), p.total_bytes()), "), ", p.tensors_received(), "/",
                    p.tensor_count(), " tensors");
  }
  absl::StrAppend(&out, running ? ", " : " after ", HumanDuration(absl::Seconds(p.seconds())));
  if (p.seconds() > 0 && p.received_bytes() > 0) {
    absl::StrAppend(
        &out, ", ",
        FormatBytes(static_cast<uint64_t>(static_cast<double>(p.received_bytes()) / p.seconds())),
        "/s");
  }
  absl::StrAppend(&out, "\n");
  if (p.sources_size() > 0) {
    std::vector<std::string> from;
    for (const v1::PullSource& src : p.sources()) {
      std::string one = absl::StrCat(src.member(), " ", FormatBytes(src.received_bytes()));
      if (!src.error().empty()) absl::StrAppend(&one, " (dropped: ", src.error(), ")");
      from.push_back(std::move(one));
    }
    absl::StrAppend(&out, "    from ", absl::StrJoin(from, "; "), "\n");
  }
  if (!p.error().empty()) absl::StrAppend(&out, "    ", p.code(), ": ", p.error(), "\n");
  return out;
}

nlohmann::json ClusterVersionsJson(const v1::StatusResponse& s) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [version, v] : ByVersion(s)) {
    nlohmann::json holders = nlohmann::json::array();
    for (const auto& [m, h] : v.holders) {
      holders.push_back({{"node_name", m->node_name()},
                         {"state", m->state()},
                         {"whole", h->part_count() == 0},
                         {"parts", std::vector<uint32_t>(h->parts().begin(), h->parts().end())}});
    }
    out.push_back({{"version", version},
                   {"part_count", v.part_count},
                   {"members", std::move(holders)},
                   {"missing_parts", MissingParts(v)}});
  }
  return out;
}

std::string ClusterVersionsText(const v1::StatusResponse& s) {
  const auto versions = ByVersion(s);
  if (versions.empty()) return "no member holds a version\n";
  std::string out = absl::StrFormat("%-8s %-10s %s\n", "VERSION", "PARTS", "HELD BY");
  for (const auto& [version, v] : versions) {
    std::vector<std::string> holders;
    for (const auto& [m, h] : v.holders) {
      std::string who = m->node_name().empty() ? m->address() : m->node_name();
      if (m->state() != "self" && m->state() != "up") absl::StrAppend(&who, " (", m->state(), ")");
      if (h->part_count() == 0) {
        absl::StrAppend(&who, ": whole");
      } else {
        absl::StrAppend(&who, h->parts_size() == 1 ? ": part " : ": parts ",
                        absl::StrJoin(h->parts(), ","));
      }
      holders.push_back(std::move(who));
    }
    const std::vector<uint32_t> missing = MissingParts(v);
    std::string parts = v.part_count == 0 ? "whole" : absl::StrCat(v.part_count);
    absl::StrAppendFormat(&out, "%8d %-10s %s%s\n", version, parts, absl::StrJoin(holders, "; "),
                          missing.empty()
                              ? ""
                              : absl::StrCat("; MISSING ", missing.size() == 1 ? "part " : "parts ",
                                             absl::StrJoin(missing, ",")));
  }
  return out;
}

nlohmann::json ClusterJson(const v1::StatusResponse& s) {
  nlohmann::json members = nlohmann::json::array();
  for (const v1::ClusterMember& m : s.cluster_members()) {
    members.push_back(
        {{"address", m.address()},
         {"node_name", m.node_name()},
         {"state", m.state()},
         {"error", m.error()},
         {"gpu_uuids", std::vector<std::string>(m.gpu_uuids().begin(), m.gpu_uuids().end())},
         {"versions", std::vector<uint64_t>(m.versions().begin(), m.versions().end())},
         {"held", HeldJson(m)},
         {"workers", m.workers()},
         {"release", m.release()},
         {"protocol_version", m.protocol_version()},
         {"backend", m.backend()},
         {"updating_version", m.updating_version()},
         {"pulling", m.pulling_version() == 0
                         ? nlohmann::json(nullptr)
                         : nlohmann::json{{"version", m.pulling_version()},
                                          {"received_bytes", m.pull_received_bytes()},
                                          {"total_bytes", m.pull_total_bytes()}}},
         {"instance", m.instance()},
         {"last_seen_unix_ms", m.last_seen_unix_ms()}});
  }
  return {{"node_name", s.node_name()},
          {"cluster_listen", s.cluster_listen()},
          {"members", std::move(members)},
          {"pull", s.has_pull() ? PullJson(s.pull()) : nlohmann::json(nullptr)}};
}

std::string ClusterText(const v1::StatusResponse& s) {
  if (s.cluster_listen().empty()) {
    return "not in a cluster (cluster_listen is not set)\n";
  }
  std::string out = absl::StrCat("member '", s.node_name(), "', Peer API on ", s.cluster_listen(),
                                 "; ", s.cluster_members_size(), " member(s)\n");
  absl::StrAppendFormat(&out, "%-24s %-28s %-12s %5s %8s  %s\n", "NAME", "ADDRESS", "STATE", "GPUS",
                        "WORKERS", "VERSIONS");
  for (const v1::ClusterMember& m : s.cluster_members()) {
    std::string versions = m.versions().empty() ? "-" : absl::StrJoin(m.versions(), ",");
    absl::StrAppendFormat(&out, "%-24s %-28s %-12s %5d %8d  %s\n",
                          m.node_name().empty() ? "?" : m.node_name(), m.address(), m.state(),
                          m.gpu_uuids_size(), m.workers(), versions);
    if (!m.error().empty()) absl::StrAppend(&out, "    ", m.error(), "\n");
    if (m.updating_version() != 0) {
      absl::StrAppend(&out, "    updating to version ", m.updating_version(), "\n");
    }
    if (m.pulling_version() != 0) {
      absl::StrAppend(&out, "    pulling version ", m.pulling_version(), ": ",
                      FormatBytes(m.pull_received_bytes()), " of ",
                      FormatBytes(m.pull_total_bytes()), " (",
                      Percent(m.pull_received_bytes(), m.pull_total_bytes()), ")\n");
    }
  }
  if (s.has_pull()) absl::StrAppend(&out, PullText(s.pull()));
  return out;
}

int RunClusterCommand(const GlobalOptions& global, const ClusterArgs& args) {
  auto client = ConnectAdmin(global);
  if (!client.ok()) return Fail(client.status());
  auto status = (*client)->Status(global.timeout);
  if (!status.ok()) return Fail(status.status());
  if (args.json) {
    std::cout << ClusterJson(*status).dump(2) << "\n";
  } else {
    std::cout << ClusterText(*status);
  }
  return 0;
}

}  // namespace ckpt::ctl
