// Everything that steers one pod's traffic, installed inside the pod netns and removed completely:
//   - the BPF side (bpf::PodBpf): sk_lookup link + per-pod maps, tc guard on each interface;
//   - policy routing (rtnetlink): marked → main (99), TCP → table 133 (100), exclusion rules
//     ahead of them (90–93), and `local 0/0 dev lo [src podIP] table 133` per family;
//   - sysctls the path needs on the pod's interfaces (accept_local=1, rp_filter=0), set over
//     rtnetlink (/proc/sys is read-only in a non-privileged container), and conf/all/rp_filter=0
//     through /proc/sys when it is writable (see devconf.h), with the previous values kept so
//     removal restores them.
// install/adopt/remove run IN THE POD NETNS (on the NetnsExecutor).
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "netsteer/bpf/features.h"
#include "netsteer/bpf/pod_bpf.h"
#include "netsteer/capture/rtnl.h"
#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/netns/netns.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::capture {

inline constexpr uint32_t kCaptureTable = 133;
inline constexpr uint32_t kCapturePriority = 100;
inline constexpr uint32_t kMarkedPriority = 99;
// IPv6 inbound UDP: the agent's delivery to the app (marked, bound to lo) must route by table 133
// (`local ::/0 dev lo`), the only IPv6 route out of lo for a remote-looking destination.
inline constexpr uint32_t kDeliveryPriority = 98;
// A lease's exempt uid (netsteerctl exec --exempt-uid): that uid's traffic routes by main, ahead
// of every capture rule (the proxy's own connections from inside the pod are not captured again).
inline constexpr uint32_t kExemptPriority = 97;
// Exclusion rules sit ahead of the capture rule (see DESIGN.md: replies to traffic that bypassed
// inbound capture would otherwise be swallowed by it).
inline constexpr uint32_t kExInboundPortPriority = 90;
inline constexpr uint32_t kExInboundSourcePriority = 91;
inline constexpr uint32_t kExOutboundPortPriority = 92;
inline constexpr uint32_t kExOutboundCidrPriority = 93;

struct CaptureConfig {
  std::vector<IpAddr> pod_ips;
  protocol::Exclusions exclusions;
  bool strict = false;
  bool dns = false;  // capture UDP to port 53 (rule `ipproto udp dport 53 lookup 133`, NS_CFG_DNS)
  // General UDP: `ipproto udp dport P lookup 133` per outbound port, `ipproto udp sport P lookup
  // 133` per inbound port (the app's replies reach the agent's delivery socket).
  protocol::UdpPorts udp;
  bpf::TcMode tc_mode = bpf::TcMode::tcx;
  std::string pin_dir;
  // Where the pod's BPF objects come from already loaded (nullptr: loaded during install).
  bpf::PodBpfPool* bpf_pool = nullptr;
  uint32_t max_inbound_conns = bpf::kDefaultMaxInboundConns;  // when loaded here (no pool)
  // tcx only, non-strict pods only: leave the tc guard to a later attach (adopt_guard). Each tcx
  // attach waits for an RCU grace period under rtnl (7-25 ms with rcu_expedited=0); without the
  // guard, capture and fail-closed already hold (sk_lookup, rules, routes): only the guard's
  // counters start later. A strict pod's guard enforces, so it is always attached at once.
  bool defer_guard = false;
  uint32_t mark = protocol::kAgentMark;
  uint32_t mark_mask = protocol::kAgentMarkMask;
};

struct SavedSysctl {
  std::string key;    // e.g. "net/ipv4/conf/eth0/accept_local" (set over netlink, see devconf.h)
  std::string value;  // the value before we changed it
};

// What a restarted agent needs to remove a capture it did not install itself.
struct CaptureState {
  std::vector<SavedSysctl> sysctls;
  std::vector<int> guarded_ifindexes;
  bpf::TcMode tc_mode = bpf::TcMode::tcx;
  nlohmann::json to_json() const;
  static CaptureState from_json(const nlohmann::json& j);
};

// The rules and routes a capture config needs (pure; unit tested).
std::vector<RuleSpec> capture_rules(const CaptureConfig& cfg);
std::vector<LocalDefaultRoute> capture_routes(const CaptureConfig& cfg);

// Global addresses of the calling thread's netns (non-loopback, not link-local).
Result<std::vector<IpAddr>> discover_addresses();

class PodCapture {
 public:
  // Installs the capture. With `previous` (a restart), re-opens the pins under cfg.pin_dir and
  // re-asserts rules, routes, tc attachments and sysctls (all idempotent) instead of loading anew;
  // when those pins are gone it installs from scratch. On error nothing is left behind.
  static Result<std::unique_ptr<PodCapture>> install(const netns::NetnsHandle& ns, const CaptureConfig& cfg,
                                                     const CaptureState* previous = nullptr);
  // Removes rules, routes, tc attachments, links and pins, and restores the sysctls.
  Status remove();

  bpf::PodBpf& bpf() { return *bpf_; }
  const bpf::PodBpf& bpf() const { return *bpf_; }
  const CaptureState& state() const { return state_; }
  bool adopted() const { return adopted_; }
  // Interfaces whose guard was deferred and is not attached yet.
  const std::vector<int>& deferred_guard() const { return deferred_; }
  // Takes the links a deferred attach made for ifindex (unpinned; see PodBpf::create_guard_link)
  // as this pod's guard: pinned, recorded, no longer deferred.
  Status adopt_guard(int ifindex, UniqueFd ingress, UniqueFd egress);
  nlohmann::json to_json() const;

 private:
  PodCapture() = default;
  Status install_routing(Rtnl& nl);  // in the pod netns
  Status remove_routing();

  CaptureConfig cfg_;
  CaptureState state_;
  std::unique_ptr<bpf::PodBpf> bpf_;
  std::vector<RuleSpec> rules_;
  std::vector<LocalDefaultRoute> routes_;
  bool adopted_ = false;
  std::vector<int> deferred_;
};

}  // namespace netsteer::capture
