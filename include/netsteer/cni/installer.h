// netsteer-cni install/uninstall: puts the plugin binary into the node's CNI bin dir and chains it
// last in the node's active network config (the lexically first *.conflist/*.conf/*.json of the
// conf dir, as the runtime picks it). A plain .conf is turned into a .conflist. Idempotent.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "netsteer/common/result.h"

namespace netsteer::cni {

inline constexpr const char* kPluginType = "netsteer-cni";

// Pure: `conf` (a conflist or a single-plugin conf) with `plugin` appended as the last plugin,
// replacing any earlier entry of the same type.
Result<nlohmann::json> with_plugin(const nlohmann::json& conf, const nlohmann::json& plugin);
// Pure: `conf` without plugins of `type`.
nlohmann::json without_plugin(const nlohmann::json& conf, const std::string& type);

// The config file the runtime uses: the first by name that parses as a JSON object.
Result<std::string> active_conf_file(const std::string& conf_dir);

struct InstallOptions {
  std::string bin_dir;
  std::string conf_dir;
  nlohmann::json plugin;     // our netconf entry; "type" defaults to netsteer-cni
  std::string self_path;     // binary to copy; empty: don't copy
};

// Returns the config file that now chains netsteer-cni.
Result<std::string> install(const InstallOptions& o);
// Removes netsteer-cni from every config in conf_dir and the binary from bin_dir.
Status uninstall(const std::string& bin_dir, const std::string& conf_dir);

}  // namespace netsteer::cni
