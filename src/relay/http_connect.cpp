#include "netsteer/relay/http_connect.h"

#include <charconv>

namespace netsteer::relay {

namespace {
// The HTTP status travels in Error::code as 1000 + status, so Result stays the one error type.
Error http_error(int status, std::string msg) { return Error::msg(std::move(msg), 1000 + status); }
}  // namespace

int connect_error_status(const Error& e) { return e.code > 1000 && e.code < 1600 ? e.code - 1000 : 400; }

std::optional<Result<ConnectRequest>> parse_connect(std::string_view buf) {
  size_t end = buf.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (buf.size() >= kMaxConnectHead) return Result<ConnectRequest>(http_error(431, "request head too large"));
    return std::nullopt;
  }
  if (end + 4 > kMaxConnectHead) return Result<ConnectRequest>(http_error(431, "request head too large"));
  std::string_view line = buf.substr(0, buf.find("\r\n"));
  // METHOD SP target SP HTTP/1.x
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return Result<ConnectRequest>(http_error(400, "malformed request line"));
  std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1),
                   version = line.substr(sp2 + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return Result<ConnectRequest>(http_error(400, "unsupported HTTP version"));
  if (method != "CONNECT") return Result<ConnectRequest>(http_error(405, "only CONNECT is supported"));
  size_t colon = target.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == target.size())
    return Result<ConnectRequest>(http_error(400, "target must be host:port"));
  std::string_view host = target.substr(0, colon), port_s = target.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  else if (host.find(':') != std::string_view::npos)
    return Result<ConnectRequest>(http_error(400, "IPv6 targets must be in brackets"));
  unsigned port = 0;
  auto [p, ec] = std::from_chars(port_s.data(), port_s.data() + port_s.size(), port);
  if (ec != std::errc() || p != port_s.data() + port_s.size() || port == 0 || port > 65535)
    return Result<ConnectRequest>(http_error(400, "bad port"));
  auto ip = IpAddr::parse(host);
  if (!ip.ok()) return Result<ConnectRequest>(http_error(400, "target must be an IP address of the pod"));
  ConnectRequest req;
  req.host = ip->unmapped();
  req.port = static_cast<uint16_t>(port);
  req.head_len = end + 4;
  return Result<ConnectRequest>(req);
}

std::string http_response(int status, std::string_view reason) {
  return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\n" +
         (status == 200 ? "" : "Content-Length: 0\r\nConnection: close\r\n") + "\r\n";
}

}  // namespace netsteer::relay
