#include "netsteer/agent/listeners.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include "netsteer/common/inet.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::agent {

namespace {

Status set_int(int fd, int level, int opt, int val, const char* name) {
  if (::setsockopt(fd, level, opt, &val, sizeof val) < 0) return Error::from_errno(errno, name);
  return {};
}

Result<UniqueFd> make_listener(int family, uint16_t port, bool transparent, uint32_t mark, int type = SOCK_STREAM) {
  UniqueFd fd(::socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_errno(errno, "socket");
  NS_TRY_STATUS(set_int(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
  NS_TRY_STATUS(set_int(fd.get(), SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT"));
  NS_TRY_STATUS(set_int(fd.get(), SOL_SOCKET, SO_MARK, static_cast<int>(mark), "SO_MARK"));
  IpAddr any;
  any.family = family;
  if (family == AF_INET6) {
    NS_TRY_STATUS(set_int(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 0, "IPV6_V6ONLY"));
    if (transparent)
      NS_TRY_STATUS(set_int(fd.get(), IPPROTO_IPV6, IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT"));
  }
  // IP_TRANSPARENT also on the v6 socket: v4 connections to a dual-stack socket use it.
  if (transparent) NS_TRY_STATUS(set_int(fd.get(), IPPROTO_IP, IP_TRANSPARENT, 1, "IP_TRANSPARENT"));
  if (type == SOCK_DGRAM) {
    NS_TRY_STATUS(set_int(fd.get(), IPPROTO_IP, IP_RECVORIGDSTADDR, 1, "IP_RECVORIGDSTADDR"));
    if (family == AF_INET6)
      NS_TRY_STATUS(set_int(fd.get(), IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1, "IPV6_RECVORIGDSTADDR"));
    // Bursts of queries (a resolver's parallel lookups): past net.core.rmem_max (CAP_NET_ADMIN).
    NS_TRY_STATUS(set_int(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20, "SO_RCVBUFFORCE"));
  }
  SockAddr sa = SockAddr::make(any, port);
  if (::bind(fd.get(), sa.sa(), sa.len) < 0)
    return Error::from_errno(errno, "bind " + sa.str());
  if (type == SOCK_STREAM && ::listen(fd.get(), 4096) < 0) return Error::from_errno(errno, "listen " + sa.str());
  return fd;
}

}  // namespace

nlohmann::json PodListeners::to_json() const {
  auto one = [&](const Listener& l) {
    return nlohmann::json{{"port", l.port}, {"role", l.role}, {"family", family}, {"open", l.fd.valid()}};
  };
  auto a = nlohmann::json::array();
  for (const Listener* l : all())
    if (l->fd || l == &outbound || l == &inbound || l == &tunnel) a.push_back(one(*l));
  return a;
}

std::vector<Listener*> PodListeners::all() {
  return {&outbound, &inbound, &tunnel, &dns, &udp_outbound, &udp_inbound, &dns_tcp};
}
std::vector<const Listener*> PodListeners::all() const {
  return {&outbound, &inbound, &tunnel, &dns, &udp_outbound, &udp_inbound, &dns_tcp};
}
Listener* PodListeners::by_role(std::string_view role) {
  for (Listener* l : all())
    if (l->role == role) return l;
  return nullptr;
}

Listener* PodListeners::slot_of_role(std::string_view role) {
  static constexpr std::string_view kRoles[] = {"outbound", "inbound", "tunnel",     "dns",
                                                "udp_outbound", "udp_inbound", "dns_tcp"};
  auto slots = all();
  for (size_t i = 0; i < slots.size(); ++i)
    if (kRoles[i] == role) return slots[i];
  return nullptr;
}

uint16_t port_of_role(std::string_view role) {
  if (role == "outbound" || role == "udp_outbound") return protocol::kPortOutbound;
  if (role == "inbound" || role == "udp_inbound") return protocol::kPortInbound;
  if (role == "tunnel") return protocol::kPortTunnel;
  if (role == "dns" || role == "dns_tcp") return protocol::kPortDns;
  return 0;
}

namespace {

// Creates the wanted sockets `pl` lacks, in `family`.
Status fill(PodListeners& pl, int family, uint32_t mark, const ListenerWants& want) {
  struct Want {
    Listener* l;
    uint16_t port;
    const char* role;
    bool transparent;
    bool wanted;
    int type = SOCK_STREAM;
  } wants[] = {{&pl.outbound, protocol::kPortOutbound, "outbound", true, true},
               {&pl.inbound, protocol::kPortInbound, "inbound", true, true},
               {&pl.tunnel, protocol::kPortTunnel, "tunnel", false, true},
               {&pl.dns, protocol::kPortDns, "dns", true, want.dns, SOCK_DGRAM},
               {&pl.udp_outbound, protocol::kPortUdpOutbound, "udp_outbound", true, want.udp_outbound, SOCK_DGRAM},
               {&pl.udp_inbound, protocol::kPortUdpInbound, "udp_inbound", true, want.udp_inbound, SOCK_DGRAM},
               {&pl.dns_tcp, protocol::kPortDns, "dns_tcp", true, want.dns}};
  for (auto& w : wants) {
    if (!w.wanted || w.l->fd) continue;
    auto fd = make_listener(family, w.port, w.transparent, mark, w.type);
    if (!fd.ok()) return std::move(fd).error().wrap(std::string(w.role) + " listener");
    *w.l = {std::move(*fd), w.port, w.role};
  }
  return {};
}

}  // namespace

Status add_missing_listeners(PodListeners& pl, uint32_t mark, const ListenerWants& want) {
  return fill(pl, pl.family == "ipv4" ? AF_INET : AF_INET6, mark, want);
}

Result<PodListeners> create_listeners(uint32_t mark, const ListenerWants& want) {
  // Dual-stack first; a netns without IPv6 (ipv6.disable=1 on the kernel) gets IPv4 sockets.
  for (int family : {AF_INET6, AF_INET}) {
    PodListeners pl;
    pl.family = family == AF_INET6 ? "dual" : "ipv4";
    Status st = fill(pl, family, mark, want);
    if (st.ok()) return pl;
    // Only an unavailable address family is a reason to fall back; anything else is reported.
    if (family == AF_INET6 && (st.error().code == EAFNOSUPPORT || st.error().code == EADDRNOTAVAIL)) continue;
    return std::move(st).error();
  }
  return Error::msg("no address family available for listeners", EAFNOSUPPORT);
}

}  // namespace netsteer::agent
