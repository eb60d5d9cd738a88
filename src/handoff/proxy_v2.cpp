#include "netsteer/handoff/proxy_v2.h"

#include <netinet/in.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace netsteer::handoff {

namespace {

constexpr uint8_t kSignature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> t = [] {
    std::array<uint32_t, 256> r{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      r[i] = c;
    }
    return r;
  }();
  return t;
}

void put16(std::vector<uint8_t>& b, uint32_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}

// 4 (v4) or 16 (v6, v4 mapped when `as_v6`) address bytes.
void put_addr(std::vector<uint8_t>& b, const IpAddr& ip, bool as_v6) {
  IpAddr a = as_v6 ? ip.v6_mapped() : ip;
  size_t n = as_v6 ? 16 : 4;
  b.insert(b.end(), a.bytes.begin(), a.bytes.begin() + static_cast<long>(n));
}

Status tlv(std::vector<uint8_t>& b, uint8_t type, std::string_view v) {
  if (v.size() > 0xffff) return Error::msg("PROXY v2 TLV too long", EINVAL);
  b.push_back(type);
  put16(b, static_cast<uint32_t>(v.size()));
  b.insert(b.end(), v.begin(), v.end());
  return {};
}

uint16_t get16(std::span<const uint8_t> d, size_t at) { return static_cast<uint16_t>(d[at] << 8 | d[at + 1]); }

}  // namespace

uint32_t crc32c(std::span<const uint8_t> data) {
  const auto& t = crc_table();
  uint32_t c = 0xffffffffu;
  for (uint8_t x : data) c = t[(c ^ x) & 0xff] ^ (c >> 8);
  return ~c;
}

Result<std::vector<uint8_t>> encode_proxy_v2(const SockAddr& src, const SockAddr& dst, const ProxyV2Options& o) {
  IpAddr s = src.ip().unmapped(), d = dst.ip().unmapped();
  if ((s.family != AF_INET && s.family != AF_INET6) || (d.family != AF_INET && d.family != AF_INET6))
    return Error::msg("PROXY v2: addresses must be IPv4 or IPv6", EAFNOSUPPORT);
  if (o.unique_id.size() > 128) return Error::msg("PROXY v2: UNIQUE_ID is at most 128 bytes", EINVAL);
  bool v6 = s.family == AF_INET6 || d.family == AF_INET6;
  std::vector<uint8_t> b(kSignature, kSignature + 12);
  b.reserve(128);
  b.push_back(0x21);
  b.push_back(v6 ? 0x21 : 0x11);
  put16(b, 0);  // length, set below
  put_addr(b, s, v6);
  put_addr(b, d, v6);
  put16(b, src.port());
  put16(b, dst.port());
  size_t crc_at = 0;
  if (o.crc32c) {
    NS_TRY_STATUS(tlv(b, kTlvCrc32c, std::string(4, '\0')));
    crc_at = b.size() - 4;
  }
  if (!o.unique_id.empty()) NS_TRY_STATUS(tlv(b, kTlvUniqueId, o.unique_id));
  for (const auto& [type, value] : o.app_tlvs) {
    if (type < 0xE0 || type > 0xEF) return Error::msg("PROXY v2: application TLVs are 0xE0-0xEF", EINVAL);
    NS_TRY_STATUS(tlv(b, type, value));
  }
  if (b.size() - 16 > 0xffff) return Error::msg("PROXY v2 header too long", EINVAL);
  b[14] = static_cast<uint8_t>((b.size() - 16) >> 8);
  b[15] = static_cast<uint8_t>(b.size() - 16);
  if (o.crc32c) {
    uint32_t c = crc32c(b);
    for (int i = 0; i < 4; ++i) b[crc_at + static_cast<size_t>(i)] = static_cast<uint8_t>(c >> (24 - 8 * i));
  }
  return b;
}

Result<ProxyV2Header> decode_proxy_v2(std::span<const uint8_t> d) {
  if (d.size() < 16) return Error::msg("PROXY v2: shorter than the fixed header", EINVAL);
  if (std::memcmp(d.data(), kSignature, 12) != 0) return Error::msg("PROXY v2: bad signature", EINVAL);
  if (d[12] != 0x21) return Error::msg("PROXY v2: not version 2 / PROXY command", EINVAL);
  size_t len = get16(d, 14), total = 16 + len;
  if (d.size() < total) return Error::msg("PROXY v2: truncated", EINVAL);
  bool v6 = d[13] == 0x21;
  if (d[13] != 0x11 && !v6) return Error::msg("PROXY v2: only TCP4 and TCP6 are read", EINVAL);
  size_t alen = v6 ? 36 : 12;
  if (len < alen) return Error::msg("PROXY v2: address block too short", EINVAL);
  ProxyV2Header h;
  IpAddr s, t;
  s.family = t.family = v6 ? AF_INET6 : AF_INET;
  size_t n = v6 ? 16 : 4;
  std::memcpy(s.bytes.data(), &d[16], n);
  std::memcpy(t.bytes.data(), &d[16 + n], n);
  h.src = SockAddr::make(s.unmapped(), get16(d, 16 + 2 * n));
  h.dst = SockAddr::make(t.unmapped(), get16(d, 18 + 2 * n));
  size_t crc_at = 0;
  for (size_t i = 16 + alen; i < total;) {
    if (i + 3 > total) return Error::msg("PROXY v2: truncated TLV", EINVAL);
    size_t l = get16(d, i + 1);
    if (i + 3 + l > total) return Error::msg("PROXY v2: TLV past the header", EINVAL);
    if (d[i] == kTlvCrc32c) {
      if (l != 4) return Error::msg("PROXY v2: CRC32C TLV of the wrong size", EINVAL);
      crc_at = i + 3;
    }
    h.tlvs.emplace_back(d[i], std::string(reinterpret_cast<const char*>(&d[i + 3]), l));
    i += 3 + l;
  }
  if (crc_at) {
    std::vector<uint8_t> copy(d.begin(), d.begin() + static_cast<long>(total));
    uint32_t want = static_cast<uint32_t>(copy[crc_at] << 24 | copy[crc_at + 1] << 16 | copy[crc_at + 2] << 8 | copy[crc_at + 3]);
    std::memset(&copy[crc_at], 0, 4);
    if (crc32c(copy) != want) return Error::msg("PROXY v2: CRC32C mismatch", EBADMSG);
  }
  h.size = total;
  return h;
}

}  // namespace netsteer::handoff
