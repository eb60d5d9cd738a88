// Per-pod BPF objects: the sk_lookup steering program and the tc guard programs, their maps,
// pins (/sys/fs/bpf/netsteer/<pod>/) and links. One program instance per pod, so a pod's program
// can only ever select that pod's sockets (bpf_sk_assign does not check the socket's netns).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"
#include "netsteer/netns/netns.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::bpf {

inline constexpr const char* kBpffsRoot = "/sys/fs/bpf";
inline constexpr const char* kPinRoot = "/sys/fs/bpf/netsteer";

// Mounts bpffs at root when nothing is mounted there yet.
Status ensure_bpffs(const std::string& root = kBpffsRoot);

// What the running kernel offers. Detected by probing, never guessed from the version string.
struct Features {
  std::string kernel_release;
  bool sk_lookup = false;                 // BPF_PROG_TYPE_SK_LOOKUP + bpf_sk_assign (>= 5.9)
  bool sk_lookup_ingress_ifindex = false; // bpf_sk_lookup.ingress_ifindex (>= 5.17)
  bool tcx = false;                       // BPF_TCX_INGRESS/EGRESS links (>= 6.6)
};
Result<Features> probe_features();
// Error naming the missing feature and the kernel version that introduced it.
Status require_capture_features(const Features& f);

enum class TcMode { kTcx, kClsact };
std::string_view to_string(TcMode m);

struct PodBpfConfig {
  std::vector<IpAddr> pod_ips;
  protocol::Exclusions exclusions;
  bool strict = false;
  uint32_t mark = protocol::kAgentMark;
  uint32_t mark_mask = protocol::kAgentMarkMask;
};

// Counters summed over CPUs (names match the BPF side's enum in bpf/netsteer_common.h).
struct PodBpfStats {
  uint64_t lookups = 0;             // sk_lookup runs for TCP
  uint64_t inbound_assigned = 0;    // assigned to the 15006 listener
  uint64_t outbound_assigned = 0;   // assigned to the 15001 listener
  uint64_t passed_local = 0;        // pod-local / loopback source: not captured
  uint64_t passed_excluded = 0;     // exclusion matched
  uint64_t passed_bypass = 0;       // the relay's own inbound upstream (bypass map hit)
  uint64_t drop_no_listener = 0;    // fail closed: listener gone
  uint64_t egress_marked_pkts = 0, egress_marked_bytes = 0;
  uint64_t egress_unmarked_pkts = 0, egress_unmarked_bytes = 0;
  uint64_t ingress_pkts = 0, ingress_bytes = 0;
  uint64_t drop_strict = 0;         // strict mode: unmarked app TCP leaving the pod
  uint64_t drop_spoofed = 0;        // ingress packet claiming a pod address as source
};

// Ids and pin paths for `netsteerctl inspect` and docs.
struct PodBpfInfo {
  std::string pin_dir;
  TcMode tc_mode = TcMode::kTcx;
  uint32_t steer_prog_id = 0, steer_link_id = 0;
  uint32_t guard_ingress_prog_id = 0, guard_egress_prog_id = 0;
  uint32_t guard_ingress_link_id = 0, guard_egress_link_id = 0;  // 0 in clsact mode
  std::vector<std::pair<std::string, uint32_t>> maps;           // name -> id
  int ifindex = 0;
};

class PodBpf {
 public:
  // Loads both programs, fills the config maps, pins everything under pin_dir (created), links the
  // sk_lookup program to `ns` and attaches the tc programs to `ifindex` (ifindex <= 0: no tc).
  // MUST run on a thread that is inside the pod netns (ifindex is netns-relative).
  // On any error nothing is left behind (pins removed, links detached).
  static Result<std::unique_ptr<PodBpf>> create(const std::string& pin_dir, const netns::NetnsHandle& ns,
                                                int ifindex, const PodBpfConfig& cfg, const Features& f);
  // Re-opens the pinned maps/links of an earlier agent (restart/takeover). Nothing is re-attached.
  static Result<std::unique_ptr<PodBpf>> adopt(const std::string& pin_dir);

  // Put the proxy listeners into the pod's socket map (slot 0 outbound 15001, slot 1 inbound 15006).
  Status set_listeners(int outbound_fd, int inbound_fd);
  // The relay's inbound upstream socket, bound to the client's address: let its SYN through.
  Status add_bypass(const SockAddr& local);
  Status remove_bypass(const SockAddr& local);

  Result<PodBpfStats> stats() const;
  PodBpfInfo info() const;

  // Detach links and tc filters, unpin everything and remove pin_dir.
  Status destroy();
  // Destruction without destroy(): fds close, pins and links stay (pods stay fail-closed).
  ~PodBpf();

 private:
  PodBpf();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace netsteer::bpf
