#include "client/ckptctl/show_command.h"

#include <iostream>

#include "client/ckptctl/version_format.h"

namespace ckpt::ctl {

CLI::App* AddShowCommand(CLI::App* app, ShowArgs* args) {
  CLI::App* cmd = app->add_subcommand("show", "show one version and its manifest");
  cmd->add_option("VERSION", args->version, "version number, or 'latest' (latest committed)")
      ->required();
  cmd->add_flag("--json", args->json, "print JSON (with every tensor)");
  cmd->add_flag("--tensors", args->tensors, "list every tensor");
  return cmd;
}

int RunShowCommand(const GlobalOptions& global, const ShowArgs& args) {
  uint64_t version = 0;
  if (args.version != "latest") {
    auto parsed = ParseVersionId(args.version);
    if (!parsed.ok()) return UsageError(parsed.status());
    version = *parsed;
  }
  auto client = ConnectAdmin(global);
  if (!client.ok()) return Fail(client.status());
  if (version == 0) {
    auto status = (*client)->Status(global.timeout);
    if (!status.ok()) return Fail(status.status());
    version = status->latest_committed_version();
    if (version == 0) return Fail(absl::NotFoundError("no committed version"));
  }
  auto detail = (*client)->GetVersion(version, global.timeout);
  if (!detail.ok()) return Fail(detail.status());
  if (args.json) {
    std::cout << VersionDetailJson(*detail).dump(2) << "\n";
  } else {
    std::cout << VersionDetailText(*detail, absl::LocalTimeZone(), args.tensors);
  }
  return 0;
}

}  // namespace ckpt::ctl
