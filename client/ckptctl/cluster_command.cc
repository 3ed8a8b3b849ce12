#include "client/ckptctl/cluster_command.h"

#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace ckpt::ctl {

CLI::App* AddClusterCommand(CLI::App* app, ClusterArgs* args) {
  CLI::App* cmd = app->add_subcommand("cluster", "show the cluster's members");
  cmd->add_flag("--json", args->json, "print JSON");
  return cmd;
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
         {"workers", m.workers()},
         {"release", m.release()},
         {"protocol_version", m.protocol_version()},
         {"backend", m.backend()},
         {"instance", m.instance()},
         {"last_seen_unix_ms", m.last_seen_unix_ms()}});
  }
  return {{"node_name", s.node_name()},
          {"cluster_listen", s.cluster_listen()},
          {"members", std::move(members)}};
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
  }
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
