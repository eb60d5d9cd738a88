#include "netsteer/capture/rtnl.h"

#include <libmnl/libmnl.h>
#include <linux/fib_rules.h>
#include <linux/if_link.h>
#include <linux/ip.h>
#include <linux/netconf.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

#include <cstring>
#include <optional>
#include <utility>
#include <vector>

namespace netsteer::capture {

namespace {

const char* fam(int f) { return f == AF_INET6 ? "-6 " : ""; }

std::string proto_name(uint8_t p) {
  if (p == IPPROTO_TCP) return "tcp";
  if (p == IPPROTO_UDP) return "udp";
  return std::to_string(p);
}

std::string hex(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%x", v);
  return b;
}

}  // namespace

std::string RuleSpec::str() const {
  std::string s = std::string(fam(family)) + "rule priority " + std::to_string(priority);
  if (fwmark) s += " fwmark " + hex(*fwmark) + "/" + hex(fwmask);
  if (dst) s += " to " + dst->str();
  if (!oifname.empty()) s += " oif " + oifname;
  if (uid) s += " uidrange " + std::to_string(*uid) + "-" + std::to_string(*uid);
  if (ipproto) s += " ipproto " + proto_name(ipproto);
  if (sport) s += " sport " + std::to_string(sport);
  if (dport) s += " dport " + std::to_string(dport);
  s += " lookup " + (table == RT_TABLE_MAIN ? std::string("main") : std::to_string(table));
  return s;
}

std::string LocalDefaultRoute::str() const {
  std::string s = std::string(fam(family)) + "route local " + (family == AF_INET6 ? "::/0" : "0.0.0.0/0");
  char name[IF_NAMESIZE] = {};
  s += std::string(" dev ") + (if_indextoname(static_cast<unsigned>(oif), name) ? name : std::to_string(oif).c_str());
  if (prefsrc) s += " src " + prefsrc->str();
  return s + " table " + std::to_string(table);
}

Result<Rtnl> Rtnl::open() {
  mnl_socket* s = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
  if (!s) return Error::from_errno(errno, "open rtnetlink socket");
  if (mnl_socket_bind(s, 0, MNL_SOCKET_AUTOPID) < 0) {
    int e = errno;
    mnl_socket_close(s);
    return Error::from_errno(e, "bind rtnetlink socket");
  }
  return Rtnl(s);
}

Rtnl::Rtnl(Rtnl&& o) noexcept : sock_(std::exchange(o.sock_, nullptr)), seq_(o.seq_) {}
Rtnl& Rtnl::operator=(Rtnl&& o) noexcept {
  if (this != &o) {
    if (sock_) mnl_socket_close(sock_);
    sock_ = std::exchange(o.sock_, nullptr);
    seq_ = o.seq_;
  }
  return *this;
}
Rtnl::~Rtnl() {
  if (sock_) mnl_socket_close(sock_);
}

Status Rtnl::request(void* buf, const std::string& what, int (*cb)(const nlmsghdr*, void*), void* data) {
  auto* nlh = static_cast<nlmsghdr*>(buf);
  // A dump (an RTM_GET* with NLM_F_DUMP: the same bits mean EXCL|REPLACE on a NEW) ends in
  // NLMSG_DONE; anything else is acknowledged.
  bool dump = (nlh->nlmsg_type & 3) == 2 && (nlh->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
  nlh->nlmsg_flags |= NLM_F_REQUEST | (dump ? 0 : NLM_F_ACK);
  nlh->nlmsg_seq = ++seq_;
  if (mnl_socket_sendto(sock_, nlh, nlh->nlmsg_len) < 0) return Error::from_errno(errno, what + ": send");
  std::vector<char> rbuf(32768);  // an RTM_NEWLINK answer (stats, AF_SPEC) is a few KB
  uint32_t portid = mnl_socket_get_portid(sock_);
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(sock_, rbuf.data(), rbuf.size());
    if (n < 0) return Error::from_errno(errno, what + ": receive");
    int r = mnl_cb_run(rbuf.data(), static_cast<size_t>(n), seq_, portid, cb, data);
    if (r < 0) return Error::from_errno(errno, what);
    if (r == MNL_CB_STOP) return {};
  }
}

namespace {

void put_addr(nlmsghdr* nlh, uint16_t type, const IpAddr& a) { mnl_attr_put(nlh, type, a.len(), a.bytes.data()); }

nlmsghdr* put_header(char* buf, uint16_t type, uint16_t flags) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = flags;
  return nlh;
}

// Tables >= 256 exist only in the 32-bit attribute; the header byte then says RT_TABLE_UNSPEC.
uint8_t table_byte(uint32_t table) { return table < 256 ? static_cast<uint8_t>(table) : uint8_t{RT_TABLE_UNSPEC}; }

nlmsghdr* rule_msg(char* buf, uint16_t type, uint16_t flags, const RuleSpec& r) {
  nlmsghdr* nlh = put_header(buf, type, flags);
  auto* frh = static_cast<fib_rule_hdr*>(mnl_nlmsg_put_extra_header(nlh, sizeof(fib_rule_hdr)));
  frh->family = static_cast<uint8_t>(r.family);
  frh->action = FR_ACT_TO_TBL;
  frh->table = table_byte(r.table);
  mnl_attr_put_u32(nlh, FRA_TABLE, r.table);
  mnl_attr_put_u32(nlh, FRA_PRIORITY, r.priority);
  if (r.fwmark) {
    mnl_attr_put_u32(nlh, FRA_FWMARK, *r.fwmark);
    mnl_attr_put_u32(nlh, FRA_FWMASK, r.fwmask);
  }
  if (r.ipproto) mnl_attr_put_u8(nlh, FRA_IP_PROTO, r.ipproto);
  if (r.sport) {
    fib_rule_port_range pr{r.sport, r.sport};
    mnl_attr_put(nlh, FRA_SPORT_RANGE, sizeof pr, &pr);
  }
  if (r.dport) {
    fib_rule_port_range pr{r.dport, r.dport};
    mnl_attr_put(nlh, FRA_DPORT_RANGE, sizeof pr, &pr);
  }
  if (!r.oifname.empty()) mnl_attr_put_strz(nlh, FRA_OIFNAME, r.oifname.c_str());
  if (r.uid) {
    fib_rule_uid_range ur{*r.uid, *r.uid};
    mnl_attr_put(nlh, FRA_UID_RANGE, sizeof ur, &ur);
  }
  if (r.dst) {
    frh->dst_len = r.dst->len;
    put_addr(nlh, FRA_DST, r.dst->addr);
  }
  return nlh;
}

nlmsghdr* route_msg(char* buf, uint16_t type, uint16_t flags, const LocalDefaultRoute& r) {
  nlmsghdr* nlh = put_header(buf, type, flags);
  auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
  rtm->rtm_family = static_cast<uint8_t>(r.family);
  rtm->rtm_dst_len = 0;
  rtm->rtm_table = table_byte(r.table);
  rtm->rtm_protocol = RTPROT_STATIC;
  rtm->rtm_scope = RT_SCOPE_HOST;
  rtm->rtm_type = RTN_LOCAL;
  mnl_attr_put_u32(nlh, RTA_TABLE, r.table);
  mnl_attr_put_u32(nlh, RTA_OIF, static_cast<uint32_t>(r.oif));
  if (r.prefsrc) put_addr(nlh, RTA_PREFSRC, *r.prefsrc);
  return nlh;
}

}  // namespace

