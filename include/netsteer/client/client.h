// The sender side of the control protocol, shared by netsteerctl and netsteer-cni.
#pragma once

#include <chrono>
#include <string>

#include "netsteer/common/result.h"
#include "netsteer/protocol/channel.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::client {

inline constexpr const char* kDefaultSocket = "/var/run/netsteer/cni.sock";

class Client {
 public:
  static Result<Client> connect(const std::string& socket_path,
                                std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Sends one request (with the fd for `add`, -1 otherwise) and waits for its reply.
  // A reply with ok=false is returned as an Error carrying the agent's text.
  Result<protocol::Reply> call(const protocol::Request& req, int fd = -1);

  // `add`: opens pod.netns_path (it must be a network namespace) and sends it with the pod; or
  // sends netns_fd, the caller's open handle of it.
  Result<protocol::Reply> add(const protocol::PodSpec& pod);
  Result<protocol::Reply> add(const protocol::PodSpec& pod, int netns_fd);

  // `lease`: the reply carries fds (the netns, then the listeners); the connection itself is the
  // lease — the agent takes the listeners back when it closes.
  struct Granted {
    protocol::Reply reply;
    std::vector<UniqueFd> fds;
    UniqueFd connection;
  };
  Result<Granted> lease(const protocol::Request& req) &&;

 private:
  Client(protocol::SeqpacketChannel ch, std::chrono::milliseconds t) : ch_(std::move(ch)), timeout_(t) {}
  protocol::SeqpacketChannel ch_;
  std::chrono::milliseconds timeout_;
};

}  // namespace netsteer::client
