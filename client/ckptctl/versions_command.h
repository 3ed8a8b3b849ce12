// `ckptctl versions [--json]`: every version the daemon holds (Admin.ListVersions). Formatting:
// version_format.h (VersionsText, VersionsJson).
#ifndef CKPT_CLIENT_CKPTCTL_VERSIONS_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_VERSIONS_COMMAND_H_

#include <CLI/CLI.hpp>

#include "client/ckptctl/command.h"

namespace ckpt::ctl {

struct VersionsArgs {
  bool json = false;
};

CLI::App* AddVersionsCommand(CLI::App* app, VersionsArgs* args);
int RunVersionsCommand(const GlobalOptions& global, const VersionsArgs& args);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_VERSIONS_COMMAND_H_
