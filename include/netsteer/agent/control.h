// Control server: the agent side of protocol v1 on a SOCK_SEQPACKET unix socket.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "netsteer/agent/enrolment.h"
#include "netsteer/agent/kube_api.h"
#include "netsteer/protocol/channel.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::agent {

// Turns one received packet into one reply. Pure of IO, so tests can drive it with any packet.
class RequestHandler {
 public:
  using StatusFn = std::function<nlohmann::json()>;
  // `labels` (may be null) answers pods' skip_labels; without it such pods are refused.
  RequestHandler(EnrolmentManager& mgr, StatusFn status, PodLabelSource* labels = nullptr)
      : mgr_(mgr), status_(std::move(status)), labels_(labels) {}
  protocol::Reply handle(protocol::Packet& packet);
  // "conns": the connections being relayed (all pods, or the request's uid).
  using ConnsFn = std::function<nlohmann::json(const std::string& uid)>;
  void set_conns(ConnsFn fn) { conns_ = std::move(fn); }

 private:
  protocol::Reply handle_add(const protocol::Request& req, protocol::Packet& packet);
  // The reason to leave the pod uncaptured ("" to capture it), from its labels.
  Result<std::string> skip_reason(const protocol::PodSpec& pod);
  EnrolmentManager& mgr_;
  StatusFn status_;
  ConnsFn conns_;
  PodLabelSource* labels_;
};

struct ControlOptions {
  std::string socket_path;
  std::set<uid_t> allowed_uids{0};
  size_t max_clients = 128;
  std::chrono::milliseconds client_idle_timeout{std::chrono::seconds(60)};
};

class ControlServer {
 public:
  ControlServer(ControlOptions opts, RequestHandler& handler) : opts_(std::move(opts)), handler_(handler) {}
  ~ControlServer();

  // Binds the socket (0600, stale one replaced). Separate from run() so callers know it listens.
  Status listen();
  // Serves on a listening socket received from the previous agent (hitless upgrade), and the
  // connections it had accepted but not answered yet.
  Status serve_on(UniqueFd listen_fd, std::vector<UniqueFd> clients = {});
  // Called for a "handover" request with the peer's channel, the listening fd and the other open
  // connections (none holds a lease: the handover is refused then); returns true when the new
  // agent took over, and run() then returns (the socket path and those connections are left to it).
  using HandoverFn = std::function<bool(protocol::SeqpacketChannel&, int listen_fd, const std::vector<int>& clients)>;
  void set_handover(HandoverFn fn) { handover_ = std::move(fn); }
  // A "lease" request: the reply goes out with the granted fds and the connection stays open
  // (no idle timeout) until the holder closes it; then `release` runs.
  struct LeaseGrant {
    nlohmann::json data;
    std::vector<UniqueFd> fds;
    std::function<void(const std::string& why)> release;
  };
  using LeaseFn = std::function<Result<LeaseGrant>(const protocol::Request&, const std::string& holder)>;
  void set_lease(LeaseFn fn) { lease_ = std::move(fn); }
  bool handed_over() const { return handed_over_; }
  // Serves until SIGTERM/SIGINT (blocked and read through a signalfd) or stop().
  Status run();
  void stop();
  // Read by the metrics thread.
  size_t clients() const { return nclients_.load(std::memory_order_relaxed); }
  uint64_t rejected_peers() const { return rejected_peers_.load(std::memory_order_relaxed); }

 private:
  void accept_clients();
  void add_client(protocol::SeqpacketChannel ch);
  void serve_client(int fd);
  void drop_client(int fd);
  void expire_idle();

  ControlOptions opts_;
  RequestHandler& handler_;
  UniqueFd listen_fd_, epoll_fd_, signal_fd_, stop_fd_;
  struct Client {
    protocol::SeqpacketChannel ch;
    std::chrono::steady_clock::time_point last;
    std::function<void(const std::string&)> release;  // set while the connection holds a lease
  };
  void serve_lease(Client& client, const protocol::Request& req);
  LeaseFn lease_;
  std::map<int, Client> clients_;
  std::atomic<size_t> nclients_{0};
  std::atomic<uint64_t> rejected_peers_{0};
  HandoverFn handover_;
  bool handed_over_ = false;
};

}  // namespace netsteer::agent
