// netsteer-cni: a chained CNI plugin (spec 1.0.0 / 1.1.0) that hands each pod's netns to netsteerd.
//
// Pure parts (netconf, CNI_ARGS, prevResult, error objects) are separate from the part that talks
// to the agent so they can be tested without privileges and fuzzed.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::cni {

// Spec error codes (CNI SPEC "Error" section); 100+ are ours.
enum Code : int {
  kIncompatibleVersion = 1,
  kUnsupportedField = 2,
  kUnknownContainer = 3,
  kInvalidEnv = 4,
  kIoFailure = 5,
  kDecodeFailure = 6,
  kInvalidConfig = 7,
  kTryAgainLater = 11,
  kPluginNotAvailable = 50,  // STATUS
  kAgentRefused = 100,       // the agent answered with an error (enrolment failed)
  kNotEnrolled = 101,        // CHECK: the pod is not enrolled / its capture is not installed
};

inline const std::vector<std::string>& supported_versions() {
  static const std::vector<std::string> v{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
  return v;
}

enum class FailurePolicy { kFail, kIgnore };

struct NetConf {
  std::string cni_version;
  std::string name;
  std::string type;
  std::string socket_path = "/var/run/netsteer/cni.sock";
  FailurePolicy failure_policy = FailurePolicy::kFail;
  std::chrono::milliseconds timeout{5000};
  std::string log_file;    // empty: stderr only
  std::string log_level = "info";
  protocol::Exclusions exclusions;
  bool strict = false;
  bool capture_dns = true;                      // "captureDns"
  std::optional<SockAddr> dns_upstream;         // "dnsUpstream": ADDR[:PORT]
  protocol::UdpPorts udp;                       // "udpOutboundPorts", "udpInboundPorts"
  protocol::ProxyHandoff proxy;                 // "proxyOutbound", "proxyInbound", "proxyPodTlvs"
  std::vector<std::string> exclude_namespaces;  // pods in these namespaces are not enrolled
  std::vector<std::string> exclude_pods;        // "namespace/name" patterns, '*' wildcards
  // "key" / "key=value" label requirements; evaluated by the agent against the pod's labels in
  // the Kubernetes API (netsteerd --kube-api), since a CNI plugin is not given pod labels.
  std::vector<std::string> exclude_pod_labels;
  nlohmann::json prev_result;                   // null when absent
};

// Parses the netconf from stdin. ADD and CHECK require prevResult (pod IPs come from it).
Result<NetConf> parse_netconf(std::string_view bytes);

// The pod IPs of a CNI result (0.3.x–1.1.0 "ips": [{"address": "10.1.2.3/24", ...}]).
Result<std::vector<IpAddr>> result_ips(const nlohmann::json& result);

// CNI_ARGS "K=V;K=V" (order free, unknown keys kept).
Result<std::map<std::string, std::string>> parse_cni_args(std::string_view s);

struct Env {
  std::string command;       // CNI_COMMAND
  std::string container_id;  // CNI_CONTAINERID
  std::string netns;         // CNI_NETNS (may be empty on DEL)
  std::string ifname;        // CNI_IFNAME
  std::map<std::string, std::string> args;  // CNI_ARGS
  std::string pod_namespace() const;
  std::string pod_name() const;
  std::string pod_uid() const;
};

// Reads CNI_* from the environment and checks what `command` requires.
Result<Env> env_from_process();
Status validate_env(const Env& env);

// The enrolment key: K8S_POD_UID when the runtime passes it, otherwise derived from the
// container id (valid for protocol::validate_uid).
std::string pod_key(const Env& env);

// True when exclude_namespaces / exclude_pods match the pod.
bool skipped(const NetConf& conf, const Env& env);
bool glob_match(std::string_view pattern, std::string_view text);

// A spec error object: {"cniVersion", "code", "msg", "details"}.
std::string error_json(const std::string& cni_version, int code, const std::string& msg, const std::string& details = "");

// What the plugin prints on stdout and its exit status.
struct Outcome {
  int exit_code = 0;
  std::string stdout_text;  // result or error object (may be empty: DEL/CHECK/GC/STATUS success)
};

// Runs one CNI command against the agent. Logs go through spdlog (file/stderr, never stdout).
Outcome run(const Env& env, std::string_view stdin_bytes);

}  // namespace netsteer::cni
