#include "netsteer/protocol/messages.h"
#include "netsteer/protocol/labels.h"

#include <algorithm>
#include <array>

namespace netsteer::protocol {

using nlohmann::json;

namespace {

constexpr std::array<std::pair<MsgType, std::string_view>, 11> kTypes{{
    {MsgType::kHello, "hello"},
    {MsgType::kAdd, "add"},
    {MsgType::kDel, "del"},
    {MsgType::kList, "list"},
    {MsgType::kStatus, "status"},
    {MsgType::kSnapshot, "snapshot"},
    {MsgType::kCheck, "check"},
    {MsgType::kInspect, "inspect"},
    {MsgType::kHandover, "handover"},
    {MsgType::kConns, "conns"},
    {MsgType::kLease, "lease"},
}};

Error field_error(std::string_view field, std::string_view want) {
  return Error::msg("field '" + std::string(field) + "' must be " + std::string(want), EINVAL);
}

// Optional typed getters: absent → default; present with the wrong type → error naming the field.
Result<std::string> get_string(const json& j, const char* field, bool required = false) {
  auto it = j.find(field);
  if (it == j.end() || (it->is_null() && !required)) {
    if (required) return Error::msg(std::string("missing field '") + field + "'", EINVAL);
    return std::string();
  }
  if (!it->is_string()) return field_error(field, "a string");
  return it->get<std::string>();
}

Result<bool> get_bool(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return false;
  if (!it->is_boolean()) return field_error(field, "a boolean");
  return it->get<bool>();
}

Result<std::optional<uint64_t>> get_u64(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return std::optional<uint64_t>();
  if (!it->is_number_unsigned()) return field_error(field, "a non-negative integer");
  return std::optional<uint64_t>(it->get<uint64_t>());
}

Result<std::vector<std::string>> get_strings(const json& j, const char* field) {
  std::vector<std::string> out;
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) return field_error(field, "an array of strings");
  if (it->size() > 4096) return field_error(field, "an array of at most 4096 entries");
  for (const auto& e : *it) {
    if (!e.is_string()) return field_error(field, "an array of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

Result<std::vector<uint16_t>> get_ports(const json& j, const char* field) {
  std::vector<uint16_t> out;
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) return field_error(field, "an array of ports");
  if (it->size() > 256) return field_error(field, "an array of at most 256 ports");
  for (const auto& e : *it) {
    if (!e.is_number_unsigned() || e.get<uint64_t>() == 0 || e.get<uint64_t>() > 65535)
      return field_error(field, "an array of ports 1..65535");
    out.push_back(static_cast<uint16_t>(e.get<uint64_t>()));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Result<std::vector<Prefix>> get_prefixes(const json& j, const char* field) {
  NS_TRY(auto strs, get_strings(j, field));
  if (strs.size() > 256) return field_error(field, "an array of at most 256 prefixes");
  std::vector<Prefix> out;
  for (const auto& s : strs) {
    auto p = Prefix::parse(s);
    if (!p.ok()) return std::move(p).error().wrap(std::string("field '") + field + "'");
    out.push_back(*p);
  }
  return out;
}

json prefixes_to_json(const std::vector<Prefix>& v) {
  json a = json::array();
  for (const auto& p : v) a.push_back(p.str());
  return a;
}

Result<PodSpec> pod_from_json(const json& j) {
  if (!j.is_object()) return field_error("pod", "an object");
  PodSpec p;
  NS_TRY(p.uid, get_string(j, "uid", true));
  NS_TRY_STATUS(validate_uid(p.uid));
  NS_TRY(p.name, get_string(j, "name"));
  NS_TRY(p.namespace_, get_string(j, "namespace"));
  NS_TRY(p.netns_path, get_string(j, "netns_path"));
  if (p.name.size() > 253 || p.namespace_.size() > 253) return field_error("name/namespace", "at most 253 chars");
  if (p.netns_path.size() > 4096) return field_error("netns_path", "a path of at most 4096 chars");
  NS_TRY(auto ips, get_strings(j, "ips"));
  if (ips.size() > 16) return field_error("ips", "an array of at most 16 addresses");
  for (const auto& s : ips) {
    auto a = IpAddr::parse(s);
    if (!a.ok()) return std::move(a).error().wrap("field 'ips'");
    p.ips.push_back(*a);
  }
  NS_TRY(p.strict, get_bool(j, "strict"));
  NS_TRY(p.no_dns, get_bool(j, "no_dns"));
  NS_TRY(auto dns_up, get_string(j, "dns_upstream"));
  if (!dns_up.empty()) {
    auto a = SockAddr::parse(dns_up, 53);
    if (!a.ok()) return std::move(a).error().wrap("field 'dns_upstream'");
    p.dns_upstream = *a;
  }
  NS_TRY(p.skip_labels, get_strings(j, "skip_labels"));
  if (p.skip_labels.size() > 64) return field_error("skip_labels", "an array of at most 64 requirements");
  if (auto reqs = parse_label_requirements(p.skip_labels); !reqs.ok())
    return std::move(reqs).error().wrap("field 'skip_labels'");
  auto ex = j.find("exclusions");
  if (ex != j.end() && !ex->is_null()) {
    NS_TRY(p.exclusions, exclusions_from_json(*ex));
  }
  if (auto u = j.find("udp"); u != j.end() && !u->is_null()) {
    NS_TRY(p.udp, udp_ports_from_json(*u));
  }
  if (auto x = j.find("proxy"); x != j.end() && !x->is_null()) {
    NS_TRY(p.proxy, proxy_from_json(*x));
  }
  return p;
}

}  // namespace

std::string_view to_string(MsgType t) {
  for (const auto& [k, v] : kTypes)
    if (k == t) return v;
  return "?";
}

Status validate_uid(std::string_view uid) {
  if (uid.empty() || uid.size() > 128) return Error::msg("pod uid must be 1..128 characters", EINVAL);
  if (uid == "." || uid == "..") return Error::msg("pod uid must not be '.' or '..'", EINVAL);
  for (char c : uid) {
    bool okc = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '_' || c == '.';
    if (!okc) return Error::msg("pod uid may only contain [A-Za-z0-9._-]", EINVAL);
  }
  return {};
}

json exclusions_to_json(const Exclusions& e) {
  return json{{"inbound_ports", e.inbound_ports},
              {"outbound_ports", e.outbound_ports},
              {"outbound_cidrs", prefixes_to_json(e.outbound_cidrs)},
              {"inbound_sources", prefixes_to_json(e.inbound_sources)}};
}

Result<Exclusions> exclusions_from_json(const json& j) {
  if (!j.is_object()) return field_error("exclusions", "an object");
  Exclusions e;
  NS_TRY(e.inbound_ports, get_ports(j, "inbound_ports"));
  NS_TRY(e.outbound_ports, get_ports(j, "outbound_ports"));
  NS_TRY(e.outbound_cidrs, get_prefixes(j, "outbound_cidrs"));
  NS_TRY(e.inbound_sources, get_prefixes(j, "inbound_sources"));
  return e;
}

json udp_ports_to_json(const UdpPorts& u) {
  return json{{"outbound_ports", u.outbound_ports}, {"inbound_ports", u.inbound_ports}};
}

Result<UdpPorts> udp_ports_from_json(const json& j) {
  if (!j.is_object()) return field_error("udp", "an object");
  UdpPorts u;
  for (auto [field, to] : {std::pair{"outbound_ports", &u.outbound_ports}, {"inbound_ports", &u.inbound_ports}}) {
    auto ports = get_ports(j, field);
    if (!ports.ok()) return std::move(ports).error().wrap("udp");
    *to = std::move(*ports);
  }
  // 53 is DNS (captureDns / no_dns); the agent's own ports cannot be captured.
  for (const auto* v : {&u.outbound_ports, &u.inbound_ports})
    for (uint16_t port : *v)
      if (port == 53 || port == kPortOutbound || port == kPortInbound || port == kPortTunnel || port == kPortDns)
        return field_error("udp", "ports other than 53 (DNS has its own switch) and the agent's 15001/15006/15008/15053");
  return u;
}

json proxy_to_json(const ProxyHandoff& p) {
  json j{{"pod_tlvs", p.pod_tlvs}};
  if (p.outbound) j["outbound"] = p.outbound->str();
  if (p.inbound) j["inbound"] = p.inbound->str();
  return j;
}

Result<ProxyHandoff> proxy_from_json(const json& j) {
  if (!j.is_object()) return field_error("proxy", "an object");
  ProxyHandoff p;
  for (auto [field, to] : {std::pair{"outbound", &p.outbound}, {"inbound", &p.inbound}}) {
    NS_TRY(auto s, get_string(j, field));
    if (s.empty()) continue;
    auto a = SockAddr::parse(s, 0);
    if (!a.ok() || a->port() == 0)
      return Error::msg(std::string("field 'proxy.") + field + "' must be ADDR:PORT or [V6]:PORT", EINVAL);
    *to = *a;
  }
  NS_TRY(p.pod_tlvs, get_bool(j, "pod_tlvs"));
  return p;
}

json pod_to_json(const PodSpec& p) {
  json ips = json::array();
  for (const auto& a : p.ips) ips.push_back(a.str());
  json j{{"uid", p.uid}, {"name", p.name}, {"namespace", p.namespace_}, {"ips", ips},
         {"exclusions", exclusions_to_json(p.exclusions)}, {"strict", p.strict}};
  if (!p.netns_path.empty()) j["netns_path"] = p.netns_path;
  if (!p.skip_labels.empty()) j["skip_labels"] = p.skip_labels;
  if (p.no_dns) j["no_dns"] = true;
  if (p.dns_upstream) j["dns_upstream"] = p.dns_upstream->str();
  if (!p.udp.empty()) j["udp"] = udp_ports_to_json(p.udp);
  if (!p.proxy.empty() || p.proxy.pod_tlvs) j["proxy"] = proxy_to_json(p.proxy);
  return j;
}

Result<Request> decode_request(std::string_view bytes) {
  if (bytes.size() > kMaxMessageSize) return Error::msg("message too large", EMSGSIZE);
  json j = json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error::msg("malformed JSON", EINVAL);
  if (!j.is_object()) return Error::msg("message must be a JSON object", EINVAL);
  Request r;
  NS_TRY(std::string type, get_string(j, "type", true));
  auto it = std::find_if(kTypes.begin(), kTypes.end(), [&](const auto& kv) { return kv.second == type; });
  if (it == kTypes.end()) return Error::msg("unknown message type '" + type + "'", EINVAL);
  r.type = it->first;
  auto v = j.find("version");
  if (v == j.end()) return Error::msg("missing field 'version'", EINVAL);
  if (!v->is_number_integer()) return field_error("version", "an integer");
  r.version = v->get<int>();
  if (r.version != kVersion)
    return Error::msg("unsupported protocol version " + std::to_string(r.version) + " (agent speaks " +
                          std::to_string(kVersion) + ")",
                      EPROTONOSUPPORT);
  switch (r.type) {
    case MsgType::kAdd: {
      auto p = j.find("pod");
      if (p == j.end()) return Error::msg("missing field 'pod'", EINVAL);
      NS_TRY(r.pod, pod_from_json(*p));
      break;
    }
    case MsgType::kDel:
    case MsgType::kCheck:
    case MsgType::kInspect: {
      NS_TRY(r.uid, get_string(j, "uid"));
      NS_TRY(r.netns_ino, get_u64(j, "netns_ino"));
      NS_TRY(r.netns_dev, get_u64(j, "netns_dev"));
      if (r.uid.empty() && !r.netns_ino)
        return Error::msg("'" + type + "' needs 'uid' or 'netns_ino'", EINVAL);
      if (!r.uid.empty()) NS_TRY_STATUS(validate_uid(r.uid));
      if (auto p = j.find("pod"); r.type == MsgType::kCheck && p != j.end() && !p->is_null()) {
        NS_TRY(r.pod, pod_from_json(*p));
        if (r.pod.uid != r.uid) return Error::msg("'check': pod.uid must equal uid", EINVAL);
      }
      break;
    }
    case MsgType::kConns: {
      NS_TRY(r.uid, get_string(j, "uid"));
      if (!r.uid.empty()) NS_TRY_STATUS(validate_uid(r.uid));
      break;
    }
    case MsgType::kLease: {
      NS_TRY(r.uid, get_string(j, "uid"));
      NS_TRY(r.pod_name, get_string(j, "name"));
      if (r.uid.empty() == r.pod_name.empty()) return Error::msg("'lease' needs exactly one of 'uid' and 'name'", EINVAL);
      if (!r.uid.empty()) NS_TRY_STATUS(validate_uid(r.uid));
      if (!r.pod_name.empty() && r.pod_name.find('/') == std::string::npos)
        return Error::msg("field 'name' must be NAMESPACE/NAME", EINVAL);
      NS_TRY(r.listeners, get_strings(j, "listeners"));
      for (const auto& l : r.listeners)
        if (l != "outbound" && l != "inbound" && l != "tunnel")
          return Error::msg("field 'listeners': '" + l + "' is not outbound, inbound or tunnel", EINVAL);
      NS_TRY(auto ex, get_u64(j, "exempt_uid"));
      if (ex && *ex > 0xfffffffeu) return Error::msg("field 'exempt_uid' must be a uid", EINVAL);
      if (ex) r.exempt_uid = static_cast<uint32_t>(*ex);
      break;
    }
    case MsgType::kSnapshot: {
      if (!j.contains("uids")) return Error::msg("missing field 'uids'", EINVAL);
      NS_TRY(r.uids, get_strings(j, "uids"));
      for (const auto& u : r.uids) NS_TRY_STATUS(validate_uid(u));
      break;
    }
    default:
      break;
  }
  return r;
}

std::string encode_request(const Request& r) {
  json j{{"type", to_string(r.type)}, {"version", r.version}};
  switch (r.type) {
    case MsgType::kAdd:
      j["pod"] = pod_to_json(r.pod);
      break;
    case MsgType::kDel:
    case MsgType::kCheck:
    case MsgType::kInspect:
      if (!r.uid.empty()) j["uid"] = r.uid;
      if (r.netns_ino) j["netns_ino"] = *r.netns_ino;
      if (r.netns_dev) j["netns_dev"] = *r.netns_dev;
      if (r.type == MsgType::kCheck && !r.pod.uid.empty()) j["pod"] = pod_to_json(r.pod);
      break;
    case MsgType::kSnapshot:
      j["uids"] = r.uids;
      break;
    case MsgType::kConns:
      if (!r.uid.empty()) j["uid"] = r.uid;
      break;
    case MsgType::kLease:
      if (!r.uid.empty()) j["uid"] = r.uid;
      if (!r.pod_name.empty()) j["name"] = r.pod_name;
      if (!r.listeners.empty()) j["listeners"] = r.listeners;
      if (r.exempt_uid) j["exempt_uid"] = *r.exempt_uid;
      break;
    default:
      break;
  }
  return j.dump();
}

Result<Reply> decode_reply(std::string_view bytes) {
  json j = json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error::msg("malformed reply from agent", EPROTO);
  auto okit = j.find("ok");
  if (okit == j.end() || !okit->is_boolean()) return Error::msg("reply without boolean 'ok'", EPROTO);
  Reply r;
  r.ok = okit->get<bool>();
  auto e = j.find("error");
  if (e != j.end() && e->is_string()) r.error = e->get<std::string>();
  auto en = j.find("errno");
  if (en != j.end() && en->is_number_integer()) r.err_no = en->get<int>();
  j.erase("ok");
  j.erase("error");
  j.erase("errno");
  r.data = std::move(j);
  return r;
}

std::string encode_reply(const Reply& r) {
  json j = r.data.is_object() ? r.data : json::object();
  j["ok"] = r.ok;
  j["error"] = r.error;
  if (r.err_no) j["errno"] = r.err_no;
  return j.dump();
}

}  // namespace netsteer::protocol
