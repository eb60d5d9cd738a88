#include "netsteer/udp/packet.h"

#include <netinet/in.h>

#include <cstring>

namespace netsteer::udp {

namespace {

void put16(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  b[at] = static_cast<uint8_t>(v >> 8);
  b[at + 1] = static_cast<uint8_t>(v);
}

bool is_v4(const SockAddr& a) { return a.ip().family == AF_INET; }

const uint8_t* addr_bytes(const SockAddr& a) {
  return is_v4(a) ? reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(&a.ss)->sin_addr)
                  : reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in6*>(&a.ss)->sin6_addr);
}

// IP header at b[0..): v4 20 bytes (DF, TTL 64, header checksum), v6 40 bytes (hop limit 64).
size_t put_ip(std::vector<uint8_t>& b, const SockAddr& src, const SockAddr& dst, uint8_t proto, size_t payload) {
  if (is_v4(src)) {
    b.assign(20, 0);
    b[0] = 0x45;
    put16(b, 2, static_cast<uint32_t>(20 + payload));
    b[6] = 0x40;  // DF
    b[8] = 64;
    b[9] = proto;
    std::memcpy(&b[12], addr_bytes(src), 4);
    std::memcpy(&b[16], addr_bytes(dst), 4);
    put16(b, 10, inet_checksum({b.data(), 20}));
    return 20;
  }
  b.assign(40, 0);
  b[0] = 0x60;
  put16(b, 4, static_cast<uint32_t>(payload));
  b[6] = proto;
  b[7] = 64;
  std::memcpy(&b[8], addr_bytes(src), 16);
  std::memcpy(&b[24], addr_bytes(dst), 16);
  return 40;
}

// The partial sum of the pseudo-header (RFC 768 / RFC 8200 8.1) taken from the IP header at b.
uint32_t pseudo_sum(const std::vector<uint8_t>& b, uint8_t proto, size_t len) {
  bool v4 = (b[0] >> 4) == 4;
  size_t off = v4 ? 12 : 8, n = v4 ? 8 : 32;
  uint32_t sum = 0;
  for (size_t i = 0; i < n; i += 2) sum += static_cast<uint32_t>(b[off + i] << 8 | b[off + i + 1]);
  return sum + proto + static_cast<uint32_t>(len >> 16) + static_cast<uint32_t>(len & 0xffff);
}

}  // namespace

uint16_t inet_checksum(std::span<const uint8_t> data, uint32_t sum) {
  size_t i = 0;
  for (; i + 1 < data.size(); i += 2) sum += static_cast<uint32_t>(data[i] << 8 | data[i + 1]);
  if (i < data.size()) sum += static_cast<uint32_t>(data[i] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

std::vector<uint8_t> build_udp(const SockAddr& from, const SockAddr& to, std::span<const uint8_t> payload) {
  std::vector<uint8_t> b;
  size_t ulen = 8 + payload.size();
  size_t h = put_ip(b, from, to, IPPROTO_UDP, ulen);
  b.resize(h + ulen);
  put16(b, h, from.port());
  put16(b, h + 2, to.port());
  put16(b, h + 4, static_cast<uint32_t>(ulen));
  if (!payload.empty()) std::memcpy(&b[h + 8], payload.data(), payload.size());
  uint16_t c = inet_checksum({&b[h], ulen}, pseudo_sum(b, IPPROTO_UDP, ulen));
  put16(b, h + 6, c ? c : 0xffff);  // 0 means "no checksum" (and is invalid for IPv6)
  return b;
}

std::vector<uint8_t> build_icmp_unreach(const SockAddr& app, const SockAddr& odst, size_t payload_len, Unreach why) {
  bool v4 = is_v4(app);
  // The quoted datagram: the app's IP header and the 8-byte UDP header (RFC 792 / RFC 4443).
  std::vector<uint8_t> quote;
  size_t qh = put_ip(quote, app, odst, IPPROTO_UDP, 8 + payload_len);
  quote.resize(qh + 8);
  put16(quote, qh, app.port());
  put16(quote, qh + 2, odst.port());
  put16(quote, qh + 4, static_cast<uint32_t>(8 + payload_len));
  size_t ilen = 8 + quote.size();
  std::vector<uint8_t> b;
  uint8_t proto = v4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
  size_t h = put_ip(b, odst, app, proto, ilen);
  b.resize(h + ilen);
  b[h] = v4 ? 3 : 1;  // destination unreachable
  b[h + 1] = v4 ? (why == Unreach::port ? 3 : why == Unreach::host ? 1 : 0) : (why == Unreach::port ? 4 : why == Unreach::host ? 3 : 0);
  std::memcpy(&b[h + 8], quote.data(), quote.size());
  uint16_t c = v4 ? inet_checksum({&b[h], ilen}) : inet_checksum({&b[h], ilen}, pseudo_sum(b, proto, ilen));
  put16(b, h + 2, c);
  return b;
}

}  // namespace netsteer::udp
