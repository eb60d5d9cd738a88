// The PROXY v2 encoder against the bytes HAProxy itself produces (`server … send-proxy-v2
// proxy-v2-options unique-id,crc32c`, an independent producer) for the same addresses, v4 and v6,
// and a property test of encode → decode for every family and option.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <thread>

#include "netsteer/common/unique_fd.h"
#include "netsteer/handoff/proxy_v2.h"

extern char** environ;

using namespace netsteer;
using handoff::ProxyV2Options;

namespace {

SockAddr addr(const char* s) { return *SockAddr::parse(s, 0); }

UniqueFd listen_on(const SockAddr& a) {
  UniqueFd fd(::socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), a.sa(), a.len) < 0 || ::listen(fd.get(), 8) < 0) return UniqueFd();
  return fd;
}

SockAddr local_of(int fd) {
  SockAddr a;
  a.len = sizeof a.ss;
  ::getsockname(fd, a.sa(), &a.len);
  return a;
}

bool have_haproxy() { return std::system("command -v haproxy >/dev/null 2>&1") == 0; }

// What HAProxy sends its server when a client connects from `client_ip` to its frontend on `ip`.
// Returns the header bytes, the client's address and the frontend's.
struct Capture {
  std::vector<uint8_t> header;
  SockAddr client, frontend;
};

