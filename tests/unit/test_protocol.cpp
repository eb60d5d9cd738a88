#include <gtest/gtest.h>

#include "netsteer/protocol/messages.h"

using namespace netsteer;
using namespace netsteer::protocol;

TEST(Protocol, AddRoundTrip) {
  Request r;
  r.type = MsgType::kAdd;
  r.pod.uid = "pod-1";
  r.pod.name = "web";
  r.pod.namespace_ = "default";
  r.pod.ips = {*IpAddr::parse("10.0.0.5"), *IpAddr::parse("fd00::5")};
  r.pod.exclusions.inbound_ports = {15021, 22};
  r.pod.exclusions.outbound_cidrs = {*Prefix::parse("10.96.0.0/12")};
  r.pod.exclusions.inbound_sources = {*Prefix::parse("169.254.7.127")};
  r.pod.strict = true;
  r.pod.no_dns = true;
  r.pod.dns_upstream = *SockAddr::parse("[fd00::53]:5353", 53);
  r.pod.udp.outbound_ports = {9000, 4789};
  r.pod.udp.inbound_ports = {7100};
  auto d = decode_request(encode_request(r));
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->type, MsgType::kAdd);
  EXPECT_EQ(d->pod.uid, "pod-1");
  EXPECT_EQ(d->pod.name, "web");
  EXPECT_EQ(d->pod.namespace_, "default");
  ASSERT_EQ(d->pod.ips.size(), 2u);
  EXPECT_EQ(d->pod.ips[1].str(), "fd00::5");
  EXPECT_EQ(d->pod.exclusions.inbound_ports, (std::vector<uint16_t>{22, 15021}));  // sorted
  EXPECT_EQ(d->pod.exclusions.outbound_cidrs[0].str(), "10.96.0.0/12");
  EXPECT_EQ(d->pod.exclusions.inbound_sources[0].str(), "169.254.7.127/32");
  EXPECT_TRUE(d->pod.strict);
  EXPECT_TRUE(d->pod.no_dns);
  ASSERT_TRUE(d->pod.dns_upstream);
  EXPECT_EQ(d->pod.dns_upstream->str(), "[fd00::53]:5353");
  EXPECT_EQ(d->pod.udp.outbound_ports, (std::vector<uint16_t>{4789, 9000}));
  EXPECT_EQ(d->pod.udp.inbound_ports, (std::vector<uint16_t>{7100}));
}

TEST(Protocol, DelByNetnsRoundTrip) {
  Request r;
  r.type = MsgType::kDel;
  r.netns_ino = 4026532000ULL;
  r.netns_dev = 4;
  auto d = decode_request(encode_request(r));
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(*d->netns_ino, 4026532000ULL);
  EXPECT_EQ(*d->netns_dev, 4u);
}

TEST(Protocol, ReplyRoundTrip) {
  Reply r;
  r.ok = false;
  r.error = "nope";
  r.data = {{"x", 1}};
  auto d = decode_reply(encode_reply(r));
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->ok);
  EXPECT_EQ(d->error, "nope");
  EXPECT_EQ(d->data["x"], 1);
  EXPECT_FALSE(decode_reply("[]").ok());
  EXPECT_FALSE(decode_reply("{\"error\":\"x\"}").ok());
}

struct BadCase {
  const char* json;
  const char* expect;  // substring of the error
};

class ProtocolBad : public ::testing::TestWithParam<BadCase> {};