Status Rtnl::add_rule(const RuleSpec& r) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  auto st = request(rule_msg(buf.data(), RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, r), "add " + r.str());
  if (!st.ok() && st.error().code == EEXIST) return {};
  return st;
}

Status Rtnl::del_rule(const RuleSpec& r) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  auto st = request(rule_msg(buf.data(), RTM_DELRULE, 0, r), "delete " + r.str());
  if (!st.ok() && st.error().code == ENOENT) return {};
  return st;
}

Status Rtnl::add_route(const LocalDefaultRoute& r) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  return request(route_msg(buf.data(), RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, r), "add " + r.str());
}

Status Rtnl::del_route(const LocalDefaultRoute& r) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  auto st = request(route_msg(buf.data(), RTM_DELROUTE, 0, r), "delete " + r.str());
  if (!st.ok() && (st.error().code == ESRCH || st.error().code == ENOENT)) return {};
  return st;
}

namespace {

// libmnl's iteration macros assign void* (C only): the same walk over [from, to), typed.
template <typename F>
void each_attr(const void* from, const void* to, F&& f) {
  const char* end = static_cast<const char*>(to);
  for (auto* a = static_cast<const nlattr*>(from);
       mnl_attr_ok(a, static_cast<int>(end - reinterpret_cast<const char*>(a))); a = mnl_attr_next(a))
    f(a);
}

// One RTM_NEWLINK: the link's index, name and IPv4 devconf (IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF).
LinkDevconf parse_link(const nlmsghdr* nlh) {
  const auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  LinkDevconf out{ifi->ifi_index, {}, {}};
  auto inside = [](const nlattr* a) {
    return static_cast<const char*>(mnl_attr_get_payload(a)) + mnl_attr_get_payload_len(a);
  };
  each_attr(mnl_nlmsg_get_payload_offset(nlh, sizeof(ifinfomsg)), mnl_nlmsg_get_payload_tail(nlh), [&](const nlattr* top) {
    if (mnl_attr_get_type(top) == IFLA_IFNAME && mnl_attr_validate(top, MNL_TYPE_STRING) == 0)
      out.name = mnl_attr_get_str(top);
    if (mnl_attr_get_type(top) != IFLA_AF_SPEC) return;
    each_attr(mnl_attr_get_payload(top), inside(top), [&](const nlattr* af) {
      if (mnl_attr_get_type(af) != AF_INET) return;
      each_attr(mnl_attr_get_payload(af), inside(af), [&](const nlattr* conf) {
        if (mnl_attr_get_type(conf) != IFLA_INET_CONF) return;
        size_t n = mnl_attr_get_payload_len(conf) / sizeof(uint32_t);
        out.ipv4_devconf.resize(n);
        std::memcpy(out.ipv4_devconf.data(), mnl_attr_get_payload(conf), n * sizeof(uint32_t));
      });
    });
  });
  return out;
}

int links_cb(const nlmsghdr* nlh, void* data) {
  if (nlh->nlmsg_type == RTM_NEWLINK) static_cast<std::vector<LinkDevconf>*>(data)->push_back(parse_link(nlh));
  return MNL_CB_OK;
}

}  // namespace

