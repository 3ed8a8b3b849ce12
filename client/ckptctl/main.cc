// ckptctl: the operator's command line for ckpt-engined.
//
//   ckptctl [--socket PATH | --address HOST:PORT [--tls-ca F] [--tls-cert F --tls-key F]
//           [--token-file F]] [--timeout 5s] COMMAND ...
//     status [--json]                     the daemon's state
//     versions [--json]                   the versions it holds
//     show VERSION|latest [--json] [--tensors]
//     push FILE.safetensors... [--wait] [--version N] [--label L] [--json] [--load-timeout 30m]
//     drop VERSION
//     update VERSION|latest [--force] [--json] [--wait-timeout 10m]
//     cluster [--json]                    the cluster's members (docs/cluster.md)
//     pull [VERSION|latest] [--no-update] [--json] [--wait-timeout 30m]
//                                         copy a version from the members, update this daemon's
//
// The global options may also come after the command (`ckptctl status --socket PATH`).
//
// Exit codes: 0 success; 1 the command failed (one line on stderr says why); 2 bad usage. Each
// command lives in <name>_command.{h,cc}.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>

#include "client/ckptctl/cluster_command.h"
#include "client/ckptctl/command.h"
#include "client/ckptctl/drop_command.h"
#include "client/ckptctl/pull_command.h"
#include "client/ckptctl/push_command.h"
#include "client/ckptctl/show_command.h"
#include "client/ckptctl/status_command.h"
#include "client/ckptctl/update_command.h"
#include "client/ckptctl/versions_command.h"
#include "common/units.h"
#include "common/version.h"

int main(int argc, char** argv) {
  using namespace ckpt::ctl;
  CLI::App app("ckptctl: status and control of ckpt-engined", "ckptctl");
  app.set_version_flag("--version", std::string(ckpt::kVersion));
  app.require_subcommand(1);
  // Options a command does not know go to ckptctl itself, so that the global options are taken
  // after the command too. Set before the commands are added: they inherit it.
  app.fallthrough();
  GlobalOptions global;
  std::string timeout_text = "5s";
  auto* socket_opt = app.add_option(
      "--socket", global.socket_path,
      "daemon's Unix socket (default: $CKPT_SOCKET, else /run/ckpt-engine/ckpt-engined.sock)");
  auto* address_opt = app.add_option("--address", global.address, "daemon's TCP address HOST:PORT");
  socket_opt->excludes(address_opt);
  app.add_option("--tls-ca", global.credentials.tls_ca,
                 "TCP: CA file (PEM) of the daemon's certificate; turns TLS on ($CKPT_TLS_CA)");
  app.add_option("--tls-cert", global.credentials.tls_cert,
                 "TCP: client certificate (PEM) for mTLS ($CKPT_TLS_CERT)");
  app.add_option("--tls-key", global.credentials.tls_key,
                 "TCP: key (PEM) of --tls-cert ($CKPT_TLS_KEY)");
  app.add_option("--token-file", global.credentials.token_file,
                 "TCP: file whose first line is a bearer token ($CKPT_TOKEN_FILE)");
  app.add_option("--timeout", timeout_text, "deadline of each request (default 5s)");

  StatusArgs status_args;
  VersionsArgs versions_args;
  ShowArgs show_args;
  PushArgs push_args;
  DropArgs drop_args;
  UpdateArgs update_args;
  ClusterArgs cluster_args;
  PullArgs pull_args;
  CLI::App* status_cmd = AddStatusCommand(&app, &status_args);
  CLI::App* versions_cmd = AddVersionsCommand(&app, &versions_args);
  CLI::App* show_cmd = AddShowCommand(&app, &show_args);
  CLI::App* push_cmd = AddPushCommand(&app, &push_args);
  CLI::App* drop_cmd = AddDropCommand(&app, &drop_args);
  CLI::App* update_cmd = AddUpdateCommand(&app, &update_args);
  CLI::App* cluster_cmd = AddClusterCommand(&app, &cluster_args);
  CLI::App* pull_cmd = AddPullCommand(&app, &pull_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::CallForVersion&) {
    std::cout << "ckptctl " << ckpt::kVersion << "\n";
    return 0;
  } catch (const CLI::ParseError& e) {
    // CLI11 has its own exit codes; ours are 0, 1 (the command failed) and 2 (bad usage). Without
    // a command CLI11 would only say that one is required: name what was typed and the commands.
    const std::optional<std::string> missing = MissingCommandText(app);
    std::fprintf(stderr, "ckptctl: %s (see ckptctl --help)\n",
                 missing.has_value() ? missing->c_str() : e.what());
    return 2;
  }

  auto timeout = ckpt::ParseDuration(timeout_text);
  if (!timeout.ok()) {
    std::fprintf(stderr, "ckptctl: --timeout: %s\n",
                 std::string(timeout.status().message()).c_str());
    return 2;
  }
  global.timeout = *timeout;

  if (status_cmd->parsed()) return RunStatusCommand(global, status_args);
  if (versions_cmd->parsed()) return RunVersionsCommand(global, versions_args);
  if (show_cmd->parsed()) return RunShowCommand(global, show_args);
  if (push_cmd->parsed()) return RunPushCommand(global, push_args);
  if (drop_cmd->parsed()) return RunDropCommand(global, drop_args);
  if (update_cmd->parsed()) return RunUpdateCommand(global, update_args);
  if (cluster_cmd->parsed()) return RunClusterCommand(global, cluster_args);
  if (pull_cmd->parsed()) return RunPullCommand(global, pull_args);
  return 2;
}
