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
// "gpu_uuids", "versions", "held", "workers", "release", "protocol_version", "backend",
// "updating_version", "pulling" (null, or {"version", "received_bytes", "total_bytes"}),
// "instance", "last_seen_unix_ms"}], "pull": null or PullJson}.
nlohmann::json ClusterJson(const v1::StatusResponse& status);
// One line per member (with its update or pull when it runs one); "not in a cluster" when
// cluster_listen is empty; then this daemon's running or last pull (PullText).
std::string ClusterText(const v1::StatusResponse& status);
// This daemon's running or last pull (Status.pull): every field of PullProgress, sources as
// [{"member", "received_bytes", "error"}].
nlohmann::json PullJson(const v1::PullProgress& pull);
// "pull: version 7 (operator) reading, 1.2 GiB of 2.4 GiB (50%), 3/9 tensors, 2.0 s, 600 MiB/s",
// then its sources (with why one was dropped) and its error.
std::string PullText(const v1::PullProgress& pull);
// The versions every member holds (ClusterMember.held): per version, its part count (0: whole),
// each holder with its state and parts, and the parts no member that is up holds. `ckptctl
// versions` prints it in a cluster.
nlohmann::json ClusterVersionsJson(const v1::StatusResponse& status);
std::string ClusterVersionsText(const v1::StatusResponse& status);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_CLUSTER_COMMAND_H_
