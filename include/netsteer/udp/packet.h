// Packets the UDP proxy writes itself through a raw socket (IPPROTO_RAW: the whole IP header is
// ours, so the source can be an address and port the agent holds no socket for):
//   - a UDP datagram from the pod's address and port to an inbound client (the app holds that port);
//   - an ICMP port/host/net unreachable (ICMPv6 destination unreachable) to the app, from the
//     original destination, quoting the app's datagram, so a connected app socket gets the error.
// Addresses are plain (v4 not mapped); both ends must be of one family. Pure functions, unit tested.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "netsteer/common/inet.h"

namespace netsteer::udp {

// The Internet checksum (RFC 1071) of data, continuing from a partial sum.
uint16_t inet_checksum(std::span<const uint8_t> data, uint32_t sum = 0);

// IP header + UDP header (checksum filled in, v4 and v6) + payload.
std::vector<uint8_t> build_udp(const SockAddr& from, const SockAddr& to, std::span<const uint8_t> payload);

// Why an upstream failed, as the app should hear it.
enum class Unreach { port, host, net };
// The ICMP (v4: type 3 codes 3/1/0) or ICMPv6 (type 1 codes 4/3/0) error from `odst` to `app`
// quoting an IP+UDP header app → odst with `payload_len` bytes of payload.
std::vector<uint8_t> build_icmp_unreach(const SockAddr& app, const SockAddr& odst, size_t payload_len, Unreach why);

}  // namespace netsteer::udp
