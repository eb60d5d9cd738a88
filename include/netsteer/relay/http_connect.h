// Parser for an HTTP/1.1 CONNECT request head (the 15008 tunnel). Pure function, fuzzable.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"

namespace netsteer::relay {

inline constexpr size_t kMaxConnectHead = 8192;

struct ConnectRequest {
  IpAddr host;   // numeric only: "10.0.0.1:80" or "[fd00::1]:80"
  uint16_t port = 0;
  size_t head_len = 0;  // bytes of the request head including the final CRLFCRLF
};

// Returns std::nullopt-like EAGAIN error when the head is incomplete (no CRLFCRLF yet and below
// kMaxConnectHead), EINVAL/E2BIG with a message otherwise.
Result<ConnectRequest> parse_connect(std::string_view buf);

}  // namespace netsteer::relay
