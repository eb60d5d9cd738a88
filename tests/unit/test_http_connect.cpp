#include <gtest/gtest.h>

#include "netsteer/relay/http_connect.h"

using namespace netsteer;
using namespace netsteer::relay;

TEST(HttpConnect, ParsesV4AndBracketedV6Targets) {
  auto r = parse_connect("CONNECT 10.1.0.5:8080 HTTP/1.1\r\nHost: 10.1.0.5:8080\r\n\r\nEXTRA");
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->ok()) << r->error().message;
  EXPECT_EQ((*r)->host.str(), "10.1.0.5");
  EXPECT_EQ((*r)->port, 8080);
  EXPECT_EQ((*r)->head_len, std::string("CONNECT 10.1.0.5:8080 HTTP/1.1\r\nHost: 10.1.0.5:8080\r\n\r\n").size());
  auto v6 = parse_connect("CONNECT [fd00::5]:443 HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(v6 && v6->ok());
  EXPECT_EQ((*v6)->host.str(), "fd00::5");
  EXPECT_EQ((*v6)->port, 443);
}

TEST(HttpConnect, IncompleteHeadAsksForMore) {
  EXPECT_FALSE(parse_connect("CONNECT 10.1.0.5:80 HTTP/1.1\r\nHost: x\r\n").has_value());
  EXPECT_FALSE(parse_connect("").has_value());
}

TEST(HttpConnect, BadRequestsCarryTheirStatus) {
  struct Case {
    const char* req;
    int status;
  } cases[] = {
      {"GET / HTTP/1.1\r\n\r\n", 405},
      {"CONNECT 10.1.0.5 HTTP/1.1\r\n\r\n", 400},
      {"CONNECT 10.1.0.5:0 HTTP/1.1\r\n\r\n", 400},
      {"CONNECT 10.1.0.5:70000 HTTP/1.1\r\n\r\n", 400},
      {"CONNECT 10.1.0.5:80x HTTP/1.1\r\n\r\n", 400},
      {"CONNECT example.com:80 HTTP/1.1\r\n\r\n", 400},
      {"CONNECT fd00::5:80 HTTP/1.1\r\n\r\n", 400},
      {"CONNECT 10.1.0.5:80 HTTP/2\r\n\r\n", 400},
      {"CONNECT  10.1.0.5:80 HTTP/1.1\r\n\r\n", 400},
      {"CONNECT 10.1.0.5:80 HTTP/1.1 extra\r\n\r\n", 400},
  };
  for (const auto& c : cases) {
    auto r = parse_connect(c.req);
    ASSERT_TRUE(r.has_value()) << c.req;
    ASSERT_FALSE(r->ok()) << c.req;
    EXPECT_EQ(connect_error_status(r->error()), c.status) << c.req;
  }
}

TEST(HttpConnect, OversizedHeadIsRefused) {
  std::string big = "CONNECT 10.1.0.5:80 HTTP/1.1\r\nX: " + std::string(kMaxConnectHead, 'a');
  auto r = parse_connect(big);
  ASSERT_TRUE(r.has_value());
  ASSERT_FALSE(r->ok());
  EXPECT_EQ(connect_error_status(r->error()), 431);
}

TEST(HttpConnect, Responses) {
  EXPECT_EQ(http_response(200, "Connection established"), "HTTP/1.1 200 Connection established\r\n\r\n");
  EXPECT_EQ(http_response(403, "Forbidden"), "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}
