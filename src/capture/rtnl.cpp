#include "netsteer/capture/rtnl.h"

#include <libmnl/libmnl.h>
#include <linux/fib_rules.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

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

Status Rtnl::request(void* buf, const std::string& what) {
  auto* nlh = static_cast<nlmsghdr*>(buf);
  nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  nlh->nlmsg_seq = ++seq_;
  if (mnl_socket_sendto(sock_, nlh, nlh->nlmsg_len) < 0) return Error::from_errno(errno, what + ": send");
  std::vector<char> rbuf(MNL_SOCKET_BUFFER_SIZE);
  uint32_t portid = mnl_socket_get_portid(sock_);
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(sock_, rbuf.data(), rbuf.size());
    if (n < 0) return Error::from_errno(errno, what + ": receive");
    int r = mnl_cb_run(rbuf.data(), static_cast<size_t>(n), seq_, portid, nullptr, nullptr);
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

}  // namespace netsteer::capture
