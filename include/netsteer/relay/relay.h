// The relay: carries captured connections to their original destination.
//
// A fixed number of worker threads (whatever the pod count), each with its own epoll. Every
// pod's listeners are registered in every worker's epoll with EPOLLEXCLUSIVE, so one worker wakes
// per new connection. A connection stays on the worker that accepted it: bytes move with splice()
// through a pipe taken from the worker's bounded pool while data is in flight and returned when
// drained. Upstream sockets are created in the pod netns (the worker enters it only for socket()),
// carry the agent's mark, and for inbound are bound transparently to the client's address after
// registering a bypass entry, so the app sees the real client.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/netns/netns.h"

namespace netsteer::relay {

enum class Direction : uint8_t { outbound = 0, inbound = 1, tunnel = 2 };
const char* to_string(Direction d);

// opened: accepted; failed: upstream connect failed / refused tunnel request; resets: ended by a
// reset on either side; timeouts: connect or idle timeout; half_close_timeouts: one side shut its
// half and nothing moved for the half-close timeout; dead_peers: a peer stopped acknowledging
// (TCP_USER_TIMEOUT) or answering keepalive probes; bypass_full: inbound connections reset because
// the pod's bypass map was full (--max-inbound-connections); proxied: sent to the pod's proxy with
// a PROXY v2 header; proxy_failed: of those, the proxy was down or refused (the client got a
// reset; no direct dial instead); bytes_up: client → upstream.
#define NS_RELAY_COUNTER_FIELDS(X)                                                                          \
  X(opened) X(failed) X(active) X(closed) X(resets) X(timeouts) X(half_close_timeouts) X(dead_peers) X(bypass_full) \
  X(proxied) X(proxy_failed) X(bytes_up) X(bytes_down)

// A plain copy of one direction's counters (summable; what metrics and inspect read).
struct DirectionTotals {
#define NS_RELAY_TOTAL_FIELD(n) uint64_t n = 0;
  NS_RELAY_COUNTER_FIELDS(NS_RELAY_TOTAL_FIELD)
#undef NS_RELAY_TOTAL_FIELD
  DirectionTotals& operator+=(const DirectionTotals& o);
  nlohmann::json to_json() const;
};

struct DirectionCounters {
#define NS_RELAY_ATOMIC_FIELD(n) std::atomic<uint64_t> n{0};
  NS_RELAY_COUNTER_FIELDS(NS_RELAY_ATOMIC_FIELD)
#undef NS_RELAY_ATOMIC_FIELD
  DirectionTotals snapshot() const;
  nlohmann::json to_json() const { return snapshot().to_json(); }
};

// One pod as the relay sees it. Shared by the enrolment manager and the relay workers.
struct PodContext {
  std::string uid;
  std::string namespace_, name;  // the pod's identity (access log)
  std::string log_identity;      // its JSON members in access-log records (made by Relay::add_pod)
  netns::NetnsHandle netns;      // upstream sockets are born here
  std::vector<IpAddr> pod_ips;   // tunnel targets must be one of these
  // TCP DNS (outbound to port 53) goes here instead of the original destination when set (the
  // pod's or the agent's DNS upstream, as for DNS over UDP).
  std::optional<SockAddr> dns_upstream;
  // Hand-off to a proxy: outbound (index 0) / inbound (1) connections go to this address, dialled
  // from the agent's own netns, and carry a PROXY v2 header first (client, original destination,
  // UNIQUE_ID = the connection id, CRC32C, and proxy_tlvs: the pod's identity when enabled).
  std::optional<SockAddr> proxy[2];
  std::vector<std::pair<uint8_t, std::string>> proxy_tlvs;
  // Registers (add=true) / removes the relay's inbound upstream local address in the pod's
  // sk_lookup bypass map, for the upstream connection's whole life (ENOSPC: the map is full).
  std::function<Status(const SockAddr&, bool add)> bypass;
  DirectionCounters counters[3];
  std::atomic<bool> removed{false};  // Relay::remove_pod has begun