Capture haproxy_header(const char* ip, const std::string& unique_id) {
  Capture c;
  SockAddr any = SockAddr::make(*IpAddr::parse(ip), 0);
  UniqueFd server = listen_on(any);
  UniqueFd probe = listen_on(any);  // a free port for the frontend
  EXPECT_TRUE(server && probe);
  SockAddr srv = local_of(server.get());
  c.frontend = local_of(probe.get());
  probe.reset();
  char dir[] = "/tmp/netsteer-pp2-XXXXXX";
  EXPECT_NE(::mkdtemp(dir), nullptr);
  std::string cfg = std::string(dir) + "/haproxy.cfg";
  std::ofstream(cfg) << "global\n  maxconn 16\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n"
                        "  timeout server 5s\nfrontend f\n  bind "
                     << c.frontend.str() << "\n  unique-id-format " << unique_id
                     << "\n  default_backend b\nbackend b\n  server s " << srv.str()
                     << " send-proxy-v2 proxy-v2-options unique-id,crc32c\n";
  pid_t pid = 0;
  const char* argv[] = {"haproxy", "-db", "-q", "-f", cfg.c_str(), nullptr};
  EXPECT_EQ(::posix_spawnp(&pid, "haproxy", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
  // Connect once it listens.
  UniqueFd cl;
  for (int i = 0; i < 200 && !cl; ++i) {
    UniqueFd fd(::socket(c.frontend.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), c.frontend.sa(), c.frontend.len) == 0) cl = std::move(fd);
    else std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(cl) << "haproxy did not listen on " << c.frontend.str();
  c.client = local_of(cl.get());
  timeval tv{5, 0};
  ::setsockopt(server.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  UniqueFd up(::accept(server.get(), nullptr, nullptr));
  EXPECT_TRUE(up) << "haproxy did not connect to its server";
  if (up) {
    ::setsockopt(up.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint8_t buf[512];
    size_t have = 0, want = 16;
    while (have < want) {
      ssize_t n = ::recv(up.get(), buf + have, sizeof buf - have, 0);
      if (n <= 0) break;
      have += static_cast<size_t>(n);
      if (have >= 16) want = 16 + static_cast<size_t>(buf[14] << 8 | buf[15]);
    }
    c.header.assign(buf, buf + std::min(have, want));
  }
  ::kill(pid, SIGTERM);
  ::waitpid(pid, nullptr, 0);
  std::remove(cfg.c_str());
  ::rmdir(dir);
  return c;
}

}  // namespace

TEST(ProxyV2, Crc32cCheckValue) {
  const uint8_t digits[] = {'1', '2', '3', '4', '5', '6', '7', '8', '9'};
  EXPECT_EQ(handoff::crc32c(digits), 0xE3069283u);  // the CRC-32C check value (RFC 3720 B.4)
}

TEST(ProxyV2, SameBytesAsHaproxyV4AndV6) {
  if (!have_haproxy()) {
    if (std::getenv("CI") && std::string(std::getenv("CI")) == "true") FAIL() << "haproxy missing (scripts/setup.sh)";
    GTEST_SKIP() << "haproxy missing";
  }
  for (const char* ip : {"127.0.0.1", "::1"}) {
    Capture c = haproxy_header(ip, "a1b2c3d4e5f60718");
    ASSERT_GE(c.header.size(), 16u) << ip;
    ProxyV2Options o;
    o.unique_id = "a1b2c3d4e5f60718";
    auto ours = handoff::encode_proxy_v2(c.client, c.frontend, o);
    ASSERT_TRUE(ours.ok()) << ours.error().message;
    EXPECT_EQ(*ours, c.header) << ip << ": ours " << ours->size() << " bytes, haproxy " << c.header.size();
    EXPECT_LE(ours->size(), handoff::kNginxMaxHeader);
  }
}

TEST(ProxyV2, EncodeDecodeRoundTripsEveryFamilyAndOption) {
  std::mt19937 rng(42);
  const char* addrs[] = {"10.1.2.3:1", "[fd00::1]:65535", "[::ffff:192.0.2.7]:80", "[2001:db8::42]:443"};
  for (int i = 0; i < 2000; ++i) {
    SockAddr s = addr(addrs[rng() % 4]), d = addr(addrs[rng() % 4]);
    s = SockAddr::make(s.ip(), static_cast<uint16_t>(rng()));
    ProxyV2Options o;
    o.crc32c = rng() % 2;
    if (rng() % 2) o.unique_id = std::string(rng() % 129, static_cast<char>('a' + rng() % 26));
    if (rng() % 2) o.app_tlvs = {{handoff::kTlvPodName, "ns/name"}, {handoff::kTlvPodUid, std::string(rng() % 40, 'u')}};
    auto b = handoff::encode_proxy_v2(s, d, o);
    ASSERT_TRUE(b.ok()) << b.error().message;
    auto h = handoff::decode_proxy_v2(*b);
    ASSERT_TRUE(h.ok()) << h.error().message;
    EXPECT_EQ(h->size, b->size());
    EXPECT_EQ(h->src.str(), SockAddr::make(s.ip().unmapped(), s.port()).str());
    EXPECT_EQ(h->dst.str(), SockAddr::make(d.ip().unmapped(), d.port()).str());
    size_t want_tlvs = (o.crc32c ? 1 : 0) + (o.unique_id.empty() ? 0 : 1) + o.app_tlvs.size();
    ASSERT_EQ(h->tlvs.size(), want_tlvs);
    if (!o.unique_id.empty()) EXPECT_EQ(h->tlvs[o.crc32c ? 1 : 0].second, o.unique_id);
    if (o.crc32c) {  // any flipped bit is caught
      auto bad = *b;
      bad[rng() % bad.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
      auto r = handoff::decode_proxy_v2(bad);
      EXPECT_FALSE(r.ok() && r->src.str() == h->src.str() && r->dst.str() == h->dst.str() && r->tlvs == h->tlvs);
    }
  }
  // Refusals.
  ProxyV2Options o;
  o.unique_id = std::string(129, 'x');
  EXPECT_FALSE(handoff::encode_proxy_v2(addr("10.0.0.1:1"), addr("10.0.0.2:2"), o).ok());
  o.unique_id.clear();
  o.app_tlvs = {{0x30, "x"}};
  EXPECT_FALSE(handoff::encode_proxy_v2(addr("10.0.0.1:1"), addr("10.0.0.2:2"), o).ok());
  const uint8_t junk[] = {1, 2, 3};
  EXPECT_FALSE(handoff::decode_proxy_v2(junk).ok());
}
