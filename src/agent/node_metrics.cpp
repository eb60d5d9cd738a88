#include "netsteer/agent/node_metrics.h"

namespace netsteer::agent {

std::string render_node_metrics(const NodeMetricsInput& in) {
  metrics::TextWriter w;
  w.family("netsteer_build_info", "gauge", "Build and kernel facts (value 1).");
  w.sample("netsteer_build_info", 1, {{"version", in.version}, {"kernel", in.kernel}, {"tc_mode", in.tc_mode}});

  const EnrolmentManager& m = *in.manager;
  EnrolStats s = m.stats();
  w.family("netsteer_pods_enrolled", "gauge", "Pods currently enrolled.");
  w.sample("netsteer_pods_enrolled", static_cast<double>(m.size()));
  w.family("netsteer_enrolments_total", "counter", "Enrol requests by result.");
  for (auto [result, v] : {std::pair{"enrolled", s.enrol_ok}, {"unchanged", s.enrol_noop}, {"replaced", s.replaced},
                           {"failed", s.enrol_failed}, {"adopted", s.adopted}})
    w.sample("netsteer_enrolments_total", static_cast<double>(v), {{"result", result}});
  w.family("netsteer_enrol_failures_total", "counter", "Failed enrolments by reason (errno name).");
  for (const auto& [reason, v] : s.failed_by_reason)
    w.sample("netsteer_enrol_failures_total", static_cast<double>(v), {{"reason", reason}});
  w.family("netsteer_unenrolments_total", "counter", "Pods unenrolled (del, snapshot) or cleaned at start.");
  w.sample("netsteer_unenrolments_total", static_cast<double>(s.unenrolled), {{"cause", "request"}});
  w.sample("netsteer_unenrolments_total", static_cast<double>(s.stale_cleaned), {{"cause", "stale_at_start"}});
  w.histogram("netsteer_enrol_duration_seconds", "Enrolment latency: netns fd received to capture ready.",
              m.enrol_latency());

  w.family("netsteer_control_connections", "gauge", "Open control-socket connections.");
  w.sample("netsteer_control_connections", static_cast<double>(in.control_connections));
  w.family("netsteer_control_rejected_total", "counter", "Control connections refused (peer not allowed, limits).");
  w.sample("netsteer_control_rejected_total", static_cast<double>(in.control_rejected));

  NodeTotals t = m.totals();
  const char* dirs[3] = {relay::to_string(relay::Direction::outbound), relay::to_string(relay::Direction::inbound),
                         relay::to_string(relay::Direction::tunnel)};
  auto per_dir = [&](const char* name, const char* type, const char* help, auto field) {
    w.family(name, type, help);
    for (int d = 0; d < 3; ++d) w.sample(name, static_cast<double>(field(t.relay[d])), {{"direction", dirs[d]}});
  };
  per_dir("netsteer_relay_connections_open", "gauge", "Relayed connections open now.",
          [](const relay::DirectionTotals& x) { return x.active; });
  per_dir("netsteer_relay_connections_total", "counter", "Connections accepted by the relay.",
          [](const relay::DirectionTotals& x) { return x.opened; });
  per_dir("netsteer_relay_connections_failed_total", "counter", "Connections whose upstream could not be reached.",
          [](const relay::DirectionTotals& x) { return x.failed; });
  per_dir("netsteer_relay_resets_total", "counter", "Relayed connections ended by a reset.",
          [](const relay::DirectionTotals& x) { return x.resets; });
  per_dir("netsteer_relay_timeouts_total", "counter", "Relayed connections ended by a connect or idle timeout.",
          [](const relay::DirectionTotals& x) { return x.timeouts; });
  per_dir("netsteer_relay_half_close_timeouts_total", "counter",
          "Relayed connections closed because one side was shut and nothing moved for the half-close timeout.",
          [](const relay::DirectionTotals& x) { return x.half_close_timeouts; });
  per_dir("netsteer_relay_dead_peers_total", "counter",
          "Relayed connections ended because a peer stopped acknowledging or answering keepalives.",
          [](const relay::DirectionTotals& x) { return x.dead_peers; });
  per_dir("netsteer_relay_bypass_full_total", "counter",
          "Inbound connections reset because the pod's bypass map was full (--max-inbound-connections).",
          [](const relay::DirectionTotals& x) { return x.bypass_full; });
  w.family("netsteer_relay_bytes_total", "counter", "Bytes relayed, by direction and way (up: client to upstream).");
  for (int d = 0; d < 3; ++d) {
    w.sample("netsteer_relay_bytes_total", static_cast<double>(t.relay[d].bytes_up), {{"direction", dirs[d]}, {"way", "up"}});
    w.sample("netsteer_relay_bytes_total", static_cast<double>(t.relay[d].bytes_down), {{"direction", dirs[d]}, {"way", "down"}});
  }

  const dns::Totals& dn = t.dns;
  w.family("netsteer_dns_queries_total", "counter", "Captured DNS queries forwarded upstream.");
  w.sample("netsteer_dns_queries_total", static_cast<double>(dn.queries));
  w.family("netsteer_dns_answers_total", "counter", "DNS answers relayed to pods, by rcode.");
#define NS_DNS_RCODE_SAMPLE(n) w.sample("netsteer_dns_answers_total", static_cast<double>(dn.n), {{"rcode", #n}});
  NS_DNS_RCODES(NS_DNS_RCODE_SAMPLE)
#undef NS_DNS_RCODE_SAMPLE
  w.family("netsteer_dns_upstream_timeouts_total", "counter", "DNS queries the upstream did not answer in time.");
  w.sample("netsteer_dns_upstream_timeouts_total", static_cast<double>(dn.upstream_timeouts));
  w.family("netsteer_dns_upstream_errors_total", "counter", "DNS upstream errors (ICMP unreachable, socket setup).");
  w.sample("netsteer_dns_upstream_errors_total", static_cast<double>(dn.upstream_errors));
  w.family("netsteer_dns_sessions_evicted_total", "counter", "DNS flows closed because the per-pod bound was reached.");
  w.sample("netsteer_dns_sessions_evicted_total", static_cast<double>(dn.sessions_evicted));
  w.family("netsteer_dns_sessions", "gauge", "DNS flows open now.");
  w.sample("netsteer_dns_sessions", static_cast<double>(dn.active_sessions));
  metrics::Histogram::Snapshot lat = dn.latency;
  if (lat.bounds.empty()) {  // no pod with DNS yet: the family is there, empty
    lat.bounds = dns::latency_buckets();
    lat.cumulative.assign(lat.bounds.size() + 1, 0);
  }
  w.histogram("netsteer_dns_upstream_latency_seconds", "Upstream DNS answer latency.", lat);

  const udp::Totals& u = t.udp;
  w.family("netsteer_udp_flows_total", "counter", "Captured UDP flows opened (DNS not included), by direction.");
  w.sample("netsteer_udp_flows_total", static_cast<double>(u.outbound_flows), {{"direction", "outbound"}});
  w.sample("netsteer_udp_flows_total", static_cast<double>(u.inbound_flows), {{"direction", "inbound"}});
  w.family("netsteer_udp_datagrams_total", "counter", "Datagrams carried for captured UDP flows (up: from the flow's client).");
  w.sample("netsteer_udp_datagrams_total", static_cast<double>(u.datagrams_up), {{"way", "up"}});
  w.sample("netsteer_udp_datagrams_total", static_cast<double>(u.datagrams_down), {{"way", "down"}});
  w.family("netsteer_udp_bytes_total", "counter", "Payload bytes carried for captured UDP flows.");
  w.sample("netsteer_udp_bytes_total", static_cast<double>(u.bytes_up), {{"way", "up"}});
  w.sample("netsteer_udp_bytes_total", static_cast<double>(u.bytes_down), {{"way", "down"}});
  w.family("netsteer_udp_flows_evicted_total", "counter", "UDP flows closed because the per-pod bound was reached.");
  w.sample("netsteer_udp_flows_evicted_total", static_cast<double>(u.flows_evicted));
  w.family("netsteer_udp_icmp_reflected_total", "counter", "ICMP errors from upstream given to the pod's app.");
  w.sample("netsteer_udp_icmp_reflected_total", static_cast<double>(u.icmp_reflected));
  w.family("netsteer_udp_flows", "gauge", "Captured UDP flows open now.");
  w.sample("netsteer_udp_flows", static_cast<double>(u.active_flows));

  const bpf::PodBpfStats& b = t.bpf;
  w.family("netsteer_bpf_sk_lookup_total", "counter", "sk_lookup program runs for TCP, by outcome.");
  w.sample("netsteer_bpf_sk_lookup_total", static_cast<double>(b.lookups), {{"outcome", "all"}});
  for (auto [o, v] : {std::pair{"inbound_assigned", b.inbound_assigned}, {"outbound_assigned", b.outbound_assigned},
                      {"passed_local", b.passed_local}, {"passed_excluded", b.passed_excluded},
                      {"passed_bypass", b.passed_bypass}, {"dns_assigned", b.dns_assigned},
                      {"udp_outbound_assigned", b.udp_outbound_assigned}, {"udp_inbound_assigned", b.udp_inbound_assigned},
                      {"passed_udp_delivery", b.passed_udp_delivery}})
    w.sample("netsteer_bpf_sk_lookup_total", static_cast<double>(v), {{"outcome", o}});
  w.family("netsteer_bpf_drops_total", "counter", "Connections or packets dropped in BPF, by reason (ns_drop_reason).");
  for (auto [r, v] : {std::pair{"no_listener", b.drop_no_listener}, {"no_dns_socket", b.drop_no_dns_socket},
                      {"no_udp_socket", b.drop_no_udp_socket},
                      {"assign_failed", b.drop_assign_failed},
                      {"strict", b.drop_strict}, {"spoofed", b.drop_spoofed}})
    w.sample("netsteer_bpf_drops_total", static_cast<double>(v), {{"reason", r}});
  struct GuardRow {
    const char* hook;
    const char* marked;
    uint64_t pkts, bytes;
  };
  const GuardRow rows[] = {{"egress", "true", b.egress_marked_pkts, b.egress_marked_bytes},
                           {"egress", "false", b.egress_unmarked_pkts, b.egress_unmarked_bytes},
                           {"ingress", "true", b.ingress_marked_pkts, b.ingress_marked_bytes},
                           {"ingress", "false", b.ingress_unmarked_pkts, b.ingress_unmarked_bytes}};
  w.family("netsteer_bpf_guard_packets_total", "counter", "TCP packets seen by the tc guard.");
  for (const auto& r : rows)
    w.sample("netsteer_bpf_guard_packets_total", static_cast<double>(r.pkts), {{"hook", r.hook}, {"marked", r.marked}});
  w.family("netsteer_bpf_guard_bytes_total", "counter", "TCP bytes seen by the tc guard.");
  for (const auto& r : rows)
    w.sample("netsteer_bpf_guard_bytes_total", static_cast<double>(r.bytes), {{"hook", r.hook}, {"marked", r.marked}});
  return w.str();
}

}  // namespace netsteer::agent
