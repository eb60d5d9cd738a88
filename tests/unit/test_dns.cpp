// The DNS proxy's header reading and counters (the path itself: tests/privileged/test_dns.py).
#include <gtest/gtest.h>

#include <vector>

#include "netsteer/dns/dns.h"

using namespace netsteer;

TEST(Dns, ParseHeader) {
  std::vector<uint8_t> q{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  auto h = dns::parse_header(q);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->id, 0x1234);
  EXPECT_FALSE(h->response);
  std::vector<uint8_t> a{0xab, 0xcd, 0x82, 0x83, 0, 1, 0, 0, 0, 0, 0, 0};  // QR, TC, NXDOMAIN
  h = dns::parse_header(a);
  ASSERT_TRUE(h);
  EXPECT_TRUE(h->response);
  EXPECT_TRUE(h->truncated);
  EXPECT_EQ(h->rcode, 3);
  EXPECT_STREQ(dns::rcode_name(h->rcode), "NXDOMAIN");
  EXPECT_STREQ(dns::rcode_name(9), "OTHER");
  a.pop_back();
  EXPECT_FALSE(dns::parse_header(a));  // shorter than a header
}

TEST(Dns, TotalsSumCountersAndHistograms) {
  dns::PodDns p1, p2;
  p1.queries = 3;
  p1.NXDOMAIN = 1;
  p1.latency.observe(0.002);
  p2.queries = 2;
  p2.NOERROR = 2;
  p2.latency.observe(0.2);
  dns::Totals t;
  t += p1.snapshot();
  t += p2.snapshot();
  EXPECT_EQ(t.queries, 5u);
  EXPECT_EQ(t.NXDOMAIN, 1u);
  EXPECT_EQ(t.NOERROR, 2u);
  EXPECT_EQ(t.latency.count, 2u);
  EXPECT_EQ(t.latency.cumulative.back(), 2u);
  auto j = t.to_json();
  EXPECT_EQ(j["rcodes"]["NXDOMAIN"], 1);
}
