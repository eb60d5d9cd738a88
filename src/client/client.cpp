#include "netsteer/client/client.h"

#include "netsteer/netns/netns.h"

namespace netsteer::client {

Result<Client> Client::connect(const std::string& socket_path, std::chrono::milliseconds timeout) {
  NS_TRY(auto ch, protocol::SeqpacketChannel::connect(socket_path, timeout));
  return Client(std::move(ch), timeout);
}

Result<protocol::Reply> Client::call(const protocol::Request& req, int fd) {
  std::vector<int> fds;
  if (fd >= 0) fds.push_back(fd);
  NS_TRY_STATUS(ch_.send(protocol::encode_request(req), fds));
  NS_TRY_STATUS(ch_.wait_readable(timeout_));
  NS_TRY(protocol::Packet p, ch_.recv(protocol::kMaxReplySize));
  if (p.data.empty() && p.fds.empty()) return Error::msg("agent closed the connection", ECONNRESET);
  NS_TRY(protocol::Reply r, protocol::decode_reply(p.data));
  if (!r.ok) return Error::msg(r.error.empty() ? "agent refused the request" : r.error, r.err_no ? r.err_no : EREMOTEIO);
  return r;
}

Result<Client::Granted> Client::lease(const protocol::Request& req) && {
  NS_TRY_STATUS(ch_.send(protocol::encode_request(req)));
  NS_TRY_STATUS(ch_.wait_readable(timeout_));
  NS_TRY(protocol::Packet p, ch_.recv(protocol::kMaxReplySize));
  if (p.data.empty() && p.fds.empty()) return Error::msg("agent closed the connection", ECONNRESET);
  if (p.truncated || p.ctrl_truncated) return Error::msg("lease reply truncated", EPROTO);
  NS_TRY(protocol::Reply r, protocol::decode_reply(p.data));
  if (!r.ok) return Error::msg(r.error.empty() ? "agent refused the lease" : r.error, r.err_no ? r.err_no : EREMOTEIO);
  Granted g{std::move(r), std::move(p.fds), ch_.release()};
  return g;
}

Result<protocol::Reply> Client::add(const protocol::PodSpec& pod) {
  NS_TRY(auto ns, netns::NetnsHandle::open(pod.netns_path));
  // The agent gets its own copy over SCM_RIGHTS; ours closes with `ns`.
  return add(pod, ns.fd());
}

Result<protocol::Reply> Client::add(const protocol::PodSpec& pod, int netns_fd) {
  protocol::Request req;
  req.type = protocol::MsgType::kAdd;
  req.pod = pod;
  return call(req, netns_fd);
}

}  // namespace netsteer::client
