// `ckptctl status [--json]`: the daemon's state (Admin.Status). Formatting: status_format.h.
#ifndef CKPT_CLIENT_CKPTCTL_STATUS_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_STATUS_COMMAND_H_

#include <CLI/CLI.hpp>

#include "client/ckptctl/command.h"

namespace ckpt::ctl {

struct StatusArgs {
  bool json = false;
};

CLI::App* AddStatusCommand(CLI::App* app, StatusArgs* args);
int RunStatusCommand(const GlobalOptions& global, const StatusArgs& args);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_STATUS_COMMAND_H_
