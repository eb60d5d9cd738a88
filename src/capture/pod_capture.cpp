#include "netsteer/capture/pod_capture.h"

#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <linux/ip.h>

#include <chrono>
#include <cstring>

#include "netsteer/capture/devconf.h"

namespace netsteer::capture {

using nlohmann::json;

namespace {

// /proc/sys/net resolves against the calling thread's netns at open time.
Status write_sysctl(const std::string& key, const std::string& value) {
  std::string path = "/proc/sys/" + key;
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return Error::from_errno(errno, "open " + path);
  if (::write(fd.get(), value.data(), value.size()) < 0) return Error::from_errno(errno, "write " + path);
  return {};
}

// A saved value back in place: per-interface devconf over rtnetlink (also the keys older agents
// saved, same spelling), anything else (conf/all/rp_filter) through /proc/sys. An interface that is
// gone has nothing left to restore.
Status restore_sysctl(Result<Rtnl>& nl, const SavedSysctl& s) {
  auto dk = parse_devconf_key(s.key);
  if (!dk) return write_sysctl(s.key, s.value);
  auto value = parse_devconf_value(s.value);
  if (!value.ok()) return value.error().wrap("restore " + s.key);
  if (!nl.ok()) return nl.error();
  unsigned idx = ::if_nametoindex(dk->ifname.c_str());
  if (idx == 0) {
    if (errno == ENODEV || errno == ENXIO) return {};
    return Error::from_errno(errno, "restore " + s.key + ": find " + dk->ifname);
  }
  auto st = nl->set_ipv4_devconf(static_cast<int>(idx), dk->index, *value);
  if (!st.ok()) return std::move(st).error().wrap("restore " + s.key + "=" + s.value);
  return {};
}

std::vector<Prefix> of_family(const std::vector<Prefix>& v, int family) {
  std::vector<Prefix> out;
  for (const auto& p : v)
    if (p.addr.family == family) out.push_back(p);
  return out;
}

std::optional<IpAddr> first_of(const std::vector<IpAddr>& ips, int family) {
  for (const auto& ip : ips)
    if (ip.family == family) return ip;
  return std::nullopt;
}

}  // namespace

json CaptureState::to_json() const {
  json s = json::array();
  for (const auto& x : sysctls) s.push_back({{"key", x.key}, {"value", x.value}});
  return {{"sysctls", s}, {"guarded_ifindexes", guarded_ifindexes}, {"tc_mode", bpf::to_string(tc_mode)}};
}

CaptureState CaptureState::from_json(const json& j) {
  CaptureState st;
  if (!j.is_object()) return st;
  if (j.contains("sysctls") && j["sysctls"].is_array())
    for (const auto& x : j["sysctls"])
      if (x.is_object() && x.value("key", "").rfind("net/", 0) == 0)
        st.sysctls.push_back({x.value("key", ""), x.value("value", "")});
  if (j.contains("guarded_ifindexes") && j["guarded_ifindexes"].is_array())
    for (const auto& i : j["guarded_ifindexes"])
      if (i.is_number_integer()) st.guarded_ifindexes.push_back(i.get<int>());
  auto m = bpf::parse_tc_mode(j.value("tc_mode", "tcx"));
  st.tc_mode = m.ok() ? *m : bpf::TcMode::tcx;
  return st;
}

std::vector<RuleSpec> capture_rules(const CaptureConfig& cfg) {
  std::vector<RuleSpec> rules;
  for (int family : {AF_INET, AF_INET6}) {
    if (!first_of(cfg.pod_ips, family)) continue;  // no address of this family: nothing to capture
    auto rule = [&](uint32_t prio, uint32_t table) {
      RuleSpec r;
      r.family = family;
      r.priority = prio;
      r.table = table;
      return r;
    };
    auto excluded = [&](uint32_t prio) {  // TCP (and DNS) that matches goes by the main table: not captured
      auto r = rule(prio, RT_TABLE_MAIN);
      if (!cfg.dns && cfg.udp.empty()) r.ipproto = IPPROTO_TCP;
      return r;
    };
    for (uint16_t p : cfg.exclusions.inbound_ports) rules.emplace_back(excluded(kExInboundPortPriority)).sport = p;
    for (const auto& p : of_family(cfg.exclusions.inbound_sources, family))
      rules.emplace_back(excluded(kExInboundSourcePriority)).dst = p;
    for (uint16_t p : cfg.exclusions.outbound_ports) rules.emplace_back(excluded(kExOutboundPortPriority)).dport = p;
    for (const auto& p : of_family(cfg.exclusions.outbound_cidrs, family))
      rules.emplace_back(excluded(kExOutboundCidrPriority)).dst = p;
    // Not one `not fwmark 0x539/0xfff ipproto tcp` rule: FIB_RULE_INVERT inverts the whole
    // selector, so that rule would also send every UDP packet to table 133.
    auto marked = rule(kMarkedPriority, RT_TABLE_MAIN);
    marked.fwmark = cfg.mark;
    marked.fwmask = cfg.mark_mask;
    rules.push_back(marked);
    auto capture = rule(kCapturePriority, kCaptureTable);
    capture.ipproto = IPPROTO_TCP;
    rules.push_back(capture);
    if (cfg.dns) {  // the pod's DNS: delivered locally, where sk_lookup assigns it to 15053
      auto dns = rule(kCapturePriority, kCaptureTable);
      dns.ipproto = IPPROTO_UDP;
      dns.dport = 53;
      rules.push_back(dns);
    }
    auto udp = [&](uint16_t sport, uint16_t dport) {
      auto r = rule(kCapturePriority, kCaptureTable);
      r.ipproto = IPPROTO_UDP;
      r.sport = sport;
      r.dport = dport;
      rules.push_back(r);
    };
    for (uint16_t p : cfg.udp.outbound_ports) udp(0, p);
    for (uint16_t p : cfg.udp.inbound_ports) udp(p, 0);
    if (family == AF_INET6 && !cfg.udp.inbound_ports.empty()) {
      auto d = rule(kDeliveryPriority, kCaptureTable);
      d.fwmark = cfg.mark;
      d.fwmask = cfg.mark_mask;
      d.oifname = "lo";
      rules.push_back(d);
    }
  }
  return rules;
}

std::vector<LocalDefaultRoute> capture_routes(const CaptureConfig& cfg) {
  std::vector<LocalDefaultRoute> routes;
  if (auto v4 = first_of(cfg.pod_ips, AF_INET)) {
    // The src is required: without it connect() fails with ENETUNREACH.
    routes.push_back(LocalDefaultRoute{AF_INET, kCaptureTable, 1, *v4});
  }
  if (first_of(cfg.pod_ips, AF_INET6)) routes.push_back(LocalDefaultRoute{AF_INET6, kCaptureTable, 1, std::nullopt});
  return routes;
}

Result<std::vector<IpAddr>> discover_addresses() {
  ifaddrs* ifa = nullptr;
  if (::getifaddrs(&ifa) < 0) return Error::from_errno(errno, "list addresses in pod netns");
  std::vector<IpAddr> out;
  for (auto* p = ifa; p; p = p->ifa_next) {
    if (!p->ifa_addr || (p->ifa_flags & IFF_LOOPBACK)) continue;
    int fam = p->ifa_addr->sa_family;
    if (fam != AF_INET && fam != AF_INET6) continue;
    sockaddr_storage ss{};
    std::memcpy(&ss, p->ifa_addr, fam == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
    IpAddr a = IpAddr::from_sockaddr(ss);
    bool link_local = (fam == AF_INET6 && a.bytes[0] == 0xfe && (a.bytes[1] & 0xc0) == 0x80) ||
                      (fam == AF_INET && a.bytes[0] == 169 && a.bytes[1] == 254);
    if (!link_local && std::find(out.begin(), out.end(), a) == out.end() && out.size() < 16) out.push_back(a);
  }
  ::freeifaddrs(ifa);
  return out;
}

Result<std::unique_ptr<PodCapture>> PodCapture::install(const netns::NetnsHandle& ns, const CaptureConfig& cfg,
                                                        const CaptureState* previous) {
  std::unique_ptr<PodCapture> pc(new PodCapture());
  pc->cfg_ = cfg;
  pc->rules_ = capture_rules(cfg);
  pc->routes_ = capture_routes(cfg);
  pc->state_.tc_mode = cfg.tc_mode;
  if (previous) {
    // Keep the original sysctl values recorded by the agent that first changed them.
    pc->state_.sysctls = previous->sysctls;
    auto adopted = bpf::PodBpf::adopt(cfg.pin_dir);
    if (adopted.ok()) {
      pc->bpf_ = std::move(*adopted);
      pc->adopted_ = true;
    } else {
      spdlog::warn("re-opening pins under {} failed ({}): installing anew", cfg.pin_dir, adopted.error().message);
    }
  }
  bpf::PodBpfConfig bc{cfg.pod_ips, cfg.exclusions, cfg.strict, cfg.mark, cfg.mark_mask, cfg.dns,
                       cfg.udp.outbound_ports, cfg.udp.inbound_ports};
  auto t0 = std::chrono::steady_clock::now();
  auto t_loaded = t0;
  if (!pc->bpf_) {
    const uint32_t features = bpf::pod_features(bc);
    NS_TRY(bpf::LoadedPodBpf loaded, cfg.bpf_pool ? cfg.bpf_pool->take(features)
                                                  : bpf::LoadedPodBpf::load(cfg.max_inbound_conns, true, features));
    t_loaded = std::chrono::steady_clock::now();
    NS_TRY(pc->bpf_, bpf::PodBpf::create(cfg.pin_dir, ns, bc, std::move(loaded)));
  }
  auto t1 = std::chrono::steady_clock::now();
  // From here on a failure removes everything this call (or the previous agent) installed.
  struct Undo {
    PodCapture& pc;
    bool armed = true;
    ~Undo() {
      if (armed) (void)pc.remove();
    }
  } undo{*pc};

  // The value before our change, once per key (a restart keeps the first agent's).
  auto remember = [&](const std::string& key, std::string before) {
    auto& saved = pc->state_.sysctls;
    if (std::none_of(saved.begin(), saved.end(), [&](const SavedSysctl& x) { return x.key == key; }))
      saved.push_back({key, std::move(before)});
  };
  // Per-interface values over rtnetlink, not /proc/sys: /proc/sys is read-only in every
  // non-privileged Kubernetes container (the DaemonSet's). Saved under their /proc/sys key. The
  // same netlink socket then installs the rules and routes.
  NS_TRY(Rtnl nl, Rtnl::open());
  // The pod's interfaces other than loopback, with their devconf: one dump.
  NS_TRY(auto ifaces, nl.links());
  std::erase_if(ifaces, [](const LinkDevconf& l) { return l.name == "lo"; });
  struct Want {
    const char* leaf;
    int index;
    uint32_t value;
  };
  static constexpr Want kWants[] = {{"accept_local", IPV4_DEVCONF_ACCEPT_LOCAL, 1}, {"rp_filter", IPV4_DEVCONF_RP_FILTER, 0}};
  for (const auto& i : ifaces) {
    const auto& conf = i.ipv4_devconf;
    if (conf.empty())
      return Error::msg("read IPv4 devconf of " + i.name + ": no IPv4 on that link (no IFLA_INET_CONF)", EAFNOSUPPORT);
    std::vector<std::pair<int, uint32_t>> set;
    for (const Want& w : kWants) {
      std::string key = devconf_key(i.name, w.leaf);
      if (static_cast<size_t>(w.index) > conf.size())
        return Error::msg("IPv4 devconf " + key + " not reported by the kernel", EINVAL);
      uint32_t cur = conf[static_cast<size_t>(w.index) - 1];
      if (cur == w.value) continue;
      remember(key, std::to_string(cur));
      set.emplace_back(w.index, w.value);
    }
    if (!set.empty()) {
      auto st = nl.set_ipv4_devconf(i.index, set);
      if (!st.ok()) return std::move(st).error().wrap("accept_local=1 rp_filter=0 on " + i.name);
    }
    if (cfg.defer_guard && cfg.tc_mode == bpf::TcMode::tcx && !cfg.strict) {
      pc->deferred_.push_back(i.index);
      continue;
    }
    auto st = pc->bpf_->attach_guard(i.index, cfg.tc_mode);
    if (!st.ok()) return std::move(st).error().wrap("tc guard on " + i.name);
    pc->state_.guarded_ifindexes.push_back(i.index);
  }
  // rp_filter takes the maximum of conf/all and conf/<if>: the per-interface 0 needs all at 0 (or
  // 2, see rp_filter_all_blocks_capture). conf/all has no netlink setter: /proc/sys when writable.
  if (!ifaces.empty()) {
    const std::string all_key(kAllRpFilterKey);
    NS_TRY(uint32_t all_value, nl.get_all_rp_filter());
    if (all_value != 0) {
      const std::string all = std::to_string(all_value);
      auto st = write_sysctl(all_key, "0");
      if (st.ok()) {
        remember(all_key, all);
      } else if (int e = st.error().code; e == EROFS || e == EACCES || e == EPERM) {
        if (auto blocked = rp_filter_all_blocks_capture(all, st.error())) return *blocked;
        spdlog::info("{}: net.ipv4.conf.all.rp_filter stays {} ({}): loose mode lets the capture through",
                     cfg.pin_dir, all, st.error().message);
      } else {
        return std::move(st).error();
      }
    }
  }
  auto t2 = std::chrono::steady_clock::now();
  NS_TRY_STATUS(pc->install_routing(nl));
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  spdlog::debug("capture {}: bpf {:.2f} ms (objects taken or loaded {:.2f} ms, then filled, linked and pinned), "
                "sysctls+tc {:.2f} ms, routing {:.2f} ms",
                cfg.pin_dir, ms(t0, t1), ms(t0, t_loaded), ms(t1, t2), ms(t2, std::chrono::steady_clock::now()));
  // Listeners come from the caller; until set, captured SYNs are dropped (fail closed).
  undo.armed = false;
  return pc;
}

Status PodCapture::install_routing(Rtnl& nl) {
  // Routes first: a rule pointing at an empty table would fall through uncaptured.
  for (const auto& r : routes_) NS_TRY_STATUS(nl.add_route(r));
  for (const auto& r : rules_) NS_TRY_STATUS(nl.add_rule(r));
  return {};
}

Status PodCapture::remove_routing() {
  NS_TRY(Rtnl nl, Rtnl::open());
  Status first;
  // Capture rule first, so no TCP is routed into a table that is being emptied.
  for (auto it = rules_.rbegin(); it != rules_.rend(); ++it)
    if (auto st = nl.del_rule(*it); !st.ok() && first.ok()) first = st;
  for (const auto& r : routes_)
    if (auto st = nl.del_route(r); !st.ok() && first.ok()) first = st;
  return first;
}

Status PodCapture::remove() {
  Status first = remove_routing();
  auto keep = [&](Status st) {
    if (!st.ok() && first.ok()) first = std::move(st);
  };
  if (bpf_) {
    for (int idx : state_.guarded_ifindexes) keep(bpf_->detach_guard(idx, state_.tc_mode));
    keep(bpf_->destroy());
  }
  state_.guarded_ifindexes.clear();
  if (!state_.sysctls.empty()) {
    auto nl = Rtnl::open();
    for (auto it = state_.sysctls.rbegin(); it != state_.sysctls.rend(); ++it) keep(restore_sysctl(nl, *it));
  }
  state_.sysctls.clear();
  return first;
}

Status PodCapture::adopt_guard(int ifindex, UniqueFd ingress, UniqueFd egress) {
  auto it = std::find(deferred_.begin(), deferred_.end(), ifindex);
  if (it == deferred_.end()) return Error::msg("no deferred guard for ifindex " + std::to_string(ifindex), ENOENT);
  NS_TRY_STATUS(bpf_->adopt_guard_link(ifindex, true, std::move(ingress)));
  NS_TRY_STATUS(bpf_->adopt_guard_link(ifindex, false, std::move(egress)));
  deferred_.erase(it);
  state_.guarded_ifindexes.push_back(ifindex);
  return {};
}

json PodCapture::to_json() const {
  json rules = json::array(), routes = json::array();
  for (const auto& r : rules_) rules.push_back(r.str());
  for (const auto& r : routes_) routes.push_back(r.str());
  json j{{"rules", rules}, {"routes", routes}, {"tc_mode", bpf::to_string(state_.tc_mode)},
         {"guarded_ifindexes", state_.guarded_ifindexes}, {"adopted", adopted_},
         {"guard", deferred_.empty() ? "attached" : "pending"}, {"guard_pending_ifindexes", deferred_}};
  json sys = json::object();
  for (const auto& s : state_.sysctls) sys[s.key] = {{"before", s.value}};
  j["sysctls_changed"] = sys;
  j["bpf"] = bpf_ ? bpf_->describe() : json();
  if (bpf_) {
    auto st = bpf_->stats();
    j["bpf_stats"] = st.ok() ? st->to_json() : json{{"error", st.error().message}};
  }
  return j;
}

}  // namespace netsteer::capture
