#include "client/ckptctl/drop_command.h"

#include <iostream>

namespace ckpt::ctl {

CLI::App* AddDropCommand(CLI::App* app, DropArgs* args) {
  CLI::App* cmd = app->add_subcommand("drop", "retire a committed version or abort a staging one");
  cmd->add_option("VERSION", args->version, "version number")->required();
  return cmd;
}

int RunDropCommand(const GlobalOptions& global, const DropArgs& args) {
  auto version = ParseVersionId(args.version);
  if (!version.ok()) return UsageError(version.status());
  auto client = ConnectAdmin(global);
  if (!client.ok()) return Fail(client.status());
  absl::Status dropped = (*client)->Drop(*version, global.timeout);
  if (!dropped.ok()) return Fail(dropped);
  std::cout << "dropped version " << *version << "\n";
  return 0;
}

}  // namespace ckpt::ctl
