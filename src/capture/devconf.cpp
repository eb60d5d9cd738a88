#include "netsteer/capture/devconf.h"

#include <linux/ip.h>

#include <charconv>

namespace netsteer::capture {

namespace {

constexpr std::string_view kConfPrefix = "net/ipv4/conf/";

struct Leaf {
  std::string_view name;
  int index;
};
constexpr Leaf kLeaves[] = {{"accept_local", IPV4_DEVCONF_ACCEPT_LOCAL}, {"rp_filter", IPV4_DEVCONF_RP_FILTER}};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

}  // namespace

std::optional<DevconfKey> parse_devconf_key(std::string_view key) {
  if (key.substr(0, kConfPrefix.size()) != kConfPrefix) return std::nullopt;
  key.remove_prefix(kConfPrefix.size());
  auto slash = key.find('/');
  if (slash == std::string_view::npos || slash == 0) return std::nullopt;
  std::string_view ifname = key.substr(0, slash), leaf = key.substr(slash + 1);
  if (ifname == "all" || ifname == "default" || ifname.size() >= 16 || leaf.find('/') != std::string_view::npos)
    return std::nullopt;
  for (const auto& l : kLeaves)
    if (l.name == leaf) return DevconfKey{std::string(ifname), l.index};
  return std::nullopt;
}

std::string devconf_key(const std::string& ifname, std::string_view leaf) {
  return std::string(kConfPrefix) + ifname + "/" + std::string(leaf);
}

Result<uint32_t> parse_devconf_value(std::string_view value) {
  auto v = trim(value);
  uint32_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size())
    return Error::msg("not a devconf value: '" + std::string(value) + "'", EINVAL);
  return out;
}

// Measured (kernel 6.18; two netns joined by a veth, the capture running, conf/<if>/rp_filter=0
// and accept_local=1 set by the agent, then conf/all/rp_filter set back under the capture):
//   all=0: IPv4 outbound relay, IPv4 inbound with the client address kept, IPv6 both: all work.
//   all=1: IPv4 outbound and inbound both hang (SYN-ACK / SYN dropped, TcpExtIPReversePathFilter
//          counts them): a captured flow's reverse route is table 133's `local 0/0 dev lo`, not the
//          interface it arrived on, so strict validation fails. IPv6 (no rp_filter) works.
//   all=2: everything works (loose mode only asks for some route back to the source).
// rp_filter's effective value is max(conf/all, conf/<if>): 2 can stay, 1 cannot.
std::optional<Error> rp_filter_all_blocks_capture(std::string_view all_value, const Error& write_error) {
  auto v = parse_devconf_value(all_value);
  if (v.ok() && *v == 2) return std::nullopt;
  std::string why = write_error.code == EROFS ? "/proc/sys is read-only in netsteerd's container"
                                               : "netsteerd cannot write it (" + write_error.message + ")";
  return Error::msg("net.ipv4.conf.all.rp_filter is " + std::string(trim(all_value)) +
                        " in the pod's network namespace and " + why +
                        ": strict reverse-path filtering (effective value max(conf.all, conf.<if>)) drops the "
                        "pod's captured IPv4 traffic. Set net.ipv4.conf.all.rp_filter=0 or 2 on the node (a new "
                        "pod netns inherits the host's IPv4 conf.all values) or in the pod's sandbox (e.g. the "
                        "CNI tuning plugin), or run netsteerd with a writable /proc/sys",
                    write_error.code ? write_error.code : EROFS);
}

}  // namespace netsteer::capture
