// The packets the UDP proxy writes through its raw sockets: checked against an independent
// reading of the headers (every checksum over its pseudo-header verifies to 0).
#include <gtest/gtest.h>
#include <netinet/in.h>

#include "netsteer/udp/packet.h"

using namespace netsteer;

namespace {

SockAddr at(const char* s) { return *SockAddr::parse(s, 0); }

uint32_t pseudo(const std::vector<uint8_t>& p, uint8_t proto, size_t len) {
  bool v4 = (p[0] >> 4) == 4;
  uint32_t sum = 0;
  for (size_t i = v4 ? 12 : 8; i < (v4 ? 20u : 40u); i += 2) sum += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
  return sum + proto + static_cast<uint32_t>(len);
}

uint16_t be16(const std::vector<uint8_t>& p, size_t at) { return static_cast<uint16_t>(p[at] << 8 | p[at + 1]); }

}  // namespace

TEST(UdpPacket, ChecksumOfRfc1071Example) {
  const uint8_t d[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};  // RFC 1071 section 3: sum ddf2
  EXPECT_EQ(udp::inet_checksum(d), static_cast<uint16_t>(~0xddf2));
  const uint8_t odd[] = {0xab};
  EXPECT_EQ(udp::inet_checksum(odd), static_cast<uint16_t>(~0xab00));
}

TEST(UdpPacket, Ipv4DatagramHasValidHeaderAndChecksum) {
  const uint8_t payload[] = {'h', 'e', 'l', 'l', 'o'};
  auto p = udp::build_udp(at("10.1.0.5:7100"), at("10.1.0.9:5555"), payload);
  ASSERT_EQ(p.size(), 20u + 8 + 5);
  EXPECT_EQ(p[0], 0x45);
  EXPECT_EQ(be16(p, 2), p.size());
  EXPECT_EQ(p[9], IPPROTO_UDP);
  EXPECT_EQ(udp::inet_checksum({p.data(), 20}), 0);  // the IP header checksum verifies
  EXPECT_EQ(be16(p, 20), 7100);
  EXPECT_EQ(be16(p, 22), 5555);
  EXPECT_EQ(be16(p, 24), 13);
  EXPECT_EQ(udp::inet_checksum({p.data() + 20, 13}, pseudo(p, IPPROTO_UDP, 13)), 0);
  EXPECT_EQ(std::string(p.end() - 5, p.end()), "hello");
}

TEST(UdpPacket, Ipv6DatagramChecksumIsNeverZero) {
  auto p = udp::build_udp(at("[fd00::5]:7100"), at("[fd00::9]:5555"), {});
  ASSERT_EQ(p.size(), 48u);
  EXPECT_EQ(p[0] >> 4, 6);
  EXPECT_EQ(be16(p, 4), 8);
  EXPECT_EQ(p[6], IPPROTO_UDP);
  EXPECT_NE(be16(p, 46), 0);
  EXPECT_EQ(udp::inet_checksum({p.data() + 40, 8}, pseudo(p, IPPROTO_UDP, 8)), 0);
}

TEST(UdpPacket, IcmpUnreachableQuotesTheAppsDatagram) {
  // v4: port unreachable (3/3) from the original destination to the app, quoting app → dst.
  auto p = udp::build_icmp_unreach(at("10.1.0.5:40000"), at("10.2.0.9:9999"), 4, udp::Unreach::port);
  ASSERT_EQ(p.size(), 20u + 8 + 20 + 8);
  EXPECT_EQ(p[9], IPPROTO_ICMP);
  EXPECT_EQ((std::vector<uint8_t>(p.begin() + 12, p.begin() + 16)), (std::vector<uint8_t>{10, 2, 0, 9}));
  EXPECT_EQ(p[20], 3);
  EXPECT_EQ(p[21], 3);
  EXPECT_EQ(udp::inet_checksum({p.data() + 20, p.size() - 20}), 0);
  EXPECT_EQ(be16(p, 28 + 2), 20 + 8 + 4);  // quoted total length
  EXPECT_EQ(be16(p, 48), 40000);           // quoted source port: the app's
  EXPECT_EQ(be16(p, 50), 9999);
  EXPECT_EQ(udp::build_icmp_unreach(at("10.1.0.5:1"), at("10.2.0.9:2"), 0, udp::Unreach::host)[21], 1);
  // v6: destination unreachable, port (1/4); the checksum covers the pseudo-header.
  auto q = udp::build_icmp_unreach(at("[fd00::5]:40000"), at("[fd00:2::9]:9999"), 4, udp::Unreach::port);
  ASSERT_EQ(q.size(), 40u + 8 + 40 + 8);
  EXPECT_EQ(q[6], IPPROTO_ICMPV6);
  EXPECT_EQ(q[40], 1);
  EXPECT_EQ(q[41], 4);
  EXPECT_EQ(udp::inet_checksum({q.data() + 40, q.size() - 40}, pseudo(q, IPPROTO_ICMPV6, q.size() - 40)), 0);
  EXPECT_EQ(be16(q, 88), 40000);
}
