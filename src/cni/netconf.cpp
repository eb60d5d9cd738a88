// netsteer-cni: parsing of what the runtime gives the plugin (netconf, prevResult, CNI_* env).
#include <algorithm>
#include <cstdlib>

#include "netsteer/cni/cni.h"
#include "netsteer/protocol/labels.h"

namespace netsteer::cni {

using nlohmann::json;

namespace {

Error config_error(const std::string& field, const std::string& what) {
  return Error::msg("netconf field '" + field + "' must be " + what, kInvalidConfig);
}

Result<std::vector<std::string>> string_list(const json& j, const char* key) {
  std::vector<std::string> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) return config_error(key, "an array of strings");
  for (const auto& v : *it) {
    if (!v.is_string()) return config_error(key, "an array of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

template <typename T>
Result<T> optional_field(const json& j, const char* key, T dflt, const char* what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  try {
    if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) return config_error(key, what);
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!it->is_string()) return config_error(key, what);
    } else {
      if (!it->is_number_integer()) return config_error(key, what);
    }
    return it->get<T>();
  } catch (const json::exception&) {
    return config_error(key, what);
  }
}

}  // namespace

Result<NetConf> parse_netconf(std::string_view bytes) {
  json j = json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (j.is_discarded()) return Error::msg("netconf on stdin is not valid JSON", kDecodeFailure);
  if (!j.is_object()) return Error::msg("netconf on stdin must be a JSON object", kDecodeFailure);
  NetConf c;
  NS_TRY(c.cni_version, optional_field<std::string>(j, "cniVersion", "", "a string"));
  if (c.cni_version.empty()) return Error::msg("netconf has no cniVersion", kInvalidConfig);
  const auto& sv = supported_versions();
  if (std::find(sv.begin(), sv.end(), c.cni_version) == sv.end())
    return Error::msg("unsupported cniVersion " + c.cni_version + " (netsteer-cni supports 0.3.0 to 1.1.0)",
                      kIncompatibleVersion);
  NS_TRY(c.name, optional_field<std::string>(j, "name", "", "a string"));
  NS_TRY(c.type, optional_field<std::string>(j, "type", "", "a string"));
  NS_TRY(c.socket_path, optional_field<std::string>(j, "socketPath", c.socket_path, "a string"));
  if (c.socket_path.empty()) return config_error("socketPath", "a non-empty path");
  NS_TRY(std::string policy, optional_field<std::string>(j, "failurePolicy", "fail", "a string"));
  if (policy == "fail") c.failure_policy = FailurePolicy::kFail;
  else if (policy == "ignore") c.failure_policy = FailurePolicy::kIgnore;
  else return config_error("failurePolicy", "\"fail\" or \"ignore\"");
  NS_TRY(int64_t timeout, optional_field<int64_t>(j, "timeoutMs", 5000, "an integer"));
  if (timeout < 1 || timeout > 600000) return config_error("timeoutMs", "between 1 and 600000");
  c.timeout = std::chrono::milliseconds(timeout);
  NS_TRY(c.log_file, optional_field<std::string>(j, "logFile", "", "a string"));
  NS_TRY(c.log_level, optional_field<std::string>(j, "logLevel", "info", "a string"));
  NS_TRY(c.strict, optional_field<bool>(j, "strict", false, "a boolean"));
  NS_TRY(c.capture_dns, optional_field<bool>(j, "captureDns", true, "a boolean"));
  NS_TRY(std::string dns_upstream, optional_field<std::string>(j, "dnsUpstream", "", "a string"));
  if (!dns_upstream.empty()) {
    auto a = SockAddr::parse(dns_upstream, 53);
    if (!a.ok()) return config_error("dnsUpstream", "ADDR or ADDR:PORT ([V6]:PORT)");
    c.dns_upstream = *a;
  }
  NS_TRY(c.exclude_namespaces, string_list(j, "excludeNamespaces"));
  NS_TRY(c.exclude_pods, string_list(j, "excludePods"));
  NS_TRY(c.exclude_pod_labels, string_list(j, "excludePodLabels"));
  if (auto reqs = protocol::parse_label_requirements(c.exclude_pod_labels); !reqs.ok())
    return Error::msg("netconf excludePodLabels: " + reqs.error().message, kInvalidConfig);

  // Exclusions: the netconf's names mapped onto the control protocol's (one parser for both).
  json ex = json::object();
  for (auto [from, to] : {std::pair{"excludeInboundPorts", "inbound_ports"}, {"excludeOutboundPorts", "outbound_ports"},
                          {"excludeOutboundCIDRs", "outbound_cidrs"}, {"excludeInboundSources", "inbound_sources"}}) {
    auto it = j.find(from);
    if (it != j.end() && !it->is_null()) ex[to] = *it;
  }
  auto exr = protocol::exclusions_from_json(ex);
  if (!exr.ok()) return Error::msg("netconf exclusions: " + exr.error().message, kInvalidConfig);
  c.exclusions = std::move(*exr);
  json udp = json::object();
  for (auto [from, to] : {std::pair{"udpOutboundPorts", "outbound_ports"}, {"udpInboundPorts", "inbound_ports"}}) {
    auto it = j.find(from);
    if (it != j.end() && !it->is_null()) udp[to] = *it;
  }
  auto udpr = protocol::udp_ports_from_json(udp);
  if (!udpr.ok()) return Error::msg("netconf udpOutboundPorts/udpInboundPorts: " + udpr.error().message, kInvalidConfig);
  c.udp = std::move(*udpr);
  json px = json::object();
  for (auto [from, to] : {std::pair{"proxyOutbound", "outbound"}, {"proxyInbound", "inbound"}, {"proxyPodTlvs", "pod_tlvs"}}) {
    auto it = j.find(from);
    if (it != j.end() && !it->is_null()) px[to] = *it;
  }
  auto pxr = protocol::proxy_from_json(px);
  if (!pxr.ok()) return Error::msg("netconf proxyOutbound/proxyInbound/proxyPodTlvs: " + pxr.error().message, kInvalidConfig);
  c.proxy = std::move(*pxr);

  if (auto it = j.find("prevResult"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return config_error("prevResult", "an object");
    c.prev_result = *it;
    NS_TRY_STATUS(result_ips(c.prev_result));
  }
  return c;
}

Result<std::vector<IpAddr>> result_ips(const json& result) {
  std::vector<IpAddr> out;
  auto it = result.find("ips");
  if (it == result.end() || it->is_null()) return out;
  if (!it->is_array()) return Error::msg("prevResult.ips must be an array", kInvalidConfig);
  for (const auto& ip : *it) {
    auto a = ip.is_object() ? ip.find("address") : ip.end();
    if (!ip.is_object() || a == ip.end() || !a->is_string())
      return Error::msg("prevResult.ips[] entries need an \"address\" string", kInvalidConfig);
    // "10.1.2.3/24": the interface address (not the network Prefix::parse would give).
    std::string s = a->get<std::string>();
    auto slash = s.find('/');
    auto p = Prefix::parse(s);  // validates the length too
    auto addr = IpAddr::parse(s.substr(0, slash));
    if (!p.ok() || !addr.ok() || slash == std::string::npos)
      return Error::msg("prevResult.ips[].address '" + s + "' is not ADDRESS/LENGTH", kInvalidConfig);
    if (std::find(out.begin(), out.end(), *addr) == out.end()) out.push_back(*addr);
  }
  return out;
}

Result<std::map<std::string, std::string>> parse_cni_args(std::string_view s) {
  std::map<std::string, std::string> out;
  while (!s.empty()) {
    size_t end = s.find(';');
    std::string_view kv = s.substr(0, end);
    s = end == std::string_view::npos ? std::string_view{} : s.substr(end + 1);
    if (kv.empty()) continue;
    size_t eq = kv.find('=');
    if (eq == std::string_view::npos || eq == 0)
      return Error::msg("CNI_ARGS: '" + std::string(kv) + "' is not KEY=VALUE", kInvalidEnv);
    out[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
  }
  return out;
}

namespace {
std::string arg(const Env& e, const char* k) {
  auto it = e.args.find(k);
  return it == e.args.end() ? "" : it->second;
}
std::string getenv_str(const char* k) {
  const char* v = std::getenv(k);
  return v ? v : "";
}
}  // namespace

std::string Env::pod_namespace() const { return arg(*this, "K8S_POD_NAMESPACE"); }
std::string Env::pod_name() const { return arg(*this, "K8S_POD_NAME"); }
std::string Env::pod_uid() const { return arg(*this, "K8S_POD_UID"); }

Result<Env> env_from_process() {
  Env e;
  e.command = getenv_str("CNI_COMMAND");
  e.container_id = getenv_str("CNI_CONTAINERID");
  e.netns = getenv_str("CNI_NETNS");
  e.ifname = getenv_str("CNI_IFNAME");
  NS_TRY(e.args, parse_cni_args(getenv_str("CNI_ARGS")));
  NS_TRY_STATUS(validate_env(e));
  return e;
}

Status validate_env(const Env& e) {
  if (e.command.empty()) return Error::msg("CNI_COMMAND is not set", kInvalidEnv);
  auto need = [&](const std::string& v, const char* name) -> Status {
    if (v.empty()) return Error::msg(std::string(name) + " is required for " + e.command, kInvalidEnv);
    return {};
  };
  if (e.command == "ADD" || e.command == "CHECK") {
    NS_TRY_STATUS(need(e.container_id, "CNI_CONTAINERID"));
    NS_TRY_STATUS(need(e.netns, "CNI_NETNS"));
    NS_TRY_STATUS(need(e.ifname, "CNI_IFNAME"));
  } else if (e.command == "DEL") {
    NS_TRY_STATUS(need(e.container_id, "CNI_CONTAINERID"));
  } else if (e.command != "VERSION" && e.command != "STATUS" && e.command != "GC") {
    return Error::msg("unknown CNI_COMMAND '" + e.command + "'", kInvalidEnv);
  }
  return {};
}

std::string pod_key(const Env& env) {
  if (std::string uid = env.pod_uid(); protocol::validate_uid(uid).ok()) return uid;
  std::string key = "c-";
  for (char c : env.container_id) {
    if (key.size() >= 66) break;
    bool okc = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (okc) key += c;
  }
  return key;
}

bool glob_match(std::string_view p, std::string_view t) {
  // '*' matches any run (including '/'); everything else literally. Iterative with backtracking.
  size_t pi = 0, ti = 0, star = std::string_view::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (pi < p.size() && p[pi] == t[ti]) {
      ++pi;
      ++ti;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

bool skipped(const NetConf& conf, const Env& env) {
  std::string ns = env.pod_namespace();
  if (!ns.empty() && std::find(conf.exclude_namespaces.begin(), conf.exclude_namespaces.end(), ns) !=
                         conf.exclude_namespaces.end())
    return true;
  std::string full = ns + "/" + env.pod_name();
  return std::any_of(conf.exclude_pods.begin(), conf.exclude_pods.end(),
                     [&](const std::string& p) { return glob_match(p, full); });
}

std::string error_json(const std::string& cni_version, int code, const std::string& msg, const std::string& details) {
  json j{{"cniVersion", cni_version.empty() ? "1.1.0" : cni_version}, {"code", code}, {"msg", msg}};
  if (!details.empty()) j["details"] = details;
  return j.dump();
}

}  // namespace netsteer::cni
