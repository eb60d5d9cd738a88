// The 15008 tunnel's request: HTTP/1.1 `CONNECT <ip>:<port> HTTP/1.1` (curl -p -x works).
// Pure parsing, no I/O; fuzzed and unit tested.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"

namespace netsteer::relay {

inline constexpr size_t kMaxConnectHead = 8192;  // larger request heads are refused (431)

struct ConnectRequest {
  IpAddr host;
  uint16_t port = 0;
  size_t head_len = 0;  // bytes of the request head including the final CRLFCRLF
};

// A parse failure carries the HTTP status to answer with.
struct ConnectError {
  int status = 400;
  std::string reason;
};

// nullopt: the head is incomplete (read more). Otherwise the request or the error to answer.
std::optional<Result<ConnectRequest>> parse_connect(std::string_view buf);
// The status of an error produced by parse_connect (400 when not set).
int connect_error_status(const Error& e);

std::string http_response(int status, std::string_view reason);

}  // namespace netsteer::relay