TEST_P(ProtocolBad, Rejected) {
  auto d = decode_request(GetParam().json);
  ASSERT_FALSE(d.ok()) << GetParam().json;
  EXPECT_NE(d.error().message.find(GetParam().expect), std::string::npos)
      << "got: " << d.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    All, ProtocolBad,
    ::testing::Values(
        BadCase{"{not json", "malformed JSON"}, BadCase{"", "malformed JSON"}, BadCase{"[1,2]", "JSON object"},
        BadCase{R"({"version":1})", "missing field 'type'"},
        BadCase{R"({"type":"frobnicate","version":1})", "unknown message type"},
        BadCase{R"({"type":"hello"})", "missing field 'version'"},
        BadCase{R"({"type":"hello","version":"1"})", "'version' must be an integer"},
        BadCase{R"({"type":"hello","version":2})", "unsupported protocol version"},
        BadCase{R"({"type":7,"version":1})", "'type' must be a string"},
        BadCase{R"({"type":"add","version":1})", "missing field 'pod'"},
        BadCase{R"({"type":"add","version":1,"pod":[]})", "'pod' must be an object"},
        BadCase{R"({"type":"add","version":1,"pod":{}})", "missing field 'uid'"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":5}})", "'uid' must be a string"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"../etc"}})", "may only contain"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":".."}})", "must not be"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":""}})", "1..128"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","name":["x"]}})", "'name' must be a string"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","ips":"10.0.0.1"}})", "'ips' must be an array"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","ips":["10.0.0.300"]}})", "invalid IP address"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","strict":"yes"}})", "'strict' must be a boolean"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","no_dns":1}})", "'no_dns' must be a boolean"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","udp":[7]}})", "'udp' must be an object"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","udp":{"outbound_ports":[0]}}})", "udp: field 'outbound_ports'"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","udp":{"inbound_ports":[53]}}})", "ports other than 53"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","udp":{"outbound_ports":[15001]}}})", "ports other than 53"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","dns_upstream":"10.0.0.1:0"}})", "bad port"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","dns_upstream":"resolver:53"}})", "not an IP address"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","exclusions":{"inbound_ports":[0]}}})",
                "ports 1..65535"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","exclusions":{"inbound_ports":[70000]}}})",
                "ports 1..65535"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","exclusions":{"outbound_cidrs":["10.0.0.0/33"]}}})",
                "prefix length"},
        BadCase{R"({"type":"add","version":1,"pod":{"uid":"a","exclusions":5}})", "'exclusions' must be an object"},
        BadCase{R"({"type":"del","version":1})", "needs 'uid' or 'netns_ino'"},
        BadCase{R"({"type":"del","version":1,"netns_ino":-4})", "non-negative integer"},
        BadCase{R"({"type":"snapshot","version":1})", "missing field 'uids'"},
        BadCase{R"({"type":"snapshot","version":1,"uids":[1]})", "array of strings"}),
    [](const ::testing::TestParamInfo<BadCase>& i) { return "case" + std::to_string(i.index); });

TEST(Protocol, OversizedRefused) {
  std::string big(kMaxMessageSize + 1, ' ');
  auto d = decode_request(big);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code, EMSGSIZE);
}

TEST(Protocol, UnknownExtraFieldsIgnored) {
  // Forward compatibility: newer senders may add fields; only known fields are type-checked.
  auto d = decode_request(R"({"type":"list","version":1,"future":{"x":1}})");
  ASSERT_TRUE(d.ok()) << d.error().message;
}

TEST(Inet, ParseAndContain) {
  auto p = Prefix::parse("10.1.2.3/8");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->str(), "10.0.0.0/8");
  EXPECT_TRUE(p->contains(*IpAddr::parse("10.200.0.1")));
  EXPECT_TRUE(p->contains(*IpAddr::parse("::ffff:10.200.0.1")));
  EXPECT_FALSE(p->contains(*IpAddr::parse("11.0.0.1")));
  auto p6 = Prefix::parse("fd00:1::/32");
  ASSERT_TRUE(p6.ok());
  EXPECT_TRUE(p6->contains(*IpAddr::parse("fd00:1:2::9")));
  EXPECT_FALSE(p6->contains(*IpAddr::parse("fd00:2::9")));
  EXPECT_FALSE(Prefix::parse("10.0.0.0/").ok());
  EXPECT_FALSE(Prefix::parse("10.0.0.0/x").ok());
  EXPECT_TRUE(IpAddr::parse("127.0.0.5")->is_loopback());
  EXPECT_TRUE(IpAddr::parse("::1")->is_loopback());
  EXPECT_TRUE(IpAddr::parse("::ffff:127.0.0.1")->is_loopback());
  EXPECT_EQ(IpAddr::parse("::ffff:10.0.0.1")->unmapped().str(), "10.0.0.1");
  EXPECT_EQ(IpAddr::parse("10.0.0.1")->v6_mapped().str(), "::ffff:10.0.0.1");
  auto sa = SockAddr::make(*IpAddr::parse("fd00::1"), 8080);
  EXPECT_EQ(sa.str(), "[fd00::1]:8080");
  EXPECT_EQ(sa.port(), 8080);
}

TEST(Inet, SockAddrParse) {
  EXPECT_EQ(SockAddr::parse("10.0.0.10", 53)->str(), "10.0.0.10:53");
  EXPECT_EQ(SockAddr::parse("10.0.0.10:5353", 53)->str(), "10.0.0.10:5353");
  EXPECT_EQ(SockAddr::parse("fd00::a", 53)->str(), "[fd00::a]:53");
  EXPECT_EQ(SockAddr::parse("[fd00::a]:54", 53)->str(), "[fd00::a]:54");
  EXPECT_EQ(SockAddr::parse("[fd00::a]", 53)->str(), "[fd00::a]:53");
  for (const char* bad : {"", "10.0.0.1:", "10.0.0.1:65536", "10.0.0.1:x", "[fd00::a", "[fd00::a]54", "host:53"})
    EXPECT_FALSE(SockAddr::parse(bad, 53).ok()) << bad;
}
