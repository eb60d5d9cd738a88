// Hitless upgrade: a new netsteerd (`--takeover`) asks the running one for everything it serves,
// over the control socket, and the old one drains.
//
//   new → old   {"type":"handover","version":1}
//   old → new   {"ok":true,"pods":N}
//   old → new   N × {"record":<state-file record>,"family":"dual"|"ipv4"} + fds [netns, 15001, 15006, 15008]
//   old → new   {"control":true,"clients":K} + fds [the control socket's listening fd]
//   old → new   ceil(K/8) × {"clients":k} + k fds: control connections the old agent had
//               accepted and not yet answered (they are served by the new agent, not dropped)
//   new → old   {"type":"handover_done"}   (the new agent accepts on every listener by now)
//
// The listening sockets themselves move (SCM_RIGHTS), so no SYN is refused at any point: both
// agents accept from the same queues until the old one stops. Pins, links, rules and the SOCKMAP
// entries stay in place (the same sockets). Any failure before "handover_done" leaves the old
// agent serving as before.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "netsteer/agent/state_store.h"
#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"
#include "netsteer/protocol/channel.h"

namespace netsteer::agent {

struct HandoverPod {
  PodRecord record;
  std::string family;  // the listeners' family ("dual" or "ipv4")
  UniqueFd netns;
  // The pod's open sockets by role ("outbound", "inbound", "tunnel", then "dns", "udp_outbound",
  // "udp_inbound" when open); the wire names them in the pod packet ("sockets"), fds in that order
  // after the netns. A packet without names (an agent from before UDP capture) is 4 or 5 fds in
  // the first order.
  std::vector<std::pair<std::string, UniqueFd>> sockets;
};

struct Handover {
  std::vector<HandoverPod> pods;
  UniqueFd control_listener;
  std::vector<UniqueFd> control_clients;  // accepted by the old agent, requests not yet read
  protocol::SeqpacketChannel channel;  // to the old agent: finish_handover() on it
};

inline constexpr std::chrono::milliseconds kHandoverTimeout{10000};

// Old agent: after the "handover" request arrived on `ch`, sends the pods, the control
// listener and the control connections it accepted but has not served, then waits for the new agent's "handover_done". Success means the old agent must
// stop accepting and serving the control socket (without unlinking it), then drain.
Status send_handover(protocol::SeqpacketChannel& ch, const std::vector<HandoverPod>& pods, int control_fd,
                     const std::vector<int>& control_clients, std::chrono::milliseconds timeout = kHandoverTimeout);

// New agent: connects to the running agent's control socket and receives everything. ENOENT /
// ECONNREFUSED mean no agent is running (start normally).
Result<Handover> request_handover(const std::string& socket_path,
                                  std::chrono::milliseconds timeout = kHandoverTimeout);

// New agent: tells the old one it serves everything now.
Status finish_handover(Handover& h);

}  // namespace netsteer::agent
