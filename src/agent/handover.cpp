#include "netsteer/agent/handover.h"

#include <fcntl.h>
#include <algorithm>
#include <sys/socket.h>

#include <nlohmann/json.hpp>

#include "netsteer/protocol/messages.h"

namespace netsteer::agent {

using nlohmann::json;

namespace {

constexpr size_t kMaxPacket = protocol::kMaxMessageSize;

// Blocking with deadlines for the duration of the exchange (the control server's sockets are
// non-blocking): a stuck peer costs at most `timeout` per packet.
Status make_blocking(int fd, std::chrono::milliseconds timeout) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) return Error::from_errno(errno, "fcntl");
  return protocol::set_send_timeout(fd, timeout);
}

Result<protocol::Packet> recv_packet(const protocol::SeqpacketChannel& ch, std::chrono::milliseconds timeout,
                                     const char* what) {
  NS_TRY_STATUS(ch.wait_readable(timeout));
  NS_TRY(auto p, ch.recv(kMaxPacket));
  if (p.data.empty() && p.fds.empty() && !p.truncated)
    return Error::msg(std::string("handover: peer closed the connection before ") + what, ECONNRESET);
  if (p.truncated || p.ctrl_truncated) return Error::msg(std::string("handover: truncated ") + what, EPROTO);
  return p;
}

Result<json> parse_object(const protocol::Packet& p, const char* what) {
  json j = json::parse(p.data, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error::msg(std::string("handover: malformed ") + what, EPROTO);
  return j;
}

}  // namespace

Status send_handover(protocol::SeqpacketChannel& ch, const std::vector<HandoverPod>& pods, int control_fd,
                     const std::vector<int>& control_clients, std::chrono::milliseconds timeout) {
  NS_TRY_STATUS(make_blocking(ch.fd(), timeout));
  NS_TRY_STATUS(ch.send(json{{"ok", true}, {"error", ""}, {"pods", pods.size()}}.dump()));
  for (const auto& p : pods) {
    json names = json::array();
    std::vector<int> fds{p.netns.get()};
    for (const auto& [role, fd] : p.sockets) {
      names.push_back(role);
      fds.push_back(fd.get());
    }
    json j{{"record", record_to_json(p.record)}, {"family", p.family}, {"sockets", names}};
    NS_TRY_STATUS(ch.send(j.dump(), fds));
  }
  NS_TRY_STATUS(ch.send(json{{"control", true}, {"clients", control_clients.size()}}.dump(), {control_fd}));
  for (size_t i = 0; i < control_clients.size(); i += protocol::kMaxFdsPerPacket) {
    std::vector<int> fds(control_clients.begin() + i,
                         control_clients.begin() + std::min(control_clients.size(), i + protocol::kMaxFdsPerPacket));
    NS_TRY_STATUS(ch.send(json{{"clients", fds.size()}}.dump(), fds));
  }
  NS_TRY(auto done, recv_packet(ch, timeout, "handover_done"));
  NS_TRY(json j, parse_object(done, "handover_done"));
  if (j.value("type", "") != "handover_done")
    return Error::msg("handover: expected handover_done, got " + done.data.substr(0, 200), EPROTO);
  return {};
}

Result<Handover> request_handover(const std::string& socket_path, std::chrono::milliseconds timeout) {
  Handover h;
  NS_TRY(h.channel, protocol::SeqpacketChannel::connect(socket_path, timeout));  // blocking, sends bounded
  protocol::Request req;
  req.type = protocol::MsgType::kHandover;
  NS_TRY_STATUS(h.channel.send(protocol::encode_request(req)));
  NS_TRY(auto first, recv_packet(h.channel, timeout, "the handover header"));
  auto reply = protocol::decode_reply(first.data);
  if (!reply.ok()) return std::move(reply).error().wrap("handover");
  if (!reply->ok) return Error::msg("the running agent refused the handover: " + reply->error, reply->err_no ? reply->err_no : EPERM);
  auto n = reply->data.find("pods");
  if (n == reply->data.end() || !n->is_number_unsigned() || n->get<uint64_t>() > 100000)
    return Error::msg("handover: header without a pod count", EPROTO);
  for (uint64_t i = 0, count = n->get<uint64_t>(); i < count; ++i) {
    NS_TRY(auto p, recv_packet(h.channel, timeout, "a pod"));
    NS_TRY(json j, parse_object(p, "pod"));
    std::vector<std::string> names{"outbound", "inbound", "tunnel", "dns"};  // before "sockets" existed
    if (auto s = j.find("sockets"); s != j.end()) {
      if (!s->is_array()) return Error::msg("handover: pod packet with malformed socket names", EPROTO);
      names.clear();
      for (const auto& n : *s) names.push_back(n.is_string() ? n.get<std::string>() : "");
    } else {
      names.resize(std::min(names.size(), p.fds.size() > 0 ? p.fds.size() - 1 : 0));
    }
    if (p.fds.size() != names.size() + 1 || names.size() < 3 || names[0] != "outbound" || names[1] != "inbound" ||
        names[2] != "tunnel")
      return Error::msg("handover: pod packet with " + std::to_string(p.fds.size()) + " fds for " +
                            std::to_string(names.size()) + " named sockets (want the netns, outbound, inbound, tunnel...)",
                        EPROTO);
    HandoverPod hp;
    NS_TRY(hp.record, record_from_json(j.value("record", json::object())));
    hp.family = j.value("family", "dual");
    hp.netns = std::move(p.fds[0]);
    for (size_t i = 0; i < names.size(); ++i) hp.sockets.emplace_back(names[i], std::move(p.fds[i + 1]));
    h.pods.push_back(std::move(hp));
  }
  NS_TRY(auto last, recv_packet(h.channel, timeout, "the control socket"));
  NS_TRY(json j, parse_object(last, "control packet"));
  if (!j.value("control", false) || last.fds.size() != 1)
    return Error::msg("handover: expected the control socket", EPROTO);
  h.control_listener = std::move(last.fds[0]);
  auto k = j.find("clients");  // absent from an agent that did not pass its connections on
  size_t want = k != j.end() && k->is_number_unsigned() ? k->get<size_t>() : 0;
  if (want > 4096) return Error::msg("handover: implausible control connection count", EPROTO);
  while (h.control_clients.size() < want) {
    NS_TRY(auto c, recv_packet(h.channel, timeout, "control connections"));
    NS_TRY(json cj, parse_object(c, "control connections packet"));
    if (c.fds.empty() || cj.value("clients", size_t{0}) != c.fds.size() ||
        h.control_clients.size() + c.fds.size() > want)
      return Error::msg("handover: malformed control connections packet", EPROTO);
    for (auto& fd : c.fds) h.control_clients.push_back(std::move(fd));
  }
  return h;
}

Status finish_handover(Handover& h) { return h.channel.send(json{{"type", "handover_done"}}.dump()); }

}  // namespace netsteer::agent
