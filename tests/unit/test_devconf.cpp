// Per-interface IPv4 devconf keys: the /proc/sys spelling saved in the state file (as older agents
// wrote it) maps to the rtnetlink IPV4_DEVCONF_* index the agent now sets and restores.
#include <gtest/gtest.h>
#include <linux/ip.h>

#include "netsteer/capture/devconf.h"
#include "netsteer/capture/pod_capture.h"

using namespace netsteer;
using namespace netsteer::capture;

TEST(Devconf, OldFormatKeysMapToNetlinkIndexes) {
  EXPECT_EQ(parse_devconf_key("net/ipv4/conf/eth0/accept_local"), (DevconfKey{"eth0", IPV4_DEVCONF_ACCEPT_LOCAL}));
  EXPECT_EQ(parse_devconf_key("net/ipv4/conf/net1/rp_filter"), (DevconfKey{"net1", IPV4_DEVCONF_RP_FILTER}));
  EXPECT_EQ(parse_devconf_key("net/ipv4/conf/eth0.100/rp_filter"), (DevconfKey{"eth0.100", IPV4_DEVCONF_RP_FILTER}));
  // The 1-based indexes the kernel's inet_set_link_af takes (linux/ip.h).
  EXPECT_EQ(IPV4_DEVCONF_RP_FILTER, 8);
  EXPECT_EQ(IPV4_DEVCONF_ACCEPT_LOCAL, 23);
  EXPECT_EQ(devconf_key("eth0", "accept_local"), "net/ipv4/conf/eth0/accept_local");
  EXPECT_EQ(parse_devconf_key(devconf_key("eth0", "rp_filter"))->ifname, "eth0");
}

TEST(Devconf, OtherKeysStayOnProcSys) {
  EXPECT_FALSE(parse_devconf_key(kAllRpFilterKey));
  EXPECT_FALSE(parse_devconf_key("net/ipv4/conf/default/rp_filter"));
  EXPECT_FALSE(parse_devconf_key("net/ipv4/conf/eth0/forwarding"));  // not one the agent sets
  EXPECT_FALSE(parse_devconf_key("net/ipv4/conf/eth0/rp_filter/x"));
  EXPECT_FALSE(parse_devconf_key("net/ipv4/conf//rp_filter"));
  EXPECT_FALSE(parse_devconf_key("net/ipv4/conf/eth0"));
  EXPECT_FALSE(parse_devconf_key("net/ipv6/conf/eth0/accept_dad"));
  EXPECT_FALSE(parse_devconf_key("net/ipv4/conf/averyveryverylongname/rp_filter"));
}

TEST(Devconf, SavedValues) {
  EXPECT_EQ(*parse_devconf_value("0"), 0u);
  EXPECT_EQ(*parse_devconf_value("2\n"), 2u);
  EXPECT_FALSE(parse_devconf_value("").ok());
  EXPECT_FALSE(parse_devconf_value("-1").ok());
  EXPECT_FALSE(parse_devconf_value("1x").ok());
}

TEST(Devconf, OldStateFileRecordsStillRestore) {
  // A capture state as agents before the netlink change wrote it.
  auto j = nlohmann::json::parse(R"({"sysctls":[{"key":"net/ipv4/conf/eth0/accept_local","value":"0"},
      {"key":"net/ipv4/conf/eth0/rp_filter","value":"1"},{"key":"net/ipv4/conf/all/rp_filter","value":"1"}],
      "guarded_ifindexes":[2],"tc_mode":"tcx"})");
  auto st = CaptureState::from_json(j);
  ASSERT_EQ(st.sysctls.size(), 3u);
  auto a = parse_devconf_key(st.sysctls[0].key);
  ASSERT_TRUE(a);
  EXPECT_EQ(*a, (DevconfKey{"eth0", IPV4_DEVCONF_ACCEPT_LOCAL}));
  EXPECT_EQ(*parse_devconf_value(st.sysctls[0].value), 0u);
  EXPECT_EQ(*parse_devconf_key(st.sysctls[1].key), (DevconfKey{"eth0", IPV4_DEVCONF_RP_FILTER}));
  EXPECT_FALSE(parse_devconf_key(st.sysctls[2].key));  // conf/all: /proc/sys
  EXPECT_EQ(st.to_json(), j);  // and written back the same way
}

TEST(Devconf, AllRpFilterDecisionWhenProcSysIsReadOnly) {
  auto erofs = Error::from_errno(EROFS, "open /proc/sys/net/ipv4/conf/all/rp_filter");
  EXPECT_FALSE(rp_filter_all_blocks_capture("2", erofs));  // loose: capture works
  auto strict = rp_filter_all_blocks_capture("1", erofs);
  ASSERT_TRUE(strict);
  EXPECT_EQ(strict->code, EROFS);
  for (const char* want : {"net.ipv4.conf.all.rp_filter is 1", "/proc/sys is read-only in netsteerd's container",
                           "net.ipv4.conf.all.rp_filter=0 or 2"})
    EXPECT_NE(strict->message.find(want), std::string::npos) << strict->message;
  auto denied = rp_filter_all_blocks_capture("1", Error::from_errno(EACCES, "open"));
  ASSERT_TRUE(denied);
  EXPECT_NE(denied->message.find("cannot write it"), std::string::npos) << denied->message;
}
