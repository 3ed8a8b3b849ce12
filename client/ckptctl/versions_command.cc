#include "client/ckptctl/versions_command.h"

#include <iostream>

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
  if (args.json) {
    std::cout << VersionsJson(*versions).dump(2) << "\n";
  } else {
    std::cout << VersionsText(*versions, absl::LocalTimeZone());
  }
  return 0;
}

}  // namespace ckpt::ctl
