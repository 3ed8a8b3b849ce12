// `ckptctl drop VERSION`: retires a committed version or aborts a staging one (Admin.Drop).
#ifndef CKPT_CLIENT_CKPTCTL_DROP_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_DROP_COMMAND_H_

#include <CLI/CLI.hpp>
#include <string>

#include "client/ckptctl/command.h"

namespace ckpt::ctl {

struct DropArgs {
  std::string version;
};

CLI::App* AddDropCommand(CLI::App* app, DropArgs* args);
int RunDropCommand(const GlobalOptions& global, const DropArgs& args);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_DROP_COMMAND_H_
