// `ckptctl pull [VERSION|latest] [--no-update] [--json] [--wait-timeout 30m]`: copies a committed
// version from the cluster's members that hold it into this daemon (Admin.Pull; a member that
// joined late or restarted), verified, then sends it to this daemon's workers (unless --no-update).
#ifndef CKPT_CLIENT_CKPTCTL_PULL_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_PULL_COMMAND_H_

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "client/ckptctl/command.h"
#include "proto/admin.pb.h"

namespace ckpt::ctl {

struct PullArgs {
  std::string version = "latest";
  bool no_update = false;
  bool json = false;
  std::string wait_timeout = "30m";
};

CLI::App* AddPullCommand(CLI::App* app, PullArgs* args);
int RunPullCommand(const GlobalOptions& global, const PullArgs& args);

// {"version", "total_bytes", "seconds", "sources": [{"node_name", "bytes"}], "workers": N}.
nlohmann::json PullJson(const v1::PullResponse& r);
std::string PullText(const v1::PullResponse& r);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_PULL_COMMAND_H_
