// The proxy listeners born inside a pod netns (15001 outbound, 15006 inbound, 15008 tunnel).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer::agent {

struct Listener {
  UniqueFd fd;
  uint16_t port = 0;
  std::string role;  // "outbound", "inbound", "tunnel", "dns"
};

struct PodListeners {
  Listener outbound, inbound, tunnel;
  Listener dns;  // UDP 15053; not open when the pod's DNS is not captured
  // "dual" ([::] with IPV6_V6ONLY=0, serves v4 and v6) or "ipv4" (IPv6 unavailable in the netns).
  std::string family;
  nlohmann::json to_json() const;
};

// Creates the three listeners in the CALLING THREAD's netns (run it on the NetnsExecutor).
// Every socket carries SO_MARK 0x539 (replies and accepted sockets inherit it, so the outbound
// capture rule skips them), SO_REUSEADDR/SO_REUSEPORT, and 15001/15006 IP(V6)_TRANSPARENT so
// they can accept connections to non-local addresses assigned by sk_lookup.
// With dns: also the UDP 15053 socket (unconnected, IP(V6)_TRANSPARENT so sk_lookup may assign it
// datagrams to other addresses, IP(V6)_RECVORIGDSTADDR for their original destination).
Result<PodListeners> create_listeners(uint32_t mark, bool dns);

}  // namespace netsteer::agent
