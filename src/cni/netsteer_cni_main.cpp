// netsteer-cni: chained CNI plugin (CNI_COMMAND from the environment, netconf on stdin, result or
// error object on stdout, logs on stderr and the netconf's logFile), and the installer used by the
// DaemonSet's init container (`netsteer-cni install|uninstall ...`).
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <thread>

#include "netsteer/cni/cni.h"
#include "netsteer/cni/installer.h"
#include "netsteer/cni/trace.h"
#include "netsteer/common/log.h"

using namespace netsteer;

namespace {

int installer(int argc, char** argv) {
  CLI::App app{"netsteer-cni installer: chain netsteer-cni into the node's CNI config"};
  app.require_subcommand(1);
  std::string bin_dir = "/opt/cni/bin", conf_dir = "/etc/cni/net.d", plugin_file;
  bool watch = false, no_copy = false;
  auto* ins = app.add_subcommand("install", "copy the plugin and insert it last in the active conflist");
  ins->add_option("--plugin-config", plugin_file, "JSON file with netsteer-cni's netconf entry")->required();
  ins->add_flag("--watch", watch, "stay running and re-insert it when the main plugin rewrites the config");
  ins->add_flag("--no-copy", no_copy, "do not copy the binary into the bin dir");
  auto* un = app.add_subcommand("uninstall", "remove the plugin from every config and the bin dir");
  for (auto* s : {ins, un}) {
    s->add_option("--cni-bin-dir", bin_dir, "CNI bin dir")->capture_default_str();
    s->add_option("--cni-conf-dir", conf_dir, "CNI conf dir")->capture_default_str();
  }
  CLI11_PARSE(app, argc, argv);
  if (*un) {
    if (auto st = cni::uninstall(bin_dir, conf_dir); !st.ok()) {
      spdlog::error("uninstall: {}", st.error().message);
      return 1;
    }
    spdlog::info("netsteer-cni removed from {} and {}", conf_dir, bin_dir);
    return 0;
  }
  std::ifstream f(plugin_file);
  nlohmann::json plugin = nlohmann::json::parse(f, nullptr, false);
  if (!f || plugin.is_discarded() || !plugin.is_object()) {
    spdlog::error("install: {} is not a JSON object", plugin_file);
    return 1;
  }
  cni::InstallOptions o{bin_dir, conf_dir, plugin, no_copy ? "" : "/proc/self/exe"};
  for (bool first = true;; first = false) {
    auto r = cni::install(o);
    if (!r.ok()) {
      spdlog::error("install: {}", r.error().message);
      if (!watch) return 1;
    } else if (first) {
      spdlog::info("netsteer-cni chained into {}", *r);
    }
    if (!watch) return 0;
    o.self_path.clear();  // the binary is copied once
    std::this_thread::sleep_for(std::chrono::seconds(5));
  }
}

}  // namespace

int main(int argc, char** argv) {
  cni::trace::mark(cni::trace::kMain);
  // Until the netconf says otherwise, logs go to stderr: stdout carries only the CNI result.
  (void)log::setup(log::Format::kText, "info", "", true);
  if (argc > 1 && (std::string(argv[1]) == "install" || std::string(argv[1]) == "uninstall" ||
                   std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h"))
    return installer(argc, argv);

  std::string in((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  auto env = cni::env_from_process();
  if (!env.ok()) {
    std::string version = "1.1.0";
    if (auto c = cni::parse_netconf(in); c.ok()) version = c->cni_version;
    spdlog::error("netsteer-cni: {}", env.error().message);
    std::cout << cni::error_json(version, env.error().code, env.error().message) << std::endl;
    return 1;
  }
  cni::Outcome out = cni::run(*env, in);
  if (!out.stdout_text.empty()) std::cout << out.stdout_text << std::endl;
  cni::trace::mark(cni::trace::kEnd);
  cni::trace::write(env->container_id);
  return out.exit_code;
}
