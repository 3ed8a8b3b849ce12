#include "client/ckptctl/status_command.h"

#include <iostream>

#include "client/ckptctl/status_format.h"

namespace ckpt::ctl {

CLI::App* AddStatusCommand(CLI::App* app, StatusArgs* args) {
  CLI::App* cmd = app->add_subcommand("status", "show the daemon's state");
  cmd->add_flag("--json", args->json, "print JSON");
  return cmd;
}

int RunStatusCommand(const GlobalOptions& global, const StatusArgs& args) {
  auto client = ConnectAdmin(global);
  if (!client.ok()) return Fail(client.status());
  auto status = (*client)->Status(global.timeout);
  if (!status.ok()) return Fail(status.status());
  if (args.json) {
    std::cout << StatusJson(*status).dump(2) << "\n";
  } else {
    std::cout << StatusText(*status);
  }
  return 0;
}

}  // namespace ckpt::ctl
