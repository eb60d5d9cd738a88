// DNS as the UDP proxy (udp/udp.h) sees it: the header fields it reads, and per-pod counters.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/metrics/metrics.h"

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

// One pod's DNS counters and upstream. Shared by the enrolment manager and the proxy thread.
struct PodDns {
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

}  // namespace netsteer::dns
