#include "client/ckptctl/versions_command.h"

#include <iostream>

#include "client/ckptctl/cluster_command.h"
#include "client/ckptctl/version_format.h"

namespace ckpt::ctl {

CLI::App* AddVersionsCommand(CLI::App* app, VersionsArgs* args) {
  CLI::App* cmd = app->add_subcommand("versions", "list the checkpoint versions the daemon holds");
  cmd->add_flag("--json", args->json, "print JSON");
  return cmd;
}

int RunVersionsCommand(const GlobalOptions& global, const VersionsArgs& args) {
  auto client = ConnectAdmin(global);
  if (!client.ok()) return Fail(client.status());
  auto versions = (*client)->ListVersions(global.timeout);
  if (!versions.ok()) return Fail(versions.status());
  // In a cluster: what every member holds too (whole, or which parts).
  auto status = (*client)->Status(global.timeout);
  if (!status.ok()) return Fail(status.status());
  const bool cluster = !status->cluster_listen().empty();
  if (args.json) {
    nlohmann::json j = VersionsJson(*versions);
    if (cluster) j["cluster"] = ClusterVersionsJson(*status);
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << VersionsText(*versions, absl::LocalTimeZone());
    if (cluster) {
      std::cout << "\ncluster (every member, as last seen):\n" << ClusterVersionsText(*status);
    }
  }
  return 0;
}

}  // namespace ckpt::ctl
