#include "netsteer/dns/dns.h"

namespace netsteer::dns {

using nlohmann::json;

std::optional<Header> parse_header(std::span<const uint8_t> msg) {
  if (msg.size() < 12) return std::nullopt;
  Header h;
  h.id = static_cast<uint16_t>(msg[0] << 8 | msg[1]);
  h.response = msg[2] & 0x80;
  h.truncated = msg[2] & 0x02;
  h.rcode = msg[3] & 0x0f;
  return h;
}

const char* rcode_name(uint8_t rcode) {
  switch (rcode) {
    case 0: return "NOERROR";
    case 1: return "FORMERR";
    case 2: return "SERVFAIL";
    case 3: return "NXDOMAIN";
    case 4: return "NOTIMP";
    case 5: return "REFUSED";
    default: return "OTHER";
  }
}

const std::vector<double>& latency_buckets() {
  static const std::vector<double> b{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
  return b;
}

Totals& Totals::operator+=(const Totals& o) {
#define NS_DNS_ADD(n) n += o.n;
  NS_DNS_COUNTER_FIELDS(NS_DNS_ADD)
  NS_DNS_RCODES(NS_DNS_ADD)
#undef NS_DNS_ADD
  active_sessions += o.active_sessions;
  if (latency.bounds.empty()) {
    latency = o.latency;
  } else if (o.latency.bounds == latency.bounds) {
    for (size_t i = 0; i < latency.cumulative.size(); ++i) latency.cumulative[i] += o.latency.cumulative[i];
    latency.sum += o.latency.sum;
    latency.count += o.latency.count;
  }
  return *this;
}

json Totals::to_json() const {
  json j, rc;
#define NS_DNS_JSON(n) j[#n] = n;
  NS_DNS_COUNTER_FIELDS(NS_DNS_JSON)
#undef NS_DNS_JSON
#define NS_DNS_RC_JSON(n) rc[#n] = n;
  NS_DNS_RCODES(NS_DNS_RC_JSON)
#undef NS_DNS_RC_JSON
  j["rcodes"] = rc;
  j["active_sessions"] = active_sessions;
  return j;
}

Totals PodDns::snapshot() const {
  Totals t;
#define NS_DNS_LOAD(n) t.n = n.load(std::memory_order_relaxed);
  NS_DNS_COUNTER_FIELDS(NS_DNS_LOAD)
  NS_DNS_RCODES(NS_DNS_LOAD)
#undef NS_DNS_LOAD
  t.active_sessions = active_sessions.load(std::memory_order_relaxed);
  t.latency = latency.snapshot();
  return t;
}

json PodDns::to_json() const {
  json j = snapshot().to_json();
  j["upstream"] = upstream ? upstream->str() : "";
  auto h = latency.snapshot();
  json buckets = json::array();
  for (size_t i = 0; i < h.bounds.size(); ++i) buckets.push_back({{"le", h.bounds[i]}, {"count", h.cumulative[i]}});
  j["upstream_latency"] = {{"count", h.count}, {"sum_s", h.sum}, {"buckets", buckets}};
  return j;
}

}  // namespace netsteer::dns
