// The DNS proxy: answers the pod's captured DNS over UDP (sk_lookup assigns every datagram to
// port 53 that the capture route delivers locally to the pod's 15053 socket).
//
// One thread with one epoll for every pod (DNS is light; no thread per pod or per query). Each
// flow (client address and port, original destination) is a session with two sockets born in the
// pod netns: an upstream socket (SO_MARK 0x539, connected to the original destination or the
// configured upstream) and a reply socket (IP(V6)_TRANSPARENT + SO_REUSEADDR + mark, bound to the
// original destination and connected to the client), so the answer comes from exactly the address
// and port the app asked. While the reply socket exists it matches the client's 4-tuple, so the
// client's next queries arrive on it (not on 15053): the session reads it too. Sessions end after
// an idle time; a per-pod bound evicts the least recently used one (counted). No NAT, no conntrack.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/metrics/metrics.h"
#include "netsteer/netns/netns.h"

namespace netsteer::dns {

// The fixed 12-byte DNS header fields the proxy reads (RFC 1035 4.1.1).
struct Header {
  uint16_t id = 0;
  bool response = false;   // QR
  bool truncated = false;  // TC
  uint8_t rcode = 0;
};
// nullopt: shorter than a header.
std::optional<Header> parse_header(std::span<const uint8_t> msg);
// "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED" or "OTHER".
const char* rcode_name(uint8_t rcode);

#define NS_DNS_COUNTER_FIELDS(X) \
  X(queries) X(answers) X(upstream_timeouts) X(upstream_errors) X(malformed) X(sessions) X(sessions_evicted) X(send_failed)
#define NS_DNS_RCODES(X) X(NOERROR) X(FORMERR) X(SERVFAIL) X(NXDOMAIN) X(NOTIMP) X(REFUSED) X(OTHER)

struct Totals {
#define NS_DNS_TOTAL(n) uint64_t n = 0;
  NS_DNS_COUNTER_FIELDS(NS_DNS_TOTAL)
  NS_DNS_RCODES(NS_DNS_TOTAL)
#undef NS_DNS_TOTAL
  uint64_t active_sessions = 0;
  metrics::Histogram::Snapshot latency;  // upstream latency (seconds)
  Totals& operator+=(const Totals& o);
  nlohmann::json to_json() const;
};

// Upstream latency buckets (seconds), shared by the per-pod and node histograms.
const std::vector<double>& latency_buckets();

// One pod as the DNS proxy sees it. Shared by the enrolment manager and the proxy thread.
struct PodDns {
  std::string uid;
  netns::NetnsHandle netns;               // session sockets are born here
  std::optional<SockAddr> upstream;       // forward here instead of the original destination
#define NS_DNS_ATOMIC(n) std::atomic<uint64_t> n{0};
  NS_DNS_COUNTER_FIELDS(NS_DNS_ATOMIC)
  NS_DNS_RCODES(NS_DNS_ATOMIC)
#undef NS_DNS_ATOMIC
  std::atomic<uint64_t> active_sessions{0};
  metrics::Histogram latency{latency_buckets()};
  Totals snapshot() const;
  nlohmann::json to_json() const;  // counters, rcodes and the latency histogram (inspect)
};

struct Options {
  uint32_t mark = 0x539;
  std::optional<SockAddr> upstream;  // agent-wide --dns-upstream (a pod's own wins)
  int query_timeout_ms = 5000;       // an unanswered query counts as an upstream timeout
  int session_idle_ms = 30000;       // a flow with nothing pending and no traffic this long ends
  size_t max_sessions_per_pod = 1024;
};

class Proxy {
 public:
  static Result<std::unique_ptr<Proxy>> start(const Options& opts);
  ~Proxy();  // stops the thread; every session closes

  // Starts reading the pod's 15053 socket (borrowed: keep it open until remove_pod returns).
  Status add_pod(const std::shared_ptr<PodDns>& pod, int udp_fd);
  // Stops reading it and closes the pod's sessions; returns when the thread is done with it.
  void remove_pod(const std::shared_ptr<PodDns>& pod);
  // Hitless upgrade, old agent: stop reading the 15053 sockets; sessions go on until idle.
  void stop_accepting();
  size_t pending_queries();  // queries sent upstream and not answered yet, all pods
  nlohmann::json options() const;

  class Loop;

 private:
  Proxy() = default;
  std::unique_ptr<Loop> loop_;
  Options opts_;
};

}  // namespace netsteer::dns
