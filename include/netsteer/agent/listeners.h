// The proxy listeners born inside a pod netns (15001 outbound, 15006 inbound, 15008 tunnel).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer::agent {

struct Listener {
  UniqueFd fd;
  uint16_t port = 0;
  std::string role;  // "outbound", "inbound", "tunnel", "dns", "udp_outbound", "udp_inbound"
};

// What a pod's sockets are for (create_listeners).
struct ListenerWants {
  bool dns = false;           // UDP and TCP 15053
  bool udp_outbound = false;  // UDP 15001: listed outbound ports, and app datagrams from listed inbound ports
  bool udp_inbound = false;   // UDP 15006: listed inbound ports
};

struct PodListeners {
  Listener outbound, inbound, tunnel;
  Listener dns;  // UDP 15053; not open when the pod's DNS is not captured
  Listener udp_outbound, udp_inbound;  // UDP 15001 / 15006; open only with general UDP capture
  Listener dns_tcp;  // TCP 15053, with dns: the pod's TCP DNS (relayed like outbound)
  // "dual" ([::] with IPV6_V6ONLY=0, serves v4 and v6) or "ipv4" (IPv6 unavailable in the netns).
  std::string family;
  nlohmann::json to_json() const;
  // Every socket by role, in a fixed order (the TCP three first); unopened ones included.
  std::vector<Listener*> all();
  std::vector<const Listener*> all() const;
  Listener* by_role(std::string_view role);       // an open socket of that role
  Listener* slot_of_role(std::string_view role);  // where a socket of that role belongs
};

// 15001, 15006, 15008, 15053 (the UDP sockets share the TCP ports); 0 for an unknown role.
uint16_t port_of_role(std::string_view role);

// Creates the three listeners in the CALLING THREAD's netns (run it on the NetnsExecutor).
// Every socket carries SO_MARK 0x539 (replies and accepted sockets inherit it, so the outbound
// capture rule skips them), SO_REUSEADDR/SO_REUSEPORT, and 15001/15006 IP(V6)_TRANSPARENT so
// they can accept connections to non-local addresses assigned by sk_lookup.
// With dns: also the UDP 15053 socket (unconnected, IP(V6)_TRANSPARENT so sk_lookup may assign it
// datagrams to other addresses, IP(V6)_RECVORIGDSTADDR for their original destination).
// With udp_outbound/udp_inbound: the UDP 15001/15006 sockets, made the same way.
Result<PodListeners> create_listeners(uint32_t mark, const ListenerWants& want);
// Adds the wanted sockets `pl` lacks (sockets handed over by an older agent), in pl's family.
Status add_missing_listeners(PodListeners& pl, uint32_t mark, const ListenerWants& want);

}  // namespace netsteer::agent
