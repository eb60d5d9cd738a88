#include "netsteer/common/inet.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace netsteer {

Result<IpAddr> IpAddr::parse(std::string_view s) {
  std::string str(s);
  IpAddr a;
  if (::inet_pton(AF_INET, str.c_str(), a.bytes.data()) == 1) {
    a.family = AF_INET;
    return a;
  }
  if (::inet_pton(AF_INET6, str.c_str(), a.bytes.data()) == 1) {
    a.family = AF_INET6;
    return a;
  }
  return Error::msg("invalid IP address '" + str + "'", EINVAL);
}

IpAddr IpAddr::from_sockaddr(const sockaddr_storage& ss) {
  IpAddr a;
  if (ss.ss_family == AF_INET) {
    a.family = AF_INET;
    std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in&>(ss).sin_addr, 4);
  } else if (ss.ss_family == AF_INET6) {
    a.family = AF_INET6;
    std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in6&>(ss).sin6_addr, 16);
  }
  return a;
}

std::string IpAddr::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family != AF_INET && family != AF_INET6) return "?";
  ::inet_ntop(family, bytes.data(), buf, sizeof buf);
  return buf;
}

bool IpAddr::is_loopback() const {
  if (family == AF_INET) return bytes[0] == 127;
  if (family == AF_INET6) {
    static const uint8_t lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    if (std::memcmp(bytes.data(), lo, 16) == 0) return true;
    return unmapped().family == AF_INET && unmapped().is_loopback();
  }
  return false;
}

IpAddr IpAddr::unmapped() const {
  static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (family != AF_INET6 || std::memcmp(bytes.data(), prefix, 12) != 0) return *this;
  IpAddr a;
  a.family = AF_INET;
  std::memcpy(a.bytes.data(), bytes.data() + 12, 4);
  return a;
}

IpAddr IpAddr::v6_mapped() const {
  if (family != AF_INET) return *this;
  IpAddr a;
  a.family = AF_INET6;
  a.bytes[10] = a.bytes[11] = 0xff;
  std::memcpy(a.bytes.data() + 12, bytes.data(), 4);
  return a;
}

Result<Prefix> Prefix::parse(std::string_view s) {
  auto slash = s.find('/');
  NS_TRY(IpAddr addr, IpAddr::parse(s.substr(0, slash)));
  Prefix p;
  p.addr = addr;
  unsigned max = addr.family == AF_INET ? 32 : 128;
  p.len = static_cast<uint8_t>(max);
  if (slash != std::string_view::npos) {
    auto lenstr = s.substr(slash + 1);
    unsigned v = 0;
    auto [ptr, ec] = std::from_chars(lenstr.data(), lenstr.data() + lenstr.size(), v);
    if (ec != std::errc() || ptr != lenstr.data() + lenstr.size() || lenstr.empty() || v > max)
      return Error::msg("invalid prefix length in '" + std::string(s) + "'", EINVAL);
    p.len = static_cast<uint8_t>(v);
  }
  // Normalise: clear host bits.
  for (unsigned i = 0; i < 16; ++i) {
    unsigned bit = i * 8;
    if (bit >= p.len) p.addr.bytes[i] = 0;
    else if (bit + 8 > p.len) p.addr.bytes[i] &= static_cast<uint8_t>(0xff00 >> (p.len - bit));
  }
  return p;
}

std::string Prefix::str() const { return addr.str() + "/" + std::to_string(len); }

bool Prefix::contains(const IpAddr& a0) const {
  IpAddr a = a0.unmapped();
  if (a.family != addr.family) return false;
  for (unsigned i = 0; i < 16; ++i) {
    unsigned bit = i * 8;
    if (bit >= len) break;
    uint8_t mask = bit + 8 > len ? static_cast<uint8_t>(0xff00 >> (len - bit)) : 0xff;
    if ((a.bytes[i] & mask) != addr.bytes[i]) return false;
  }
  return true;
}

SockAddr SockAddr::make(const IpAddr& ip, uint16_t port) {
  SockAddr s;
  if (ip.family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&s.ss);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    std::memcpy(&in->sin_addr, ip.bytes.data(), 4);
    s.len = sizeof(sockaddr_in);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&s.ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    std::memcpy(&in6->sin6_addr, ip.bytes.data(), 16);
    s.len = sizeof(sockaddr_in6);
  }
  return s;
}

Result<SockAddr> SockAddr::parse(std::string_view s, uint16_t default_port) {
  std::string_view host = s, port;
  bool has_port = false;
  if (!s.empty() && s.front() == '[') {  // [v6] or [v6]:port
    auto close = s.find(']');
    if (close == std::string_view::npos) return Error::msg("address '" + std::string(s) + "': missing ']'", EINVAL);
    host = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return Error::msg("address '" + std::string(s) + "': expected ':' after ']'", EINVAL);
      port = s.substr(close + 2);
      has_port = true;
    }
  } else if (auto colon = s.find(':'); colon != std::string_view::npos && s.find(':', colon + 1) == std::string_view::npos) {
    host = s.substr(0, colon);  // v4:port (a bare v6 address has several colons)
    port = s.substr(colon + 1);
    has_port = true;
  }
  auto ip = IpAddr::parse(host);
  if (!ip.ok()) return Error::msg("address '" + std::string(s) + "': not an IP address", EINVAL);
  if (!has_port) return SockAddr::make(*ip, default_port);
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535)
    return Error::msg("address '" + std::string(s) + "': bad port", EINVAL);
  return SockAddr::make(*ip, static_cast<uint16_t>(p));
}

uint16_t SockAddr::port() const {
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(ss).sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(ss).sin6_port);
  return 0;
}

std::string SockAddr::str() const {
  IpAddr a = ip();
  if (a.family == AF_INET6) return "[" + a.str() + "]:" + std::to_string(port());
  return a.str() + ":" + std::to_string(port());
}

}  // namespace netsteer
