#include "client/ckptctl/update_command.h"

#include <iostream>

#include "client/ckptctl/update_format.h"
#include "common/units.h"

namespace ckpt::ctl {

CLI::App* AddUpdateCommand(CLI::App* app, UpdateArgs* args) {
  CLI::App* cmd = app->add_subcommand(
      "update", "send a committed version to the attached workers and wait until they load it");
  cmd->add_option("VERSION", args->version, "version number or 'latest'")->required();
  cmd->add_flag("--force", args->force, "also resend to workers that hold the version already");
  cmd->add_flag("--json", args->json, "print the result as JSON");
  cmd->add_option("--wait-timeout", args->wait_timeout,
                  "how long to wait for the workers (default 10m)");
  return cmd;
}

int RunUpdateCommand(const GlobalOptions& global, const UpdateArgs& args) {
  uint64_t version = 0;
  if (args.version != "latest") {
    auto parsed = ParseVersionId(args.version);
    if (!parsed.ok()) return UsageError(parsed.status());
    version = *parsed;
  }
  auto wait = ParseDuration(args.wait_timeout);
  if (!wait.ok()) return UsageError(wait.status());
  auto client = ConnectAdmin(global);
  if (!client.ok()) return Fail(client.status());
  v1::UpdateRequest request;
  request.set_version(version);
  request.set_force(args.force);
  auto result = (*client)->Update(request, *wait);
  if (!result.ok()) return Fail(result.status());
  if (args.json) {
    std::cout << UpdateJson(*result).dump(2) << "\n";
  } else {
    std::cout << UpdateText(*result);
  }
  return 0;
}

}  // namespace ckpt::ctl
