// ckptctl: the operator's command line for ckpt-engined.
//
//   ckptctl [--socket PATH | --address HOST:PORT] [--timeout 5s] status [--json]
//
// Exit codes: 0 success; 1 the command failed (one line on stderr says why); 2 bad usage.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/ckptctl/status_format.h"
#include "client/daemon_client.h"
#include "common/units.h"
#include "common/version.h"

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "ckptctl: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ckptctl: status and control of ckpt-engined", "ckptctl");
  app.set_version_flag("--version", std::string(ckpt::kVersion));
  app.require_subcommand(1);
  std::string socket_path, address, timeout_text = "5s";
  auto* socket_opt = app.add_option(
      "--socket", socket_path,
      "daemon's Unix socket (default: $CKPT_SOCKET, else /run/ckpt-engine/ckpt-engined.sock)");
  auto* address_opt = app.add_option("--address", address, "daemon's TCP address HOST:PORT");
  socket_opt->excludes(address_opt);
  app.add_option("--timeout", timeout_text, "deadline of each request (default 5s)");

  bool json = false;
  CLI::App* status_cmd = app.add_subcommand("status", "show the daemon's state");
  status_cmd->add_flag("--json", json, "print JSON");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::CallForVersion&) {
    std::cout << "ckptctl " << ckpt::kVersion << "\n";
    return 0;
  } catch (const CLI::ParseError& e) {
    // CLI11 has its own exit codes; ours are 0, 1 (the command failed) and 2 (bad usage).
    std::fprintf(stderr, "ckptctl: %s (see ckptctl --help)\n", e.what());
    return 2;
  }

  auto timeout = ckpt::ParseDuration(timeout_text);
  if (!timeout.ok()) {
    std::fprintf(stderr, "ckptctl: --timeout: %s\n",
                 std::string(timeout.status().message()).c_str());
    return 2;
  }
  auto endpoint = ckpt::client::ResolveEndpoint(socket_path, address);
  if (!endpoint.ok()) return Fail(endpoint.status());
  auto client = ckpt::client::DaemonClient::Connect(*endpoint);
  if (!client.ok()) return Fail(client.status());

  if (status_cmd->parsed()) {
    auto status = (*client)->Status(*timeout);
    if (!status.ok()) return Fail(status.status());
    if (json) {
      std::cout << ckpt::ctl::StatusJson(*status).dump(2) << "\n";
    } else {
      std::cout << ckpt::ctl::StatusText(*status);
    }
  }
  return 0;
}
