#include "client/ckptctl/command.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ckpt::ctl {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "ckptctl: %s\n", std::string(status.message()).c_str());
  return 1;
}

int UsageError(const absl::Status& status) {
  std::fprintf(stderr, "ckptctl: %s (see ckptctl --help)\n", std::string(status.message()).c_str());
  return 2;
}

std::optional<std::string> MissingCommandText(const CLI::App& app) {
  if (!app.get_subcommands().empty()) return std::nullopt;
  std::vector<std::string> names;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    names.push_back(sub->get_name());
  }
  const std::string commands = absl::StrCat("commands: ", absl::StrJoin(names, ", "));
  // What was not taken for an option or its value: the first word is the command as typed.
  std::vector<std::string> options;
  for (const std::string& word : app.remaining()) {
    if (!word.empty() && word[0] != '-') {
      return absl::StrCat("unknown command '", word, "'; ", commands);
    }
    options.push_back(word);
  }
  return absl::StrCat("a command is needed",
                      options.empty()
                          ? std::string()
                          : absl::StrCat(" (unknown option ", absl::StrJoin(options, " "), ")"),
                      "; ", commands);
}

absl::StatusOr<client::Endpoint> ResolveEndpoint(const GlobalOptions& options) {
  return client::ResolveEndpoint(options.socket_path, options.address, options.credentials);
}

absl::StatusOr<std::unique_ptr<client::DaemonClient>> ConnectAdmin(const GlobalOptions& options) {
  auto endpoint = ResolveEndpoint(options);
  if (!endpoint.ok()) return endpoint.status();
  return client::DaemonClient::Connect(*endpoint);
}

absl::StatusOr<uint64_t> ParseVersionId(const std::string& text) {
  uint64_t v = 0;
  if (text.empty() || text[0] == '-' || text[0] == '+' || !absl::SimpleAtoi(text, &v) || v == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid version '", text, "': expected a version number such as 7"));
  }
  return v;
}

}  // namespace ckpt::ctl
