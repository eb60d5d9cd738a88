// The policy rules and routes a pod's capture installs (pure: no netlink).
#include <gtest/gtest.h>
#include <linux/rtnetlink.h>

#include <algorithm>

#include "netsteer/capture/pod_capture.h"

using namespace netsteer;
using namespace netsteer::capture;

namespace {
std::vector<std::string> strs(const std::vector<RuleSpec>& rules) {
  std::vector<std::string> v;
  for (const auto& r : rules) v.push_back(r.str());
  return v;
}
CaptureConfig cfg_with(std::vector<std::string> ips) {
  CaptureConfig c;
  for (const auto& s : ips) c.pod_ips.push_back(*IpAddr::parse(s));
  return c;
}
}  // namespace

TEST(CaptureRules, DualStackPodGetsMarkedAndCaptureRulesPerFamily) {
  auto c = cfg_with({"10.1.0.5", "fd00::5"});
  auto rules = strs(capture_rules(c));
  std::vector<std::string> want = {
      "rule priority 99 fwmark 0x539/0xfff lookup main",
      "rule priority 100 ipproto tcp lookup 133",
      "-6 rule priority 99 fwmark 0x539/0xfff lookup main",
      "-6 rule priority 100 ipproto tcp lookup 133",
  };
  EXPECT_EQ(rules, want);
  // Never one inverted rule: FIB_RULE_INVERT would invert ipproto too and capture UDP.
  for (const auto& r : capture_rules(c)) EXPECT_TRUE(r.ipproto == 0 || r.ipproto == IPPROTO_TCP);
  auto routes = capture_routes(c);
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_EQ(routes[0].family, AF_INET);
  ASSERT_TRUE(routes[0].prefsrc.has_value());  // the src is required for v4 (ENETUNREACH without it)
  EXPECT_EQ(routes[0].prefsrc->str(), "10.1.0.5");
  EXPECT_EQ(routes[0].table, kCaptureTable);
  EXPECT_EQ(routes[1].family, AF_INET6);
  EXPECT_FALSE(routes[1].prefsrc.has_value());
}

TEST(CaptureRules, FamilyWithoutPodAddressIsNotCaptured) {
  auto c = cfg_with({"10.1.0.5"});
  for (const auto& r : capture_rules(c)) EXPECT_EQ(r.family, AF_INET);
  EXPECT_EQ(capture_routes(c).size(), 1u);
  EXPECT_TRUE(capture_rules(cfg_with({})).empty());
  EXPECT_TRUE(capture_routes(cfg_with({})).empty());
}

TEST(CaptureRules, ExclusionsGetRulesAheadOfCapture) {
  auto c = cfg_with({"10.1.0.5", "fd00::5"});
  c.exclusions.inbound_ports = {8081};
  c.exclusions.outbound_ports = {9001};
  c.exclusions.outbound_cidrs = {*Prefix::parse("192.0.2.0/24")};
  c.exclusions.inbound_sources = {*Prefix::parse("fd00:99::/64")};
  auto rules = capture_rules(c);
  auto s = strs(rules);
  auto has = [&](const std::string& x) { return std::find(s.begin(), s.end(), x) != s.end(); };
  EXPECT_TRUE(has("rule priority 90 ipproto tcp sport 8081 lookup main"));
  EXPECT_TRUE(has("-6 rule priority 90 ipproto tcp sport 8081 lookup main"));
  EXPECT_TRUE(has("rule priority 92 ipproto tcp dport 9001 lookup main"));
  EXPECT_TRUE(has("rule priority 93 to 192.0.2.0/24 ipproto tcp lookup main"));
  EXPECT_TRUE(has("-6 rule priority 91 to fd00:99::/64 ipproto tcp lookup main"));
  EXPECT_FALSE(has("-6 rule priority 93 to 192.0.2.0/24 ipproto tcp lookup main"));  // family-matched
  for (const auto& r : rules)  // every exclusion to main comes before the capture rule
    EXPECT_TRUE(r.table != RT_TABLE_MAIN || r.fwmark || r.priority < kCapturePriority) << r.str();
}

TEST(CaptureRules, UdpPortsGetRulesAndInboundV6GetsTheDeliveryRule) {
  auto c = cfg_with({"10.1.0.5", "fd00::5"});
  c.udp.outbound_ports = {9000};
  c.udp.inbound_ports = {7100};
  c.exclusions.outbound_ports = {9001};
  auto s = strs(capture_rules(c));
  auto has = [&](const std::string& x) { return std::find(s.begin(), s.end(), x) != s.end(); };
  EXPECT_TRUE(has("rule priority 100 ipproto udp dport 9000 lookup 133"));
  EXPECT_TRUE(has("-6 rule priority 100 ipproto udp dport 9000 lookup 133"));
  EXPECT_TRUE(has("rule priority 100 ipproto udp sport 7100 lookup 133"));  // the app's replies
  EXPECT_TRUE(has("-6 rule priority 98 fwmark 0x539/0xfff oif lo lookup 133"));
  EXPECT_FALSE(has("rule priority 98 fwmark 0x539/0xfff oif lo lookup 133"));  // v4 needs none
  // With UDP captured, exclusions cover every protocol (not TCP only).
  EXPECT_TRUE(has("rule priority 92 dport 9001 lookup main"));
  c.udp.inbound_ports.clear();
  s = strs(capture_rules(c));
  EXPECT_FALSE(has("-6 rule priority 98 fwmark 0x539/0xfff oif lo lookup 133"));
}

TEST(CaptureState, RoundTripsAndIgnoresForeignSysctlKeys) {
  CaptureState st;
  st.sysctls = {{"net/ipv4/conf/eth0/accept_local", "0"}};
  st.guarded_ifindexes = {2, 5};
  st.tc_mode = bpf::TcMode::clsact;
  auto back = CaptureState::from_json(st.to_json());
  ASSERT_EQ(back.sysctls.size(), 1u);
  EXPECT_EQ(back.sysctls[0].key, "net/ipv4/conf/eth0/accept_local");
  EXPECT_EQ(back.guarded_ifindexes, (std::vector<int>{2, 5}));
  EXPECT_EQ(back.tc_mode, bpf::TcMode::clsact);
  // A tampered state file must not make the agent write arbitrary /proc/sys keys.
  auto evil = CaptureState::from_json({{"sysctls", {{{"key", "kernel/core_pattern"}, {"value", "|/x"}}}}});
  EXPECT_TRUE(evil.sysctls.empty());
}
