// The UDP proxy: every captured UDP flow of every pod — DNS (15053), outbound UDP to listed ports
// (15001/udp) and inbound UDP to listed pod ports (15006/udp) — on one thread with one epoll
// (no thread per pod or per flow). sk_lookup assigns the first datagram of a flow to the pod's
// socket of its kind; the original destination comes with it (IP(V6)_ORIGDSTADDR).
//
// Outbound flow (DNS or UDP; one per client address+port and original destination):
//   upstream socket  SO_MARK 0x539, connected to the original destination (DNS: or the configured
//                    upstream), born in the pod netns;
//   reply socket     IP(V6)_TRANSPARENT + SO_REUSEADDR + mark, bound to the original destination
//                    and connected to the client: the answer comes from exactly the address and
//                    port the app asked (connected sockets drop anything else). While it exists it
//                    matches the client's 4-tuple, so the client's next datagrams arrive on it (not
//                    through sk_lookup): the flow reads it too.
// Inbound flow (one per remote client and pod address+port):
//   delivery socket  IP(V6)_TRANSPARENT + SO_REUSEADDR + mark + SO_BINDTODEVICE lo, bound to the
//                    client's address and port, connected to the pod's: the app sees the real
//                    client; sk_lookup lets it through because it arrives on lo. The app's replies
//                    come back to it (rule `ipproto udp sport P lookup 133`);
//   raw socket       (IPPROTO_RAW, one per pod and family) sends them to the client from the pod's
//                    address and port, which the app holds (a UDP socket there gets EADDRINUSE).
// ICMP errors: an upstream socket that gets ECONNREFUSED / EHOSTUNREACH / ENETUNREACH makes the
// proxy send the matching ICMP(v6) error to the app, quoting the app's datagram, from the original
// destination (the raw socket): a connected app socket fails at once, as without capture.
// Flows end after an idle time; a per-pod bound evicts the least recently used one (counted).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/dns/dns.h"
#include "netsteer/netns/netns.h"

namespace netsteer::udp {

// flows: opened (UDP, both directions); datagrams/bytes up: client → destination (outbound) or
// remote client → app (inbound); down: the way back; icmp_reflected: errors given to the app;
// errors: upstream ICMP errors and socket setup failures.
#define NS_UDP_COUNTER_FIELDS(X)                                                                         \
  X(outbound_flows) X(inbound_flows) X(flows_evicted) X(datagrams_up) X(datagrams_down) X(bytes_up) X(bytes_down) \
  X(send_failed) X(errors) X(icmp_reflected)

struct Totals {
#define NS_UDP_TOTAL(n) uint64_t n = 0;
  NS_UDP_COUNTER_FIELDS(NS_UDP_TOTAL)
#undef NS_UDP_TOTAL
  uint64_t active_flows = 0;
  Totals& operator+=(const Totals& o);
  nlohmann::json to_json() const;
};

// One pod as the UDP proxy sees it. Shared by the enrolment manager and the proxy thread.
struct PodUdp {
  std::string uid;
  netns::NetnsHandle netns;          // flow sockets are born here
  std::shared_ptr<dns::PodDns> dns;  // DNS counters and upstream; null when DNS is not captured
#define NS_UDP_ATOMIC(n) std::atomic<uint64_t> n{0};
  NS_UDP_COUNTER_FIELDS(NS_UDP_ATOMIC)
#undef NS_UDP_ATOMIC
  std::atomic<uint64_t> active_flows{0};
  Totals snapshot() const;
  nlohmann::json to_json() const;
};

// A pod's capture sockets (borrowed: open until remove_pod returns); -1 when not captured.
struct PodSockets {
  int dns = -1, outbound = -1, inbound = -1;
};

struct Options {
  uint32_t mark = 0x539;
  std::optional<SockAddr> dns_upstream;  // agent-wide --dns-upstream (a pod's own wins)
  int dns_query_timeout_ms = 5000;       // an unanswered query counts as an upstream timeout
  int dns_session_idle_ms = 30000;       // a DNS flow with nothing pending and no traffic this long ends
  size_t dns_max_sessions_per_pod = 1024;
  int udp_idle_ms = 60000;               // a UDP flow with no datagram either way this long ends
  size_t udp_max_flows_per_pod = 1024;
};

class Proxy {
 public:
  static Result<std::unique_ptr<Proxy>> start(const Options& opts);
  ~Proxy();  // stops the thread; every flow closes

  // Starts reading the pod's sockets; returns without waiting for the thread (it takes them up
  // before any later call).
  Status add_pod(const std::shared_ptr<PodUdp>& pod, PodSockets socks);
  // Stops reading the pod's sockets and closes its flows; returns when the thread is done with it.
  void remove_pod(const std::shared_ptr<PodUdp>& pod);
  // Hitless upgrade, old agent: stop reading the capture sockets; flows go on until idle.
  void stop_accepting();
  size_t pending_queries();  // DNS queries sent upstream and not answered yet, all pods
  nlohmann::json options() const;

  class Loop;

 private:
  Proxy() = default;
  std::unique_ptr<Loop> loop_;
  Options opts_;
};

}  // namespace netsteer::udp
