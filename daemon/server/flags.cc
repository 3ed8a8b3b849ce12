#include "daemon/server/flags.h"

#include <CLI/CLI.hpp>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "common/version.h"

namespace ckpt::daemon {

absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv) {
  CLI::App app(
      "ckpt-engined: moves new checkpoint versions into the inference workers of this node",
      "ckpt-engined");
  app.set_version_flag("--version", std::string(kVersion));
  std::string config_file;
  app.add_option("--config", config_file, "TOML config file (flags override its keys)");
  bool check_config = false;
  app.add_flag("--check-config", check_config,
               "check the config file and flags as start-up does (values, relations between keys, "
               "the token and certificate files), print 'config ok' and exit 0 without starting; "
               "exit 2 with the error otherwise");

  // Flags are read as text and applied through SetConfigValue, so that a flag and a TOML key are
  // checked by one piece of code and fail with the same message.
  std::map<std::string, std::string> flag_values;
  std::map<std::string, CLI::Option*> options;
  for (const ConfigKey& key : ConfigKeys()) {
    std::string flag = absl::StrCat("--", absl::StrReplaceAll(key.name, {{"_", "-"}}));
    options[key.name] = app.add_option(
        flag, flag_values[key.name],
        absl::StrCat(key.help, " (default: ", *key.default_text ? key.default_text : "empty", ")"));
  }

  CommandLine result;
  try {
    // CLI11 reports through exceptions; they end here, at the module boundary.
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    result.exit_now = true;
    result.output = app.help();
    return result;
  } catch (const CLI::CallForVersion&) {
    result.exit_now = true;
    result.output = absl::StrCat("ckpt-engined ", kVersion, "\n");
    return result;
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(absl::StrCat(e.what(), " (see ckpt-engined --help)"));
  }

  if (!config_file.empty()) RETURN_IF_ERROR(ApplyConfigFile(result.config, config_file));
  for (const ConfigKey& key : ConfigKeys()) {
    if (options[key.name]->count() == 0) continue;
    absl::Status s = SetConfigValue(result.config, key.name, flag_values[key.name]);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag ", options[key.name]->get_name(), ": ", s.message()));
    }
  }
  RETURN_IF_ERROR(ValidateConfig(result.config));
  result.check_config = check_config;
  return result;
}

}  // namespace ckpt::daemon
