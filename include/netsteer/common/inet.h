// IP addresses and prefixes (v4 and v6), parsed and printed without the resolver.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "netsteer/common/result.h"

namespace netsteer {

struct IpAddr {
  int family = AF_UNSPEC;             // AF_INET or AF_INET6
  std::array<uint8_t, 16> bytes{};    // network order; v4 uses the first 4 bytes

  static Result<IpAddr> parse(std::string_view s);
  static IpAddr from_sockaddr(const sockaddr_storage& ss);
  std::string str() const;
  bool is_v4() const { return family == AF_INET; }
  bool is_v6() const { return family == AF_INET6; }
  bool is_loopback() const;
  // A v4-mapped v6 address (::ffff:a.b.c.d) turned into plain v4; others unchanged.
  IpAddr unmapped() const;
  // The same address as v4-mapped v6 when it is v4; others unchanged.
  IpAddr v6_mapped() const;
  size_t len() const { return family == AF_INET ? 4 : 16; }
  bool operator==(const IpAddr& o) const = default;
};

struct Prefix {
  IpAddr addr;
  uint8_t len = 0;

  // "10.0.0.0/8", "fd00::/64", or a bare address (full length).
  static Result<Prefix> parse(std::string_view s);
  std::string str() const;
  bool contains(const IpAddr& a) const;
  bool operator==(const Prefix& o) const = default;
};

// Socket address helpers.
struct SockAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;

  static SockAddr make(const IpAddr& ip, uint16_t port);
  // "ADDR", "ADDR:PORT" (IPv4), "V6" or "[V6]:PORT"; default_port when no port is given.
  static Result<SockAddr> parse(std::string_view s, uint16_t default_port);
  IpAddr ip() const { return IpAddr::from_sockaddr(ss); }
  uint16_t port() const;
  std::string str() const;  // "1.2.3.4:80" or "[::1]:80"
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
  sockaddr* sa() { return reinterpret_cast<sockaddr*>(&ss); }
};

}  // namespace netsteer
