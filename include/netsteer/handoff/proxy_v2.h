// PROXY protocol version 2 (HAProxy's doc/proxy-protocol.txt), the header the relay sends first on
// a connection to a configured proxy, so that an unmodified HAProxy (`accept-proxy`) or nginx
// (`listen … proxy_protocol`) learns the pod's client and the original destination.
//
//   12-byte signature, 0x21 (v2, PROXY), 0x11 TCP4 / 0x21 TCP6, u16 length, source and
//   destination addresses and ports (network order), then TLVs in the order HAProxy writes them:
//   CRC32C (0x03, over the whole header with the field zeroed), UNIQUE_ID (0x05, <= 128 bytes),
//   then the application range 0xE0-0xEF (pod identity, behind an option).
// With the default options (CRC32C + a 16-character unique id) a TCP6 header is 78 bytes: within
// the 107 bytes nginx's stream module accepts.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"

namespace netsteer::handoff {

inline constexpr uint8_t kTlvCrc32c = 0x03;
inline constexpr uint8_t kTlvUniqueId = 0x05;
inline constexpr uint8_t kTlvPodName = 0xE0;  // "namespace/name"
inline constexpr uint8_t kTlvPodUid = 0xE1;
inline constexpr size_t kNginxMaxHeader = 107;

struct ProxyV2Options {
  std::string unique_id;  // empty: no UNIQUE_ID TLV
  bool crc32c = true;
  std::vector<std::pair<uint8_t, std::string>> app_tlvs;  // types 0xE0-0xEF, after the others
};

// CRC-32C (Castagnoli), as HAProxy's hash_crc32c.
uint32_t crc32c(std::span<const uint8_t> data);

// The header for a connection from `src` to `dst` (the original destination). A v4-mapped
// address counts as IPv4; when the two families still differ both are written as TCP6 (mapped).
Result<std::vector<uint8_t>> encode_proxy_v2(const SockAddr& src, const SockAddr& dst, const ProxyV2Options& o);

// The reading side (tests, fuzzing): the addresses and TLVs of a complete header, the CRC checked
// when present. Errors name what is wrong.
struct ProxyV2Header {
  SockAddr src, dst;
  std::vector<std::pair<uint8_t, std::string>> tlvs;
  size_t size = 0;  // bytes the header took
};
Result<ProxyV2Header> decode_proxy_v2(std::span<const uint8_t> data);

}  // namespace netsteer::handoff
