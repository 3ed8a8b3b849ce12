// `ckptctl cluster [--json]`: the cluster's members as this daemon sees them (Admin.Status):
// name, address, state (self / up / unreachable / refused / left) and why, GPUs, versions held,
// workers (docs/cluster.md).
#ifndef CKPT_CLIENT_CKPTCTL_CLUSTER_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_CLUSTER_COMMAND_H_

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "client/ckptctl/command.h"
#include "proto/admin.pb.h"

namespace ckpt::ctl {

struct ClusterArgs {
  bool json = false;
};

CLI::App* AddClusterCommand(CLI::App* app, ClusterArgs* args);
int RunClusterCommand(const GlobalOptions& global, const ClusterArgs& args);

// {"node_name", "cluster_listen", "members": [{"address", "node_name", "state", "error",
// "gpu_uuids", "versions", "workers", "release", "last_seen_unix_ms"}]}.
nlohmann::json ClusterJson(const v1::StatusResponse& status);
// One line per member; "not in a cluster" when cluster_listen is empty.
std::string ClusterText(const v1::StatusResponse& status);
// The versions every member holds (ClusterMember.held): per version, its part count (0: whole),
// each holder with its state and parts, and the parts no member that is up holds. `ckptctl
// versions` prints it in a cluster.
nlohmann::json ClusterVersionsJson(const v1::StatusResponse& status);
std::string ClusterVersionsText(const v1::StatusResponse& status);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_CLUSTER_COMMAND_H_
