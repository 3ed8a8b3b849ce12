// `ckptctl update VERSION|latest [--force] [--json] [--wait-timeout 10m]`: sends a committed
// version to the attached workers (Admin.Update) and waits until they have loaded it.
#ifndef CKPT_CLIENT_CKPTCTL_UPDATE_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_UPDATE_COMMAND_H_

#include <CLI/CLI.hpp>
#include <string>

#include "client/ckptctl/command.h"

namespace ckpt::ctl {

struct UpdateArgs {
  std::string version;
  bool force = false;
  bool json = false;
  std::string wait_timeout = "10m";
};

CLI::App* AddUpdateCommand(CLI::App* app, UpdateArgs* args);
int RunUpdateCommand(const GlobalOptions& global, const UpdateArgs& args);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_UPDATE_COMMAND_H_
