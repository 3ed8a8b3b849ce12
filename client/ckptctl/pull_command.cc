#include "client/ckptctl/pull_command.h"

#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/units.h"

namespace ckpt::ctl {

CLI::App* AddPullCommand(CLI::App* app, PullArgs* args) {
  CLI::App* cmd = app->add_subcommand(
      "pull",
      "copy a version from the cluster's members into this daemon, then update its workers");
  cmd->add_option("version", args->version, "the version, or latest (the newest a member holds)");
  cmd->add_flag("--no-update", args->no_update, "do not send it to this daemon's workers");
  cmd->add_flag("--json", args->json, "print JSON");
  cmd->add_option("--wait-timeout", args->wait_timeout,
                  "how long to wait for the pull and the update (default 30m)");
  return cmd;
}

nlohmann::json PullJson(const v1::PullResponse& r) {
  nlohmann::json sources = nlohmann::json::array();
  for (int i = 0; i < r.sources_size(); ++i) {
    sources.push_back({{"node_name", r.sources(i)},
                       {"bytes", i < r.source_bytes_size() ? r.source_bytes(i) : 0}});
  }
  return {{"version", r.info().version()},
          {"total_bytes", r.info().total_bytes()},
          {"seconds", r.seconds()},
          {"sources", std::move(sources)},
          {"workers", r.update().workers_size()}};
}

std::string PullText(const v1::PullResponse& r) {
  std::vector<std::string> from;
  for (int i = 0; i < r.sources_size(); ++i) {
    from.push_back(absl::StrCat(
        r.sources(i), " (", FormatBytes(i < r.source_bytes_size() ? r.source_bytes(i) : 0), ")"));
  }
  std::string out =
      absl::StrCat("pulled version ", r.info().version(), ": ", FormatBytes(r.info().total_bytes()),
                   " from ", absl::StrJoin(from, ", "), " in ",
                   absl::StrFormat("%.2f", r.seconds()), " s, checksums verified\n");
  if (r.update().workers_size() > 0) {
    absl::StrAppend(&out, "sent to ", r.update().workers_size(), " workers of this daemon\n");
  }
  return out;
}

int RunPullCommand(const GlobalOptions& global, const PullArgs& args) {
  uint64_t version = 0;
  if (args.version != "latest" && (!absl::SimpleAtoi(args.version, &version) || version == 0)) {
    std::cerr << "ckptctl: pull: the version is a positive number or latest, not '" << args.version
              << "'\n";
    return 2;
  }
  auto wait = ParseDuration(args.wait_timeout);
  if (!wait.ok() || *wait <= absl::ZeroDuration()) {
    std::cerr << "ckptctl: pull: --wait-timeout: a positive duration (e.g. 30m), not '"
              << args.wait_timeout << "'\n";
    return 2;
  }
  auto client = ConnectAdmin(global);
  if (!client.ok()) return Fail(client.status());
  auto pulled = (*client)->Pull(version, !args.no_update, *wait);
  if (!pulled.ok()) return Fail(pulled.status());
  if (args.json) {
    std::cout << PullJson(*pulled).dump(2) << "\n";
  } else {
    std::cout << PullText(*pulled);
  }
  return 0;
}

}  // namespace ckpt::ctl
