// Control protocol v1 between senders (netsteer-cni, netsteerctl) and netsteerd.
// Transport: AF_UNIX SOCK_SEQPACKET; one JSON document per packet; `add` carries exactly one netns
// fd in SCM_RIGHTS. Every request is answered by one reply {"ok":bool,"error":string,...}.
// See docs/protocol.md.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"

namespace netsteer::protocol {

inline constexpr int kVersion = 1;
inline constexpr size_t kMaxMessageSize = 64 * 1024;  // larger packets are refused
inline constexpr uint32_t kAgentMark = 0x539;
inline constexpr uint32_t kAgentMarkMask = 0xfff;
inline constexpr uint16_t kPortOutbound = 15001;
inline constexpr uint16_t kPortInbound = 15006;
inline constexpr uint16_t kPortTunnel = 15008;
inline constexpr uint16_t kPortDns = 15053;
inline constexpr uint16_t kPortUdpOutbound = 15001;  // UDP sockets, beside the TCP listeners
inline constexpr uint16_t kPortUdpInbound = 15006;

// kHandover: a new agent asks the running one for its pods and sockets (agent/handover.h).
// kConns: the connections being relayed now (optional uid).
// kLease: hand a pod's listeners (and its netns) to the sender, whose connection is the lease.
enum class MsgType { kHello, kAdd, kDel, kList, kStatus, kSnapshot, kCheck, kInspect, kHandover, kConns, kLease };
std::string_view to_string(MsgType t);

// Per-pod capture exclusions (set at enrol time).
struct Exclusions {
  std::vector<uint16_t> inbound_ports;   // pod ports never captured inbound
  std::vector<uint16_t> outbound_ports;  // remote ports never captured outbound
  std::vector<Prefix> outbound_cidrs;    // remote prefixes never captured outbound
  std::vector<Prefix> inbound_sources;   // client prefixes never captured inbound (kubelet probes)
  bool operator==(const Exclusions&) const = default;
};

// General UDP capture, opt-in per pod ("udp" on the wire).
struct UdpPorts {
  std::vector<uint16_t> outbound_ports;  // remote ports whose UDP goes through the agent (15001/udp)
  std::vector<uint16_t> inbound_ports;   // pod ports whose inbound UDP goes through it (15006/udp)
  bool empty() const { return outbound_ports.empty() && inbound_ports.empty(); }
  bool operator==(const UdpPorts&) const = default;
};
nlohmann::json udp_ports_to_json(const UdpPorts& u);

// Hand-off to a proxy with PROXY protocol v2 ("proxy" on the wire): outbound and/or inbound
// connections go to this address (in the agent's netns) instead of their destination.
struct ProxyHandoff {
  std::optional<SockAddr> outbound, inbound;
  bool pod_tlvs = false;  // the pod's identity in TLVs 0xE0 (namespace/name) and 0xE1 (uid)
  bool empty() const { return !outbound && !inbound; }
  bool operator==(const ProxyHandoff&) const = default;
};
nlohmann::json proxy_to_json(const ProxyHandoff& p);
Result<ProxyHandoff> proxy_from_json(const nlohmann::json& j);
Result<UdpPorts> udp_ports_from_json(const nlohmann::json& j);

struct PodSpec {
  std::string uid;        // required; the enrolment key
  std::string name;       // optional
  std::string namespace_; // optional ("namespace" on the wire)
  std::vector<IpAddr> ips;
  std::string netns_path; // optional: where the netns can be reopened after an agent restart
  Exclusions exclusions;
  bool strict = false;    // drop app TCP leaving the pod without the agent's mark
  // Label requirements ("key" or "key=value"): the agent looks the pod's labels up in the
  // Kubernetes API and does not capture a pod that matches any of them (see labels.h).
  std::vector<std::string> skip_labels;
  // DNS capture (UDP to port 53 onto the agent's 15053 socket) is on unless no_dns; answers are
  // fetched from dns_upstream when set (else the agent-wide --dns-upstream, else the server asked).
  bool no_dns = false;
  std::optional<SockAddr> dns_upstream;
  UdpPorts udp;
  ProxyHandoff proxy;  // empty: the agent-wide --proxy-outbound/--proxy-inbound, if any
};

struct Request {
  MsgType type = MsgType::kHello;
  int version = kVersion;
  PodSpec pod;                    // add; check: optional, for skip_labels
  std::string uid;                // del / check / inspect
  std::optional<uint64_t> netns_ino;  // del by netns identity (with netns_dev)
  std::optional<uint64_t> netns_dev;
  std::vector<std::string> uids;  // snapshot: the pods that exist
  // lease: the pod by uid or by "namespace/name"; which listeners ("outbound", "inbound",
  // "tunnel"; default outbound+inbound); a uid whose connections from inside the pod skip capture.
  std::string pod_name;
  std::vector<std::string> listeners;
  std::optional<uint32_t> exempt_uid;
};

struct Reply {
  bool ok = true;
  std::string error;
  int err_no = 0;  // "errno" on the wire: the errno of a failure when it has one (ENOENT: unknown pod)
  nlohmann::json data = nlohmann::json::object();  // extra fields merged into the reply object
};

// Strict decoding: malformed JSON, a missing/unknown type, a wrong version, known fields of the
// wrong type, bad IPs/prefixes/ports are errors with a message naming the field.
Result<Request> decode_request(std::string_view bytes);
std::string encode_request(const Request& req);

Result<Reply> decode_reply(std::string_view bytes);
std::string encode_reply(const Reply& reply);

nlohmann::json exclusions_to_json(const Exclusions& e);
Result<Exclusions> exclusions_from_json(const nlohmann::json& j);
nlohmann::json pod_to_json(const PodSpec& p);

// Validate a pod uid: 1..128 chars of [A-Za-z0-9._-] (it names a bpffs directory).
Status validate_uid(std::string_view uid);

}  // namespace netsteer::protocol
