// `ckptctl show VERSION|latest [--json] [--tensors]`: one version and its manifest
// (Admin.GetVersion): tensor count, bytes, per-dtype totals; the tensor list with --tensors (text)
// and always in --json. `latest` is the latest committed version (Admin.Status). Formatting:
// version_format.h (VersionDetailText, VersionDetailJson).
#ifndef CKPT_CLIENT_CKPTCTL_SHOW_COMMAND_H_
#define CKPT_CLIENT_CKPTCTL_SHOW_COMMAND_H_

#include <CLI/CLI.hpp>
#include <string>

#include "client/ckptctl/command.h"

namespace ckpt::ctl {

struct ShowArgs {
  std::string version;
  bool json = false;
  bool tensors = false;
};

CLI::App* AddShowCommand(CLI::App* app, ShowArgs* args);
int RunShowCommand(const GlobalOptions& global, const ShowArgs& args);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_SHOW_COMMAND_H_
