// Per-interface IPv4 devconf values (net/ipv4/conf/<ifname>/<leaf>) set over rtnetlink instead of
// /proc/sys, which every non-privileged Kubernetes container gets read-only. The saved keys keep
// the /proc/sys spelling ("net/ipv4/conf/eth0/accept_local"): that is what agents have always
// written to the state file, so records of older agents restore unchanged.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "netsteer/common/result.h"

namespace netsteer::capture {

inline constexpr std::string_view kAllRpFilterKey = "net/ipv4/conf/all/rp_filter";

// A per-interface key the agent sets over netlink: the interface name and the IPV4_DEVCONF_* index
// (linux/ip.h, 1-based: the IFLA_INET_CONF attribute type).
struct DevconfKey {
  std::string ifname;
  int index = 0;
  bool operator==(const DevconfKey&) const = default;
};

// "net/ipv4/conf/<ifname>/<leaf>" for a leaf the agent sets (accept_local, rp_filter) and an
// interface (not all/default): its netlink form. Anything else (conf/all/rp_filter): nullopt,
// meaning /proc/sys.
std::optional<DevconfKey> parse_devconf_key(std::string_view key);
std::string devconf_key(const std::string& ifname, std::string_view leaf);

// A saved value ("0", "1", "2"; trailing whitespace tolerated) as the u32 netlink carries.
Result<uint32_t> parse_devconf_value(std::string_view value);

// conf/all/rp_filter is not 0 and /proc/sys cannot be written (read-only in the agent's
// container): whether capture still works with it as it is. nullopt: it does (2, loose); else the
// error explaining what to do.
std::optional<Error> rp_filter_all_blocks_capture(std::string_view all_value, const Error& write_error);

}  // namespace netsteer::capture
