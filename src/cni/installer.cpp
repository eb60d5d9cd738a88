#include "netsteer/cni/installer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "netsteer/common/file.h"

namespace netsteer::cni {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_conf_name(const fs::path& p) {
  auto e = p.extension();
  return e == ".conflist" || e == ".conf" || e == ".json";
}

Result<json> read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error::from_errno(errno, "open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error::msg(path + " is not a JSON object", EINVAL);
  return j;
}

bool is_type(const json& p, const std::string& type) {
  return p.is_object() && p.value("type", json()).is_string() && p["type"].get<std::string>() == type;
}

}  // namespace

Result<json> with_plugin(const json& conf, const json& plugin) {
  if (!conf.is_object()) return Error::msg("network config is not a JSON object", EINVAL);
  if (!plugin.is_object()) return Error::msg("plugin config is not a JSON object", EINVAL);
  json p = plugin;
  if (!p.contains("type")) p["type"] = kPluginType;
  if (!p["type"].is_string()) return Error::msg("plugin config \"type\" must be a string", EINVAL);
  const std::string type = p["type"].get<std::string>();
  json out;
  if (conf.contains("plugins")) {
    if (!conf["plugins"].is_array() || conf["plugins"].empty())
      return Error::msg("conflist has no plugins array to chain after", EINVAL);
    out = without_plugin(conf, type);
  } else {
    // A single-plugin .conf: becomes a conflist with that plugin first.
    if (!conf.contains("type")) return Error::msg("network config has neither \"plugins\" nor \"type\"", EINVAL);
    json first = conf;
    first.erase("cniVersion");
    first.erase("name");
    out = {{"cniVersion", conf.value("cniVersion", "1.0.0")}, {"name", conf.value("name", "k8s-pod-network")},
           {"plugins", json::array({first})}};
  }
  p.erase("cniVersion");  // conflist entries inherit the list's version
  p.erase("name");
  out["plugins"].push_back(p);
  return out;
}

json without_plugin(const json& conf, const std::string& type) {
  json out = conf;
  if (!out.is_object() || !out.contains("plugins") || !out["plugins"].is_array()) return out;
  json kept = json::array();
  for (const auto& p : out["plugins"])
    if (!is_type(p, type)) kept.push_back(p);
  out["plugins"] = kept;
  return out;
}

Result<std::string> active_conf_file(const std::string& conf_dir) {
  std::error_code ec;
  std::vector<fs::path> names;
  for (const auto& e : fs::directory_iterator(conf_dir, ec))
    if (e.is_regular_file() && is_conf_name(e.path()) && e.path().filename().string()[0] != '.')
      names.push_back(e.path());
  if (ec) return Error::msg("read CNI conf dir " + conf_dir + ": " + ec.message(), ec.value());
  std::sort(names.begin(), names.end());
  for (const auto& n : names)
    if (read_json(n).ok()) return n.string();
  return Error::msg("no CNI network config in " + conf_dir + " (install the main CNI plugin first)", ENOENT);
}

Result<std::string> install(const InstallOptions& o) {
  if (!o.self_path.empty()) {
    std::ifstream in(o.self_path, std::ios::binary);
    if (!in) return Error::from_errno(errno, "read " + o.self_path);
    std::stringstream ss;
    ss << in.rdbuf();
    NS_TRY_STATUS(write_file_atomic((fs::path(o.bin_dir) / kPluginType).string(), ss.str(), 0755));
  }
  NS_TRY(std::string path, active_conf_file(o.conf_dir));
  NS_TRY(json conf, read_json(path));
  NS_TRY(json out, with_plugin(conf, o.plugin));
  std::string target = path;
  if (fs::path(path).extension() != ".conflist") target = (fs::path(path).replace_extension(".conflist")).string();
  if (out != conf || target != path) NS_TRY_STATUS(write_file_atomic(target, out.dump(2) + "\n", 0644));
  if (target != path && ::unlink(path.c_str()) != 0) return Error::from_errno(errno, "remove " + path);
  return target;
}

Status uninstall(const std::string& bin_dir, const std::string& conf_dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(conf_dir, ec)) {
    if (!e.is_regular_file() || !is_conf_name(e.path())) continue;
    auto conf = read_json(e.path());
    if (!conf.ok()) continue;
    json out = without_plugin(*conf, kPluginType);
    if (out != *conf) NS_TRY_STATUS(write_file_atomic(e.path().string(), out.dump(2) + "\n", 0644));
  }
  if (ec) return Error::msg("read CNI conf dir " + conf_dir + ": " + ec.message(), ec.value());
  std::string bin = (fs::path(bin_dir) / kPluginType).string();
  if (::unlink(bin.c_str()) != 0 && errno != ENOENT) return Error::from_errno(errno, "remove " + bin);
  return {};
}

}  // namespace netsteer::cni
