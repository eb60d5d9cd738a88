// rtnetlink (libmnl) for the pod's policy rules and routes: never `ip` from the agent.
// An Rtnl socket belongs to the netns it was opened in (open it on the NetnsExecutor inside the
// pod netns); it can then be used from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

struct mnl_socket;
struct nlmsghdr;

namespace netsteer::capture {

// One `ip rule`: family, priority, selectors, and the table it looks up.
struct RuleSpec {
  int family = 0;  // AF_INET / AF_INET6
  uint32_t priority = 0;
  uint32_t table = 0;
  std::optional<uint32_t> fwmark;  // with fwmask
  uint32_t fwmask = 0xffffffff;
  uint8_t ipproto = 0;
  uint16_t sport = 0, dport = 0;
  std::optional<Prefix> dst;
  std::string oifname;  // "lo": packets of sockets bound to that device (SO_BINDTODEVICE)
  std::optional<uint32_t> uid;  // uidrange UID-UID: sockets of that uid
  std::string str() const;  // in `ip rule` syntax, for logs and inspect
  bool operator==(const RuleSpec&) const = default;
};

// `local <0/0 or ::/0> dev <oif> [src <prefsrc>] table <table>`.
struct LocalDefaultRoute {
  int family = 0;
  uint32_t table = 0;
  int oif = 1;  // lo
  std::optional<IpAddr> prefsrc;
  std::string str() const;
  bool operator==(const LocalDefaultRoute&) const = default;
};

// A link of the netns as RTM_GETLINK reports it: index, name, and its IPv4 devconf (every value,
// indexed by IPV4_DEVCONF_* - 1; empty when the link has no IPv4).
struct LinkDevconf {
  int index = 0;
  std::string name;
  std::vector<uint32_t> ipv4_devconf;
};

class Rtnl {
 public:
  // A NETLINK_ROUTE socket in the calling thread's netns.
  static Result<Rtnl> open();
  Rtnl(Rtnl&&) noexcept;
  Rtnl& operator=(Rtnl&&) noexcept;
  ~Rtnl();

  Status add_rule(const RuleSpec& r);  // an identical existing rule is not an error
  Status del_rule(const RuleSpec& r);  // an absent rule is not an error
  Status add_route(const LocalDefaultRoute& r);  // create or replace
  Status del_route(const LocalDefaultRoute& r);  // an absent route is not an error

  // Every link with its name and IPv4 devconf (net/ipv4/conf/<if>/* without /proc/sys), from one
  // RTM_GETLINK dump without stats: what an enrol needs of the pod's interfaces.
  Result<std::vector<LinkDevconf>> links();
  // net.ipv4.conf.all.rp_filter of this netns: RTM_GETNETCONF for NETCONFA_IFINDEX_ALL. Not
  // /proc/sys: opening a /proc/sys/net file walks one dentry per netns on the host (they share
  // name and parent), 0.2 ms at 100 pods and 0.5 ms at 1000 in an enrol (bench/RESULTS.md).
  Result<uint32_t> get_all_rp_filter();
  // RTM_SETLINK with IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF {key: u32 value}, all in one message.
  Status set_ipv4_devconf(int ifindex, const std::vector<std::pair<int, uint32_t>>& values);
  Status set_ipv4_devconf(int ifindex, int key, uint32_t value) { return set_ipv4_devconf(ifindex, {{key, value}}); }

 private:
  explicit Rtnl(mnl_socket* s) : sock_(s) {}
  // Sends and waits for the ACK; cb (if any) sees every other message of the answer.
  Status request(void* nlh_buf, const std::string& what, int (*cb)(const ::nlmsghdr*, void*) = nullptr,
                 void* data = nullptr);
  mnl_socket* sock_ = nullptr;
  uint32_t seq_ = 0;
};

}  // namespace netsteer::capture