Result<std::vector<LinkDevconf>> Rtnl::links() {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = put_header(buf.data(), RTM_GETLINK, NLM_F_DUMP);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);  // AF_SPEC stays, stats go
  std::vector<LinkDevconf> links;
  NS_TRY_STATUS(request(nlh, "list links (RTM_GETLINK dump)", links_cb, &links));
  return links;
}

namespace {
struct NetconfReply {
  std::optional<uint32_t> rp_filter;
};

int netconf_cb(const nlmsghdr* nlh, void* data) {
  if (nlh->nlmsg_type != RTM_NEWNETCONF) return MNL_CB_OK;
  auto* out = static_cast<NetconfReply*>(data);
  each_attr(mnl_nlmsg_get_payload_offset(nlh, sizeof(netconfmsg)), mnl_nlmsg_get_payload_tail(nlh), [&](const nlattr* a) {
    if (mnl_attr_get_type(a) == NETCONFA_RP_FILTER) out->rp_filter = mnl_attr_get_u32(a);
  });
  return MNL_CB_OK;
}
}  // namespace

Result<uint32_t> Rtnl::get_all_rp_filter() {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = put_header(buf.data(), RTM_GETNETCONF, 0);
  auto* ncm = static_cast<netconfmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(netconfmsg)));
  ncm->ncm_family = AF_INET;
  mnl_attr_put_u32(nlh, NETCONFA_IFINDEX, static_cast<uint32_t>(NETCONFA_IFINDEX_ALL));
  NetconfReply reply;
  NS_TRY_STATUS(request(nlh, "read net.ipv4.conf.all.rp_filter (RTM_GETNETCONF)", netconf_cb, &reply));
  if (!reply.rp_filter) return Error::msg("RTM_GETNETCONF for conf/all carried no rp_filter", EPROTO);
  return *reply.rp_filter;
}

Status Rtnl::set_ipv4_devconf(int ifindex, const std::vector<std::pair<int, uint32_t>>& values) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = put_header(buf.data(), RTM_SETLINK, 0);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = ifindex;
  // The kernel's inet_validate_link_af takes attribute types 1..IPV4_DEVCONF_MAX, and
  // inet_set_link_af does ipv4_devconf_set(in_dev, type, u32): data[type - 1] = value, and marks it
  // explicitly set (as a /proc/sys write does), so conf/default no longer overrides it.
  nlattr* spec = mnl_attr_nest_start(nlh, IFLA_AF_SPEC);
  nlattr* inet = mnl_attr_nest_start(nlh, AF_INET);
  nlattr* conf = mnl_attr_nest_start(nlh, IFLA_INET_CONF);
  std::string what = "set IPv4 devconf of ifindex " + std::to_string(ifindex);
  for (const auto& [key, value] : values) {
    mnl_attr_put_u32(nlh, static_cast<uint16_t>(key), value);
    what += " " + std::to_string(key) + "=" + std::to_string(value);
  }
  mnl_attr_nest_end(nlh, conf);
  mnl_attr_nest_end(nlh, inet);
  mnl_attr_nest_end(nlh, spec);
  return request(nlh, what);
}

}  // namespace netsteer::capture