  DirectionCounters& of(Direction d) { return counters[static_cast<int>(d)]; }
  nlohmann::json counters_json() const;
};

struct RelayOptions {
  size_t workers = 2;
  uint32_t mark = 0x539;
  int connect_timeout_ms = 10000;
  int idle_timeout_s = 3600;
  // Dead peers (both sides of every connection; HAProxy's clitcpka/srvtcpka and client-fin):
  // unacknowledged data older than this ends the connection (TCP_USER_TIMEOUT; 0: kernel default,
  // ~15 min of retransmissions); keepalive probes after this much silence, this often, this many
  // (with a user timeout set, the kernel gives up once it has passed since the last answer);
  // a connection with one side shut and nothing moving for half_close_timeout_s is closed.
  int tcp_user_timeout_ms = 60000;
  int keepalive_idle_s = 60;     // 0: no keepalive
  int keepalive_interval_s = 10;
  int keepalive_count = 6;
  int half_close_timeout_s = 60;  // 0: the idle timeout applies
  int pipe_size = 256 * 1024;
  size_t max_idle_pipes = 64;  // per worker; pipes beyond that are closed when drained
  // Per worker: upstream sockets kept after a clean close for the pod's next connection from the
  // same source (0: every upstream socket is closed). Not for hand-off to a proxy.
  size_t upstream_spares = 128;
  // Inbound upstreams keep the client's address as source (needs the capture's reply routing,
  // table 133). Off when something else captures (netsteerd --capture none: iptables REDIRECT or
  // TPROXY), where the app's replies to a foreign source would leave the pod.
  bool preserve_client_source = true;
  // New connections are spread over the workers by their connection counts (a worker that
  // accepted one while holding clearly more than another hands it over; see Worker::hand_over).
  bool balance_accepts = true;
  class AccessLog* access_log = nullptr;  // one JSON record per finished connection (not owned)
};

class Worker;

class Relay {
 public:
  static Result<std::unique_ptr<Relay>> start(const RelayOptions& opts);
  ~Relay();  // stops the workers and closes every connection

  // Starts accepting on a pod's listeners (borrowed: keep them open until remove_pod returns).
  // Returns without waiting for the workers; they take the listeners up before any later call.
  // dns_tcp_fd >= 0: the pod's TCP DNS listener (15053), relayed like outbound (to its DNS upstream).
  Status add_pod(const std::shared_ptr<PodContext>& pod, int outbound_fd, int inbound_fd, int tunnel_fd,
                 int dns_tcp_fd = -1);
  // Stops accepting for the pod and closes its connections; returns when every worker is done.
  void remove_pod(const std::shared_ptr<PodContext>& pod);
  // Hitless upgrade, old agent: stop accepting on every listener; relayed connections go on.
  void stop_accepting();
  // Connections being relayed (and connecting) across workers.
  size_t connections();

  nlohmann::json stats() const;  // per worker: connections, pipes in use/idle
  nlohmann::json timeouts() const;  // the bounds in force (status)
  // The connections being relayed now (all pods, or one): id, pod, direction, client, original
  // destination, where it was sent, state, age and bytes each way (netsteerctl conns).
  nlohmann::json connections_json(const std::string& uid);
  // A lease (netsteerctl exec): stop accepting on these listeners of the pod (they stay open and in
  // the socket map: another process accepts on them now) / accept on them again.
  void pause(const std::shared_ptr<PodContext>& pod, const std::vector<std::pair<Direction, int>>& listeners);
  void resume(const std::shared_ptr<PodContext>& pod, const std::vector<std::pair<Direction, int>>& listeners);
  size_t workers() const { return workers_.size(); }

 private:
  Relay() = default;
  RelayOptions opts_;
  void broadcast(const std::function<void(Worker&)>& fn);
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace netsteer::relay
